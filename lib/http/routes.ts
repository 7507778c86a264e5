/**
 * The routes of the JSON API: each is its documentation (schemas, access, answers) and its
 * handler, so validation, auth and the OpenAPI document all come from one table.
 *
 * @module
 */
import type { Context } from "hono";
import type { z } from "zod";
import type { Engine } from "../engine/engine.ts";
import { UsageError } from "../model/errors.ts";
import { type RunRecord, TERMINAL } from "../model/run_state.ts";
import { validateParams } from "../store/store.ts";
import type { Pipeline } from "../define/definition.ts";
import {
  ArtifactPathSchema,
  CancelRequestSchema,
  ErrorResponseSchema,
  HealthSchema,
  PipelineDetailSchema,
  PipelineListSchema,
  PipelinePathSchema,
  RerunRequestSchema,
  ResumeRequestSchema,
  RunDetailSchema,
  RunListQuerySchema,
  RunPageSchema,
  RunPathSchema,
  RunSchema,
  TriggerHeadersSchema,
  TriggerRequestSchema,
} from "./schemas.ts";
import type { RouteDoc } from "./openapi.ts";
import { HttpError, quote } from "./errors.ts";
import { toIssues } from "./input.ts";
import { pipelineJson, runDetail, runJson } from "./run_view.ts";
import { runEventStream, type RunStreamOptions } from "./sse.ts";

type Parts = {
  params?: z.ZodObject;
  query?: z.ZodObject;
  headers?: z.ZodObject;
  body?: z.ZodObject;
};

type Out<S> = S extends z.ZodType ? z.output<S> : undefined;

/** The validated inputs a handler receives. */
export type RouteInput<T extends Parts> = {
  params: Out<T["params"]>;
  query: Out<T["query"]>;
  headers: Out<T["headers"]>;
  body: Out<T["body"]>;
  /**
   * The body as `JSON.parse` made it (undefined when empty), before the body schema copied
   * it: zod drops own `__proto__` keys from what it outputs.
   */
  rawBody: unknown;
};

/** A documented route with its handler. */
export interface ApiRoute extends RouteDoc {
  /** Answers a request whose inputs passed the route's schemas. */
  // deno-lint-ignore no-explicit-any
  handle(c: Context, input: RouteInput<any>): Response | Promise<Response>;
}

/** What the routes need besides the engine. */
export interface ApiContext {
  /** The engine. */
  engine: Engine;
  /** Serves the OpenAPI document. */
  openapi: () => Record<string, unknown>;
  /** Renders the Prometheus metrics. */
  metrics: () => Promise<string>;
  /** The health of KV and the worker. */
  health: () => Promise<z.infer<typeof HealthSchema>>;
  /** Options of a new event stream (poll, heartbeat, shutdown signal). */
  stream: () => RunStreamOptions;
}

function route<T extends Parts>(
  doc: Omit<RouteDoc, keyof Parts> & T,
  handle: (c: Context, input: RouteInput<T>) => Response | Promise<Response>,
): ApiRoute {
  return { ...doc, handle } as ApiRoute;
}

const JSON_HEADERS = { "content-type": "application/json; charset=utf-8" };

function json(value: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(value), { status, headers: { ...JSON_HEADERS, ...headers } });
}

