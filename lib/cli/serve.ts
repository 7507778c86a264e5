/**
 * The long-running commands: `serve` and `worker` drive runs until a signal, `backfill`
 * drives a range of logical dates to their ends.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { UsageError } from "../model/errors.ts";
import { env } from "../platform/env.ts";
import { exit, onStopSignal } from "../platform/process.ts";
import { formatMs } from "../define/duration.ts";
import { withChildren } from "../define/pipeline.ts";
import { EXIT, type Invocation, openCliEngine } from "./invocation.ts";
import { lazyNames, loadRegistered, type PipelineLoaders } from "./load.ts";
import { priorityFlag } from "./parse.ts";
import { formatLogLine } from "../platform/log.ts";

/** The engine of a running `serve` or `worker`, for the cron heartbeat. */
let serving: Engine | undefined;

/**
 * The cron heartbeat of `serve` and `worker`: checks schedules and due runs once.
 * (They also check on their own short timer; the heartbeat is the clock that survives
 * on platforms that stop idle processes.)
 */
export async function heartbeat(): Promise<void> {
  await serving?.worker.sweep();
}

/** `backfill`: a run for each logical date of a range, driven to their ends here. */
export async function backfill(invocation: Invocation): Promise<number> {
  const name = invocation.args[0];
  const maxActive = invocation.flags["max-active"] === undefined
    ? undefined
    : Number(invocation.flags["max-active"]);
  const engine = await openCliEngine(invocation, invocation.context.pipelines);
  const started = Date.now();
  try {
    const runs = await engine.backfill(name, invocation.flags.from!, invocation.flags.to!, {
      maxActive,
      priority: priorityFlag(invocation.flags.priority),
      onProgress: (done, total, run, created) =>
        invocation.out(
          `  ${done}/${total} ${run.logicalDate} ${run.id} ${run.status}${
            created ? "" : " (existed)"
          }`,
        ),
    });
    const failed = runs.filter((r) => r.status !== "succeeded");
    invocation.out(
      `backfill of ${name} ${invocation.flags.from}..${invocation.flags.to}: ${runs.length} runs, ${
        runs.length - failed.length
      } succeeded, ${failed.length} not, in ${formatMs(Date.now() - started)}`,
    );
    for (const r of failed) invocation.out(`  resume with: deno task resume ${r.id}`);
    return failed.length === 0 ? EXIT.ok : EXIT.failed;
  } finally {
    await engine.close();
  }
}

/** `serve`: the worker with the HTTP service and dashboard, until a signal. */
export async function serve(invocation: Invocation): Promise<number> {
  const port = Number(invocation.flags.port ?? env("PORT") ?? 8000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UsageError(`Invalid port ${JSON.stringify(invocation.flags.port)}: use 0 to 65535`);
  }
  const engine = await openCliEngine(invocation, invocation.context.pipelines);
  // heard from the start: a signal while the service loads still stops gracefully
  const stop = stopSignal(invocation);
  engine.start();
  serving = engine;
  // loaded only here: the HTTP service and dashboard are slow to import
  const { serve: serveHttp } = await import("../http/service.ts");
  const server = serveHttp(engine, {
    port,
    token: env("KVFLOW_TOKEN") || undefined,
    readToken: env("KVFLOW_READ_TOKEN") || undefined,
    log: (line, level) => invocation.err(formatLogLine(level ?? "info", line)),
  });
  // Requests and event streams end before the engine closes under them.
  await untilSignal(engine, stop, () => server.shutdown());
  serving = undefined;
  return EXIT.ok;
}

/**
 * How long a starting `worker` lets the runs it found due go first before it imports the
 * rest of its registry, at most.
 */
const REGISTRY_AFTER_MS = 1000;

/**
 * `worker`: claims and drives runs until a signal. It starts on the static registry: the
 * runs it finds due (a dead worker's, say) start at once, each importing its pipeline alone
 * if need be. Importing every pipeline holds the process up for a tenth of a second or more,
 * so the rest of the registry (schedules, deadlines, event triggers) is imported once those
 * runs have left its hands, or after {@linkcode REGISTRY_AFTER_MS}, and looked at at once.
 */
export async function worker(invocation: Invocation): Promise<number> {
  const { loaders } = invocation.context;
  // the children a static pipeline invokes come with it, as the whole registry did
  const pipelines = withChildren([...invocation.context.pipelines]);
  const engine = await openCliEngine(invocation, pipelines);
  // heard from the start: a signal while the registry loads still stops gracefully
  const stop = stopSignal(invocation);
  engine.start();
  serving = engine;
  try {
    const lazy = lazyNames(pipelines, loaders);
    if (lazy.length > 0) {
      await Promise.race([registerLater(engine, loaders!, lazy, stop.stopped), stop.stopped]);
    }
  } catch (error) {
    serving = undefined;
    stop.dispose();
    await engine.close();
    throw error;
  }
  if (!stop.signalled) {
    invocation.err(
      formatLogLine("info", `kvflow: worker ${engine.worker.id} started; Ctrl-C stops it`),
    );
  }
  await untilSignal(engine, stop);
  serving = undefined;
  return EXIT.ok;
}

/**
 * Lets the runs a starting worker found due go first, then imports the rest of its
 * registry and looks at once at what it adds (nothing once a stop signal came).
 */
async function registerLater(
  engine: Engine,
  loaders: PipelineLoaders,
  lazy: string[],
  stopped: Promise<void>,
): Promise<void> {
  // a failed sweep here is logged by the next one
  await engine.worker.sweep().catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopping = false;
  await Promise.race([
    engine.worker.idle(),
    new Promise((resolve) => (timer = setTimeout(resolve, REGISTRY_AFTER_MS))),
    stopped.then(() => stopping = true),
  ]);
  clearTimeout(timer);
  if (stopping) return;
  const added = await loadRegistered(loaders, lazy);
  if (stopping) return;
  engine.register(added);
  await engine.worker.sweep().catch(() => {});
}

/** A stop signal (SIGINT/SIGTERM) heard: whether one came, and when. */
interface StopSignal {
  /** Resolves at the first signal. */
  stopped: Promise<void>;
  /** Whether a signal came. */
  readonly signalled: boolean;
  /** Stops listening. */
  dispose: () => void;
}

/** Listens for SIGINT/SIGTERM: the first stops gracefully, a second exits at once. */
function stopSignal(invocation: Invocation): StopSignal {
  const { promise, resolve } = Promise.withResolvers<void>();
  let signalled = false;
  const dispose = onStopSignal(() => {
    if (signalled) exit(EXIT.interrupted);
    signalled = true;
    invocation.err(
      formatLogLine(
        "info",
        "kvflow: stopping: finishing running steps (signal again to exit at once)",
      ),
    );
    resolve();
  });
  return {
    stopped: promise,
    get signalled() {
      return signalled;
    },
    dispose,
  };
}

/** Waits for a stop signal, then stops gracefully. */
async function untilSignal(
  engine: Engine,
  stop: StopSignal,
  beforeClose?: () => Promise<void>,
): Promise<void> {
  await stop.stopped;
  await beforeClose?.();
  await engine.close(Number(env("KVFLOW_GRACE_MS") ?? 10_000));
  stop.dispose();
}
