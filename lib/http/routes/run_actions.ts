/**
 * Routes that change runs: trigger one (idempotent with a key), resume, rerun from a step,
 * cancel. Each wakes this process's worker for the run it changed.
 *
 * @module
 */
import type { Engine } from "../../engine/engine.ts";
import { UsageError } from "../../model/errors.ts";
import { type RunRecord, TERMINAL } from "../../model/records.ts";
import { validateParams } from "../../model/params.ts";
import type { Pipeline } from "../../define/pipeline.ts";
import {
  CancelRequestSchema,
  DebouncedRunSchema,
  ErrorResponseSchema,
  PauseRequestSchema,
  PipelinePathSchema,
  RerunRequestSchema,
  ResumeRequestSchema,
  RunPathSchema,
  RunSchema,
  TriggerHeadersSchema,
  TriggerRequestSchema,
} from "../schemas.ts";
import { HttpError, quote } from "../errors.ts";
import { canonicalJson as canonical, toIssues } from "../input.ts";
import { runJson } from "../run_view.ts";
import { triggerDebounced } from "../../store/debounce.ts";
import { type ApiContext, type ApiRoute, json, pipelineOf, route, runOf } from "./route.ts";

/**
 * The routes that change runs.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function runActionRoutes({ engine }: ApiContext): ApiRoute[] {
  const store = engine.store;
  const runResponse = { description: "The run", schema: RunSchema };
  const conflict = {
    description: "The run's state does not allow this",
    schema: ErrorResponseSchema,
  };

  return [
    route({
      method: "POST",
      path: "/api/pipelines/:name/runs",
      operationId: "triggerRun",
      summary: "Create a run; the worker starts it at once",
      description:
        "With an `Idempotency-Key` header, a repeated request returns the run the first one " +
        "created (200, `Idempotent-Replayed: true`) instead of creating another. For a " +
        "pipeline with a debounce, the request begins a burst of triggers with its key or " +
        "joins the burst's queued run (202, `debounced: true`): the run starts with the " +
        "last request's params once the burst is quiet.",
      tag: "runs",
      access: "write",
      params: PipelinePathSchema,
      headers: TriggerHeadersSchema,
      body: TriggerRequestSchema,
      responses: {
        201: { description: "Created", schema: RunSchema },
        202: {
          description: "Debounced: the run the request began or joined, held until its burst " +
            "is quiet",
          schema: DebouncedRunSchema,
        },
        200: { description: "The run an earlier request with this key created", schema: RunSchema },
        422: {
          description: "Params fail the pipeline's schema, or the key was used with others",
          schema: ErrorResponseSchema,
        },
      },
    }, async (_c, { params, headers, body, rawBody }) => {
      const pipeline = pipelineOf(engine, params.name);
      // The params as sent, not the body schema's copy: that one lacks a `__proto__` key,
      // which must be refused like any unknown param, not dropped in silence.
      const sent = (rawBody as { params?: Record<string, unknown> } | undefined)?.params ?? {};
      const given = checkedParams(pipeline, sent);
      const key = headers["idempotency-key"];
      const debounced = pipeline.flow.debounce !== null;
      const replay = (run: RunRecord) => {
        // a debounced run carries the params of its burst's last trigger, not this one's
        const same = (debounced || canonical(run.params) === canonical(given)) &&
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
      const input = {
        params: sent,
        logicalDate: body.logicalDate,
        trigger: "http" as const,
        idempotencyKey: key,
        priority: body.priority,
      };
      let run: RunRecord;
      try {
        if (debounced) {
          const done = await triggerDebounced(store, pipeline, input);
          return json({ ...runJson(done.run), debounced: true, joined: done.joined }, 202, {
            location: runLocation(done.run.id),
          });
        }
        run = await store.createRun(pipeline, input);
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
      const run = await runOf(engine, params.id);
      if (!TERMINAL.has(run.status)) {
        throw new HttpError(
          409,
          "conflict",
          `Run ${run.id} is ${run.status}: only a failed or cancelled run can be resumed`,
        );
      }
      const next = await store.resume(run, pipelineOfRun(engine, run), body.force ?? false);
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
      const run = await runOf(engine, params.id);
      const pipeline = pipelineOfRun(engine, run);
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
      method: "POST",
      path: "/api/runs/:id/pause",
      operationId: "pauseRun",
      summary: "Pause an active run: attempts in flight finish, nothing more starts",
      description: "Idempotent. A run no worker holds is `paused` at once; a held run keeps its " +
        "status (with `paused` set) until its worker has checkpointed the attempts in flight.",
      tag: "runs",
      access: "write",
      params: RunPathSchema,
      body: PauseRequestSchema,
      responses: { 200: runResponse, 409: conflict },
    }, async (_c, { params, body }) => {
      await runOf(engine, params.id);
      const result = await engine.pause(params.id, body.reason ?? "Paused by request (HTTP)");
      return json(runJson(result.kind === "run" ? result.run : await runOf(engine, params.id)));
    }),

    route({
      method: "POST",
      path: "/api/runs/:id/unpause",
      operationId: "unpauseRun",
      summary: "Unpause a run: it continues where it stopped",
      description: "Idempotent: unpausing a run that is not paused changes nothing.",
      tag: "runs",
      access: "write",
      params: RunPathSchema,
      body: PauseRequestSchema,
      responses: { 200: runResponse, 409: conflict },
    }, async (_c, { params }) => {
      await runOf(engine, params.id);
      const result = await engine.unpause(params.id);
      return json(runJson(result.kind === "run" ? result.run : await runOf(engine, params.id)));
    }),
  ];
}

/**
 * The pipeline a run needs to be requeued; the service must know it.
 *
 * @throws {HttpError} 409 `pipeline_unavailable`
 */
function pipelineOfRun(engine: Engine, run: RunRecord): Pipeline<unknown> {
  const found = engine.pipelines.get(run.pipeline);
  if (!found) {
    throw new HttpError(
      409,
      "pipeline_unavailable",
      `Run ${run.id} belongs to pipeline ${quote(run.pipeline)}, which this service does not know`,
    );
  }
  return found;
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
