/**
 * The HTTP service (Hono): the JSON API of `routes/` with bearer-token auth, input checks,
 * one error shape, OpenAPI, health, metrics and live run events. Without a write token it
 * listens on loopback only, and says so.
 *
 * @module
 */
import { type Context, Hono } from "hono";
import type { Engine } from "../engine/engine.ts";
import { type ApiRoute, apiRoutes } from "./routes/mod.ts";
import { DEFAULT_INLINE_BUDGET_MS } from "./routes/events.ts";
import { dashboard, mayReadRequest } from "../dashboard/mod.tsx";
import { Auth, type Tokens } from "./auth.ts";
import { errorJson, errorResponse, HttpError, quote } from "./errors.ts";
import { readJsonBody, validate } from "./input.ts";
import { Metrics } from "./metrics.ts";
import { openApiDocument } from "./openapi.ts";
import type { HealthSchema } from "./schemas.ts";
import type { z } from "zod";
import { type NetAddr, startServer } from "../platform/serve.ts";

/** Options of {@linkcode HttpService}. */
export interface ServiceOptions extends Tokens {
  /** Largest request body accepted, bytes. Default 65,536. */
  maxBodyBytes?: number;
  /** KV poll interval of event streams, ms. Default 250. */
  ssePollMs?: number;
  /** Heartbeat interval of event streams, ms. Default 15,000. */
  sseHeartbeatMs?: number;
  /** How long the metrics reuse a count of the alerts in KV, ms. Default 60,000. */
  metricsCountTtlMs?: number;
  /** A worker whose last sweep is older than this is unhealthy, ms. Default 30,000. */
  workerStaleMs?: number;
  /**
   * Whether health needs this process's worker started and sweeping. Default true; false
   * where no worker loop runs (Deno Deploy, whose heartbeat cron drives the runs).
   */
  expectWorker?: boolean;
  /**
   * Where KV has no queues (Deno Deploy): how long `POST /api/events` drives the runs it
   * woke and started before it answers, ms. Default 25,000.
   */
  inlineBudgetMs?: number;
  /** Where unexpected errors (level `error`) and the listening line are logged. Default: stderr. */
  log?: (line: string, level?: "info" | "error") => void;
}

/** Options of {@linkcode serve}. */
export interface ServeOptions extends ServiceOptions {
  /** Port; 0 picks a free one. */
  port: number;
  /** Called once listening, with the port. */
  onListen?: (port: number) => void;
}

/** A running service, as {@linkcode serve} returns it. */
export interface Server extends AsyncDisposable {
  /** Where it listens. */
  readonly addr: NetAddr;
  /** Resolves once the server has stopped. */
  readonly finished: Promise<void>;
  /** Ends the event streams, then stops accepting requests and waits for open ones. */
  shutdown(): Promise<void>;
}

const DEFAULT_MAX_BODY = 64 * 1024;

/** The Hono app of one engine, with the resources it holds (event streams, metrics). */
export class HttpService {
  /** The app: pass `app.fetch` to an HTTP server. */
  readonly app: Hono;
  /** The service's metrics. */
  readonly metrics: Metrics;
  /** The API's routes. */
  readonly routes: readonly ApiRoute[];
  readonly #engine: Engine;
  readonly #auth: Auth;
  readonly #options: ServiceOptions;
  readonly #closing = new AbortController();
  readonly #createdAt = Date.now();
  #openStreams = 0;
  #document: Record<string, unknown> | undefined;