/**
 * The API's routes.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function apiRoutes(ctx: ApiContext): ApiRoute[] {
  const { engine } = ctx;
  const store = engine.store;

  const pipelineOf = (name: string): Pipeline<unknown> => {
    const found = engine.pipelines.get(name);
    if (!found) throw new HttpError(404, "not_found", `Unknown pipeline ${quote(name)}`);
    return found;
  };
  const runOf = async (id: string): Promise<RunRecord> => {
    const run = await store.getRun(id);
    if (!run) throw new HttpError(404, "not_found", `Unknown run ${quote(id)}`);
    return run;
  };
  /** The pipeline a run needs to be requeued; the service must know it. */
  const pipelineOfRun = (run: RunRecord): Pipeline<unknown> => {
    const found = engine.pipelines.get(run.pipeline);
    if (!found) {
      throw new HttpError(
        409,
        "pipeline_unavailable",
        `Run ${run.id} belongs to pipeline ${
          quote(run.pipeline)
        }, which this service does not know`,
      );
    }
    return found;
  };
  const runResponse = { description: "The run", schema: RunSchema };
  const conflict = {
    description: "The run's state does not allow this",
    schema: ErrorResponseSchema,
  };

  return [
    route({
      method: "GET",
      path: "/api/pipelines",
      operationId: "listPipelines",
      summary: "Pipelines with their steps, needs and params schema",
      tag: "pipelines",
      access: "read",
      responses: { 200: { description: "The pipelines", schema: PipelineListSchema } },
    }, async () => {
      const out = [];
      for (const p of engine.pipelines.values()) {
        out.push(pipelineJson(p, p.schedule ? await engine.scheduler.state(p.name) : null));
      }
      return json(out);
    }),

    route({
      method: "GET",
      path: "/api/pipelines/:name",
      operationId: "getPipeline",
      summary: "One pipeline with its latest runs",
      tag: "pipelines",
      access: "read",
      params: PipelinePathSchema,
      responses: { 200: { description: "The pipeline", schema: PipelineDetailSchema } },
    }, async (_c, { params }) => {
      const pipeline = pipelineOf(params.name);
      const page = await store.listRuns({ pipeline: pipeline.name, limit: 10 });
      const now = Date.now();
      const state = pipeline.schedule ? await engine.scheduler.state(pipeline.name) : null;
      return json({
        ...pipelineJson(pipeline, state),
        lastRuns: page.runs.map((r) => runJson(r, now)),
      });
    }),

    route({
      method: "GET",
      path: "/api/runs",
      operationId: "listRuns",
      summary: "Runs, newest first, a page at a time",
      description:
        "Pages are cut by KV key, so runs created while a client pages do not shift the pages " +
        "after the first: each run is listed once.",
      tag: "runs",
      access: "read",
      query: RunListQuerySchema,
      responses: { 200: { description: "A page of runs", schema: RunPageSchema } },
    }, async (_c, { query }) => {
      const page = await store.listRuns(query).catch((error) => {
        if (error instanceof UsageError) {
          throw new HttpError(400, "invalid_query", error.message, {
            issues: [{ path: [query.cursor ? "cursor" : "limit"], message: error.message }],
          });
        }
        throw error;
      });
      const now = Date.now();
      const runs = page.runs.map((r) => runJson(r, now));
      return json(page.cursor ? { runs, cursor: page.cursor } : { runs });
    }),

    route({
      method: "GET",
      path: "/api/runs/:id",
      operationId: "getRun",
      summary: "One run: steps, attempts (with errors, stacks and logs), items, artifacts, alerts",
      tag: "runs",
      access: "read",
      params: RunPathSchema,
      responses: { 200: { description: "The run", schema: RunDetailSchema } },
    }, async (_c, { params }) => {
      const view = await runDetail(engine, params.id);
      if (!view) throw new HttpError(404, "not_found", `Unknown run ${quote(params.id)}`);
      return json(view);
    }),

    route({
      method: "GET",
      path: "/api/runs/:id/artifacts/:name",
      operationId: "getArtifact",
      summary: "An artifact's bytes, with its content type",
      tag: "runs",
      access: "read",
      params: ArtifactPathSchema,
      responses: { 200: { description: "The bytes", mediaType: "application/octet-stream" } },
    }, async (c, { params }) => {
      await runOf(params.id);
      const { meta, bytes } = await store.readArtifact(params.id, params.name);
      const active = /html|xml|javascript|ecmascript/i.test(meta.contentType);
      return new Response(c.req.method === "HEAD" ? null : bytes as Uint8Array<ArrayBuffer>, {
        headers: {
          "content-type": meta.contentType,
          "content-length": String(bytes.length),
          // Content a step produced must not run as this origin's page (the dashboard's).
          "content-security-policy": "sandbox",
          "content-disposition": `${active ? "attachment" : "inline"}; filename*=UTF-8''${
            encodeURIComponent(meta.name)
          }`,
        },
      });
    }),

    route({
      method: "GET",
      path: "/api/runs/:id/events",
      operationId: "runEvents",
      summary: "Live updates of a run as server-sent events",
      description:
        "Events: `run` (the run, as in listRuns), `step` (a StepEvent: one step's or fan-out " +
        "item's new state) and `end` (the final run), after which the stream closes. A run " +
        "that already ended gets its state and `end` at once. A comment line every 15 s keeps " +
        "the connection alive.",
      tag: "runs",
      access: "read",
      params: RunPathSchema,
      responses: { 200: { description: "The event stream", mediaType: "text/event-stream" } },
    }, async (c, { params }) => {
      await runOf(params.id);
      const headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-store",
        "x-accel-buffering": "no",
      };
      if (c.req.method === "HEAD") return new Response(null, { headers });
      return new Response(runEventStream(engine, params.id, ctx.stream()), { headers });
    }),

    route({
      method: "POST",
      path: "/api/pipelines/:name/runs",
      operationId: "triggerRun",
      summary: "Create a run; the worker starts it at once",
      description:
        "With an `Idempotency-Key` header, a repeated request returns the run the first one " +
        "created (200, `Idempotent-Replayed: true`) instead of creating another.",
      tag: "runs",
      access: "write",
      params: PipelinePathSchema,
      headers: TriggerHeadersSchema,
      body: TriggerRequestSchema,
      responses: {
        201: { description: "Created", schema: RunSchema },
        200: { description: "The run an earlier request with this key created", schema: RunSchema },
        422: {
          description: "Params fail the pipeline's schema, or the key was used with others",
          schema: ErrorResponseSchema,
        },
      },
    }, async (_c, { params, headers, body, rawBody }) => {
      const pipeline = pipelineOf(params.name);
      // The params as sent, not the body schema's copy: that one lacks a `__proto__` key,
      // which must be refused like any unknown param, not dropped in silence.
      const sent = (rawBody as { params?: Record<string, unknown> } | undefined)?.params ?? {};
      const given = checkedParams(pipeline, sent);
      const key = headers["idempotency-key"];
      const replay = (run: RunRecord) => {
        const same = canonical(run.params) === canonical(given) &&
          (body.logicalDate === undefined || body.logicalDate === run.logicalDate);
        if (!same) {
          throw new HttpError(
            422,
            "idempotency_key_reused",
            `Idempotency-Key was used for run ${run.id} with other params or date`,
          );
        }
        return json(runJson(run), 200, {
          location: runLocation(run.id),
          "idempotent-replayed": "true",
        });
      };
      if (key !== undefined) {
        const earlier = await store.runForIdempotencyKey(pipeline.name, key);
        if (earlier) return replay(earlier);
      }
      let run: RunRecord;
      try {
        run = await store.createRun(pipeline, {
          params: sent,
          logicalDate: body.logicalDate,
          trigger: "http",
          idempotencyKey: key,
        });
      } catch (error) {
        // Two requests with one key at once: the other one's commit won.
        const earlier = key !== undefined && error instanceof UsageError &&
          error.code === "conflict" && await store.runForIdempotencyKey(pipeline.name, key);
        if (earlier) return replay(earlier);
        throw error;
      }
      engine.worker.wake(run.id);
      return json(runJson(run), 201, { location: runLocation(run.id) });
    }),

    route({
      method: "POST",
      path: "/api/runs/:id/resume",
      operationId: "resumeRun",
      summary: "Resume a failed or cancelled run where it stopped",
      tag: "runs",
      access: "write",
      params: RunPathSchema,
      body: ResumeRequestSchema,
      responses: { 200: runResponse, 409: conflict },
    }, async (_c, { params, body }) => {
      const run = await runOf(params.id);
      if (!TERMINAL.has(run.status)) {
        throw new HttpError(
          409,
          "conflict",
          `Run ${run.id} is ${run.status}: only a failed or cancelled run can be resumed`,
        );
      }
      const next = await store.resume(run, pipelineOfRun(run), body.force ?? false);
      engine.worker.wake(run.id);
      return json(runJson(next));
    }),

    route({
      method: "POST",
      path: "/api/runs/:id/rerun",
      operationId: "rerunRun",
      summary: "Run a step of an ended run again, with every step that depends on it",
      tag: "runs",
      access: "write",
      params: RunPathSchema,
      body: RerunRequestSchema,
      responses: {
        200: runResponse,
        409: conflict,
        422: { description: "No such step in the pipeline", schema: ErrorResponseSchema },
      },
    }, async (_c, { params, body }) => {
      const run = await runOf(params.id);
      const pipeline = pipelineOfRun(run);
      if (!pipeline.byName.has(body.from)) {
        throw new HttpError(
          422,
          "unknown_step",
          `Unknown step ${quote(body.from)} in pipeline '${pipeline.name}': steps are ${
            pipeline.steps.map((s) => s.name).join(", ")
          }`,
          { issues: [{ path: ["from"], message: "No such step" }] },
        );
      }
      const next = await store.rerun(run, pipeline, body.from, body.force ?? false);
      engine.worker.wake(run.id);
      return json(runJson(next));
    }),

    route({
      method: "POST",
      path: "/api/runs/:id/cancel",
      operationId: "cancelRun",
      summary: "Cancel an active run: no new steps start, running steps are aborted",
      tag: "runs",
      access: "write",
      params: RunPathSchema,
      body: CancelRequestSchema,
      responses: { 200: runResponse, 409: conflict },
    }, async (_c, { params, body }) => {
      const run = await store.cancel(params.id, body.reason ?? "Cancelled by request (HTTP)");
      return json(runJson(run));
    }),

    route({
      method: "GET",
      path: "/healthz",
      operationId: "health",
      summary: "Whether KV answers and the worker sweeps (503 when not)",
      tag: "service",
      access: "public",
      responses: {
        200: { description: "Healthy", schema: HealthSchema },
        503: { description: "Unhealthy", schema: HealthSchema },
      },
    }, async () => {
      const health = await ctx.health();
      return json(health, health.ok ? 200 : 503, { "cache-control": "no-store" });
    }),

    route({
      method: "GET",
      path: "/metrics",
      operationId: "metrics",
      summary: "Prometheus metrics",
      tag: "service",
      access: "read",
      responses: { 200: { description: "Prometheus text format 0.0.4", mediaType: "text/plain" } },
    }, async () =>
      new Response(await ctx.metrics(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      })),

    route({
      method: "GET",
      path: "/openapi.json",
      operationId: "openapi",
      summary: "This document",
      tag: "service",
      access: "public",
      responses: { 200: { description: "OpenAPI 3.1", mediaType: "application/json" } },
    }, () => json(ctx.openapi())),
  ];
}

/**
 * Params checked against the pipeline's schema, with zod's issues when they fail.
 *
 * @throws {HttpError} 422 `invalid_params`
 */
function checkedParams(pipeline: Pipeline<unknown>, params: unknown): Record<string, unknown> {
  try {
    return validateParams(pipeline, params);
  } catch (error) {
    if (!(error instanceof UsageError) || error.code !== "invalid_params") throw error;
    throw new HttpError(422, "invalid_params", error.message, {
      issues: toIssues(error.issues ?? []),
    });
  }
}

function runLocation(id: string): string {
  return `/api/runs/${encodeURIComponent(id)}`;
}

/** JSON with object keys sorted, to compare two values. */
function canonical(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
        : v,
  );
}
