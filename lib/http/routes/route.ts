/**
 * What a route is: its documentation (schemas, access, answers) and its handler, so
 * validation, auth and the OpenAPI document all come from one place. Also what every
 * route file shares: building a route, answering with JSON, finding a pipeline or a run.
 *
 * @module
 */
import type { Context } from "hono";
import type { z } from "zod";
import type { Engine } from "../../engine/engine.ts";
import type { Pipeline } from "../../define/pipeline.ts";
import type { RunRecord } from "../../model/records.ts";
import type { HealthSchema } from "../schemas.ts";
import type { RouteDoc } from "../openapi.ts";
import { HttpError, quote } from "../errors.ts";
import type { RunStreamOptions } from "../sse.ts";
import type { SendResult } from "../../store/events.ts";

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
  /** Told of each new event sent over HTTP (for the metrics). */
  sent: (result: SendResult) => void;
  /** How long a send drives the runs it woke where KV has no queues, ms. */
  inlineBudgetMs: number;
}

/**
 * A route from its documentation and a handler typed by the documented schemas.
 *
 * @param doc method, path, schemas, access and answers
 * @param handle answers a request whose inputs passed the schemas
 * @returns the route
 */
export function route<T extends Parts>(
  doc: Omit<RouteDoc, keyof Parts> & T,
  handle: (c: Context, input: RouteInput<T>) => Response | Promise<Response>,
): ApiRoute {
  return { ...doc, handle } as ApiRoute;
}

const JSON_HEADERS = { "content-type": "application/json; charset=utf-8" };

/**
 * A JSON response.
 *
 * @param value what to send
 * @param status the HTTP status
 * @param headers more headers
 * @returns the response
 */
export function json(
  value: unknown,
  status = 200,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(value), { status, headers: { ...JSON_HEADERS, ...headers } });
}

/**
 * The engine's pipeline of that name.
 *
 * @throws {HttpError} 404 `not_found`
 */
export function pipelineOf(engine: Engine, name: string): Pipeline<unknown> {
  const found = engine.pipelines.get(name);
  if (!found) throw new HttpError(404, "not_found", `Unknown pipeline ${quote(name)}`);
  return found;
}

/**
 * The run of that id.
 *
 * @throws {HttpError} 404 `not_found`
 */
export async function runOf(engine: Engine, id: string): Promise<RunRecord> {
  const run = await engine.store.getRun(id);
  if (!run) throw new HttpError(404, "not_found", `Unknown run ${quote(id)}`);
  return run;
}