  /**
   * Builds the app.
   *
   * @param engine the engine whose runs the service shows and changes
   * @param options tokens, limits and intervals
   */
  constructor(engine: Engine, options: ServiceOptions = {}) {
    this.#engine = engine;
    this.#options = options;
    this.#auth = new Auth(options);
    this.metrics = new Metrics(engine, { countTtlMs: options.metricsCountTtlMs });
    this.metrics.gauge("kvflow_sse_streams", {
      help: "Open run event streams.",
      read: () => this.#openStreams,
    });
    this.routes = apiRoutes({
      engine,
      openapi: () => this.openapi(),
      metrics: () => this.metrics.render(),
      health: () => this.health(),
      stream: () => {
        this.#openStreams++;
        return {
          pollMs: options.ssePollMs,
          heartbeatMs: options.sseHeartbeatMs,
          signal: this.#closing.signal,
          onClose: () => this.#openStreams--,
        };
      },
      sent: (result) => this.metrics.observeSend(result),
      inlineBudgetMs: options.inlineBudgetMs ?? DEFAULT_INLINE_BUDGET_MS,
    });
    const app = new Hono();
    for (const r of this.routes) app.on(r.method, r.path, (c) => this.#handle(r, c));
    app.route("/", dashboard(engine, options));
    app.notFound((c) => this.#notFound(c.req.method, c.req.path));
    app.onError((error, c) => this.#finish(c.req.method, "(other)", this.#error(error, c.req)));
    this.app = app;
  }

  /** The OpenAPI document, built once. */
  openapi(): Record<string, unknown> {
    this.#document ??= openApiDocument(this.routes, {
      title: "kvflow",
      version: "1",
      description: "Durable workflows on Deno KV: pipelines, runs, live events. Errors are " +
        '`{ "error": { "code", "message", "issues"? } }`.',
    });
    return this.#document;
  }

  /** Whether KV answers (within 2 s) and the worker sweeps. */
  async health(): Promise<z.infer<typeof HealthSchema>> {
    const started = performance.now();
    let kvOk = false;
    let latencyMs: number | null = null;
    try {
      await withTimeout(this.#engine.store.getRun("kvflow-health-check"), 2000);
      kvOk = true;
      latencyMs = Math.round((performance.now() - started) * 1000) / 1000;
    } catch {
      // unreachable or too slow: reported as not ok
    }
    const worker = this.#engine.worker;
    const staleMs = this.#options.workerStaleMs ?? 30_000;
    const lastSweepAt = worker.lastSweepAt;
    const fresh = Date.now() - (lastSweepAt ?? this.#createdAt) < staleMs;
    const workerOk = this.#options.expectWorker === false || (worker.serving && fresh);
    return {
      ok: kvOk && workerOk,
      kv: { ok: kvOk, latencyMs },
      worker: { serving: worker.serving, lastSweepAt, activeRuns: worker.activeRuns },
    };
  }

  /** Ends the open event streams and stops collecting metrics. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.metrics.close();
  }

  async #handle(r: ApiRoute, c: Context): Promise<Response> {
    let response: Response;
    try {
      await this.#authorize(r, c.req.raw);
      const params = r.params ? this.#pathInput(r, c.req.param(), c.req.path) : undefined;
      const query = r.query
        ? validate(r.query, c.req.query(), { status: 400, code: "invalid_query", what: "query" })
        : undefined;
      const headers = r.headers
        ? validate(
          r.headers,
          Object.fromEntries(
            Object.keys(r.headers.shape).map((name) => [name, c.req.header(name)]),
          ),
          { status: 400, code: "invalid_header", what: "header" },
        )
        : undefined;
      const rawBody = r.body
        ? await readJsonBody(c.req.raw, this.#options.maxBodyBytes ?? DEFAULT_MAX_BODY)
        : undefined;
      const body = r.body
        ? validate(r.body, rawBody ?? {}, { status: 400, code: "invalid_body", what: "body" })
        : undefined;
      response = await r.handle(c, { params, query, headers, body, rawBody });
    } catch (error) {
      response = this.#error(error, c.req);
    }
    return this.#finish(c.req.method, r.path, response);
  }

  /**
   * Checks the bearer token; a read without one may also use the dashboard's session
   * cookie, which is all a browser's `EventSource` can send.
   */
  async #authorize(r: ApiRoute, request: Request): Promise<void> {
    try {
      this.#auth.check(request.headers.get("authorization"), r.access);
    } catch (error) {
      const cookie = r.access === "read" && error instanceof HttpError && error.status === 401 &&
        request.headers.has("cookie") && await mayReadRequest(request, this.#options);
      if (!cookie) throw error;
    }
  }

  #pathInput(r: ApiRoute, values: Record<string, string>, path: string) {
    try {
      return validate(r.params!, values, { status: 404, code: "not_found", what: "path" });
    } catch (error) {
      if (!(error instanceof HttpError)) throw error;
      throw new HttpError(404, "not_found", `Nothing at ${quote(path)}`, { issues: error.issues });
    }
  }

  #notFound(method: string, path: string): Response {
    const allowed = this.routes.filter((r) => pattern(r.path).test(path)).map((r) => r.method);
    if (allowed.length > 0) {
      const allow = [...new Set(allowed.flatMap((m) => (m === "GET" ? ["GET", "HEAD"] : [m])))];
      return this.#finish(
        method,
        "(method not allowed)",
        errorJson(405, {
          code: "method_not_allowed",
          message: `${quote(method)} is not allowed here`,
        }, { allow: allow.join(", ") }),
      );
    }
    return this.#finish(
      method,
      "(no route)",
      errorJson(404, { code: "not_found", message: `No route ${quote(method)} ${quote(path)}` }),
    );
  }

  #error(error: unknown, req: { method: string; path: string }): Response {
    return errorResponse(error, (thrown, ref) => {
      const log = this.#options.log ?? ((line: string) => console.error(line));
      const detail = thrown instanceof Error ? thrown.stack ?? thrown.message : String(thrown);
      log(
        `kvflow: HTTP ${req.method} ${quote(req.path, 200)} failed (reference ${ref}): ${detail}`,
        "error",
      );
    });
  }

  #finish(method: string, route: string, response: Response): Response {
    this.metrics.observeRequest({ method, route, status: response.status });
    const headers = response.headers;
    try {
      headers.set("x-content-type-options", "nosniff");
      if (!headers.has("cache-control")) headers.set("cache-control", "no-store");
    } catch {
      // immutable headers (a fetched response): leave them
    }
    return response;
  }
}

