/**
 * The HTTP service (Hono): read runs and pipelines, trigger a run. Mutations need
 * `Authorization: Bearer <KVFLOW_TOKEN>` when a token is set; without a token the
 * service listens on loopback only.
 *
 * @module
 */
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { UsageError } from "./errors.ts";
import type { Engine } from "./engine.ts";
import { RUN_STATUSES, type RunStatus } from "./run_state.ts";

/** Options of {@linkcode serve}. */
export interface ServeOptions {
  /** Port; 0 picks a free one. */
  port: number;
  /** Bearer token for mutations; without one the service binds to 127.0.0.1. */
  token?: string;
  /** Where start-up lines go. */
  log?: (line: string) => void;
  /** Called once listening, with the port. */
  onListen?: (port: number) => void;
}

const STATUS_OF: Record<string, 400 | 404 | 409 | 422> = {
  not_found: 404,
  conflict: 409,
  invalid_params: 422,
  version_changed: 409,
};

/** Builds the Hono app for an engine. */
export function app(engine: Engine, token?: string): Hono {
  const api = new Hono();
  api.onError((error, c) => {
    if (error instanceof UsageError) {
      return c.json(
        { error: { code: error.code, message: error.message } },
        STATUS_OF[error.code] ?? 400,
      );
    }
    if (error instanceof HTTPException) {
      return c.json({ error: { code: "http", message: error.message } }, error.status);
    }
    console.error(`kvflow: HTTP ${c.req.method} ${c.req.path}: ${error.message}`);
    return c.json({ error: { code: "internal", message: "Internal error" } }, 500);
  });
  api.notFound((c) => c.json({ error: { code: "not_found", message: "No such route" } }, 404));
  const guard = (header: string | undefined) => {
    if (token && !constantTimeEqual(header ?? "", `Bearer ${token}`)) {
      throw new HTTPException(401, { message: "Missing or wrong bearer token" });
    }
  };
  api.get("/healthz", async (c) => {
    await engine.kv.get(["kvflow", "health"]);
    return c.json({ ok: true, worker: engine.worker.id, activeRuns: engine.worker.activeRuns });
  });
  api.get("/api/pipelines", (c) =>
    c.json([...engine.pipelines.values()].map((p) => ({
      name: p.name,
      description: p.description ?? null,
      version: p.version,
      steps: p.steps.map((s) => ({ name: s.name, needs: p.graph[s.name], fanOut: !!s.fanOut })),
    }))));
  api.get("/api/runs", async (c) => {
    const status = c.req.query("status");
    if (status !== undefined && !RUN_STATUSES.includes(status as RunStatus)) {
      throw new UsageError(`Unknown status '${status}'`);
    }
    const limitText = c.req.query("limit");
    const page = await engine.store.listRuns({
      pipeline: c.req.query("pipeline"),
      status: status as RunStatus | undefined,
      limit: limitText === undefined ? 20 : Number(limitText),
      cursor: c.req.query("cursor"),
    });
    return c.json(page);
  });
  api.get("/api/runs/:id", async (c) => {
    const run = await engine.store.requireRun(c.req.param("id"));
    const steps = Object.fromEntries(await engine.store.getSteps(run.id));
    return c.json({ ...run, steps });
  });
  api.post("/api/pipelines/:name/runs", async (c) => {
    guard(c.req.header("authorization"));
    const pipeline = engine.pipeline(c.req.param("name"));
    let body: unknown = {};
    const text = await c.req.text();
    if (text.length > 64_000) throw new HTTPException(413, { message: "Body too large" });
    if (text.trim()) {
      try {
        body = JSON.parse(text);
      } catch {
        throw new UsageError("Body is not valid JSON");
      }
    }
    const params = (body as { params?: unknown })?.params ?? {};
    const run = await engine.store.createRun(pipeline, { params, trigger: "http" });
    engine.worker.poke(run.id);
    return c.json(run, 201);
  });
  return api;
}

/** Starts the HTTP service. */
export function serve(engine: Engine, options: ServeOptions): Deno.HttpServer {
  const hostname = options.token ? "0.0.0.0" : "127.0.0.1";
  const log = options.log ?? ((line: string) => console.error(line));
  return Deno.serve({
    port: options.port,
    hostname,
    onListen: ({ port }) => {
      log(
        `kvflow: serving on http://${hostname}:${port}${
          options.token ? "" : " (loopback only: set KVFLOW_TOKEN to accept other hosts)"
        }`,
      );
      options.onListen?.(port);
    },
  }, app(engine, options.token).fetch);
}

function constantTimeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}
