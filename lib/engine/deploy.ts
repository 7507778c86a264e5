/**
 * Running on Deno Deploy: the app's own KV database, no reliance on queues unless they
 * are there, no background loop (an idle isolate is stopped), and a heartbeat cron that
 * checks schedules, claims due runs and drives them while the cron handler runs. Retries
 * due later than a few seconds therefore wait for a heartbeat: on Deploy their
 * granularity is one minute.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { type Engine, openEngine } from "./engine.ts";
import { app } from "../http/service.ts";
import { workerSettingsFromEnv } from "./settings.ts";
import { env } from "../platform/env.ts";
import { type HttpServer, startServer } from "../platform/serve.ts";
import type { Kv } from "../kv/kv.ts";
import { logLine } from "../platform/log.ts";

/** A started deployment. */
export interface Deployment {
  /** The engine. */
  engine: Engine;
  /** The heartbeat: call it from the platform's cron every minute. */
  heartbeat(): Promise<void>;
  /** Starts serving HTTP. */
  serve(): HttpServer;
}

/**
 * Opens the engine the Deploy way. `KVFLOW_QUEUES=off` (or `on`) overrides the detection
 * of queues, e.g. to test Deploy mode on a machine whose KV has them.
 *
 * @param pipelines the registry
 * @returns the deployment, ready for its heartbeat and HTTP
 */
export async function startDeploy(pipelines: readonly Pipeline<unknown>[]): Promise<Deployment> {
  const setting = env("KVFLOW_QUEUES");
  const engine = await openEngine({
    pipelines,
    queues: setting === "on" ? true : setting === "off" ? false : undefined,
    ...workerSettingsFromEnv(),
  });
  if (setting === undefined && engine.store.queues && !(await hasQueues(engine.kv))) {
    await engine.close();
    return startDeployWithout(pipelines);
  }
  return deployment(engine);
}

async function startDeployWithout(pipelines: readonly Pipeline<unknown>[]): Promise<Deployment> {
  const engine = await openEngine({
    pipelines,
    queues: false,
    ...workerSettingsFromEnv(),
  });
  return deployment(engine);
}

function deployment(engine: Engine): Deployment {
  let token = env("KVFLOW_TOKEN") || undefined;
  if (!token) {
    // A deployment is public: without a token, nobody may trigger, resume or cancel.
    logLine("warn", "kvflow: KVFLOW_TOKEN is not set: the HTTP API is read-only");
    token = crypto.randomUUID() + crypto.randomUUID();
  }
  return {
    engine,
    heartbeat: () => engine.heartbeat(50_000),
    serve: () =>
      startServer(
        { port: Number(env("PORT") ?? 8000) },
        app(engine, {
          token,
          readToken: env("KVFLOW_READ_TOKEN") || undefined,
          expectWorker: false,
        }).fetch,
      ),
  };
}

/** Whether `kv.enqueue` works here: the current Deno Deploy and KV Connect have no queues. */
async function hasQueues(kv: Kv): Promise<boolean> {
  try {
    await kv.enqueue({ kvflow: "probe" });
    return true;
  } catch {
    return false;
  }
}