const patterns = new Map<string, RegExp>();

function pattern(path: string): RegExp {
  let re = patterns.get(path);
  if (!re) {
    re = new RegExp(`^${path.replace(/:[A-Za-z0-9_]+/g, "[^/]+")}$`);
    patterns.set(path, re);
  }
  return re;
}

/**
 * Builds the Hono app of an engine. Prefer {@linkcode HttpService}, which can also close
 * the event streams; this is for embedding in another app.
 *
 * @param engine the engine
 * @param options tokens, limits and intervals
 * @returns the app
 */
export function app(engine: Engine, options: ServiceOptions = {}): Hono {
  return new HttpService(engine, options).app;
}

/**
 * Starts the HTTP service. Without a write token it listens on 127.0.0.1 only.
 *
 * @example
 * ```ts ignore
 * import { openEngine } from "../engine/engine.ts";
 * import { serve } from "./service.ts";
 * const engine = await openEngine({ pipelines: [] });
 * engine.start();
 * const server = serve(engine, { port: 8000, token: Deno.env.get("KVFLOW_TOKEN") });
 * ```
 *
 * @param engine the engine to serve
 * @param options port, tokens, limits, a listen callback, where to log
 * @returns the running server
 */
export function serve(engine: Engine, options: ServeOptions): Server {
  const service = new HttpService(engine, options);
  const hostname = options.token ? "0.0.0.0" : "127.0.0.1";
  const log = options.log ?? ((line: string) => console.error(line));
  const server = startServer({
    port: options.port,
    hostname,
    onListen: ({ port }) => {
      const access = options.token
        ? `changes need the bearer token (KVFLOW_TOKEN); reads ${
          options.readToken ? "need KVFLOW_READ_TOKEN or KVFLOW_TOKEN" : "are open"
        }`
        : "loopback only: KVFLOW_TOKEN is not set, so anyone on this machine may trigger, " +
          "resume and cancel runs; set it to accept other hosts";
      log(`kvflow: serving on http://${hostname}:${port} (${access})`, "info");
      options.onListen?.(port);
    },
  }, service.app.fetch);
  let stopping: Promise<void> | undefined;
  const shutdown = () => {
    stopping ??= (async () => {
      await service.close();
      await server.shutdown();
    })();
    return stopping;
  };
  return {
    addr: server.addr,
    finished: server.finished,
    shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`No answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
