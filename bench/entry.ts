/**
 * The processes the benchmarks start. `deno run -A bench/entry.ts <command> …` is the CLI
 * (`main.ts`, with its heartbeat cron) with the benchmark pipelines registered next to the
 * real ones, as a user's own entrypoint would be: the worker processes and the killed and
 * resumed runs of `bench/run.ts` use it. `bench/entry.ts rss <kv-path> <runs>` is the
 * memory benchmark's process (run it with `--v8-flags=--expose-gc`): it prints one JSON
 * line of memory figures. `send-events <kv-path> <key,…>` is the event benchmark's sender
 * (`event_wake.ts`), `parked <kv-path> <sizes-json>` the parked-runs process (`parked.ts`,
 * with `--v8-flags=--expose-gc`).
 *
 * @module
 */
import { heartbeat, main } from "../lib/cli/cli.ts";
import type { Pipeline } from "../lib/mod.ts";
import { loaders } from "../pipelines/lazy.ts";
import { diamond, PARKED, parking, RESTART } from "./pipelines.ts";
import { sleep } from "./_util.ts";
import type { ParkedSizes } from "./parked.ts";

/** The pipelines the benchmark processes know, besides the real ones. */
export const BENCH_DIAMOND = diamond("bench-diamond");

/** The real pipelines (imported when a command needs them) and the benchmark's. */
const REGISTRY = [BENCH_DIAMOND, RESTART] as Pipeline<unknown>[];

/** Memory of a process, MiB. */
export interface Memory {
  rssMiB: number;
  heapUsedMiB: number;
}

/** What the memory benchmark's process prints. */
export interface RssReport {
  runs: number;
  /** Engine open, worker started, nothing to do; after a GC. */
  idle: Memory;
  /** Every run parked in its running step. */
  active: Memory;
  /** The same after a forced GC. */
  activeAfterGc: Memory;
  /** After the runs were released and all succeeded, and a GC. */
  after: Memory;
  /** Wall ms from the first creation until every run was in its step. */
  parkMs: number;
}

function memory(): Memory {
  const m = Deno.memoryUsage();
  return { rssMiB: m.rss / 2 ** 20, heapUsedMiB: m.heapUsed / 2 ** 20 };
}

async function collect(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("Run the rss process with --v8-flags=--expose-gc");
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(20);
  }
}

/** `runs` runs parked in a running step at once in one engine; memory before, during, after. */
async function rss(path: string, runs: number): Promise<RssReport> {
  let succeeded = 0;
  const { openEngine } = await import("../lib/mod.ts");
  const engine = await openEngine({
    path,
    pipelines: [PARKED],
    maxRuns: runs,
    maxSteps: runs,
    onAlert: () => {},
    onEvent: (e) => {
      if (e.type === "run" && e.run.status === "succeeded") succeeded++;
    },
  });
  try {
    engine.start();
    await sleep(300);
    await collect();
    const idle = memory();
    parking.reset();
    const t0 = performance.now();
    for (let i = 0; i < runs; i += 16) {
      const batch = Array.from(
        { length: Math.min(16, runs - i) },
        () => engine.store.createRun(PARKED),
      );
      for (const run of await Promise.all(batch)) engine.worker.wake(run.id);
    }
    const deadline = Date.now() + 120_000;
    while (parking.entered < runs) {
      if (Date.now() > deadline) throw new Error(`only ${parking.entered} of ${runs} parked`);
      await sleep(10);
    }
    const parkMs = performance.now() - t0;
    await sleep(200);
    const active = memory();
    await collect();
    const activeAfterGc = memory();
    parking.release();
    while (succeeded < runs) {
      if (Date.now() > deadline) throw new Error(`only ${succeeded} of ${runs} succeeded`);
      await sleep(10);
    }
    await collect();
    return { runs, idle, active, activeAfterGc, after: memory(), parkMs };
  } finally {
    await engine.close(1000);
  }
}

if (import.meta.main) {
  if (Deno.args[0] === "rss") {
    console.log(JSON.stringify(await rss(Deno.args[1], Number(Deno.args[2]))));
    Deno.exit(0);
  }
  if (Deno.args[0] === "send-events") {
    const { sendEvents } = await import("./event_wake.ts");
    await sendEvents(Deno.args[1], Deno.args[2].split(","));
    Deno.exit(0);
  }
  if (Deno.args[0] === "parked") {
    const sizes = JSON.parse(Deno.args[2]) as ParkedSizes;
    const { parkedProcess } = await import("./parked.ts");
    console.log(JSON.stringify(await parkedProcess(Deno.args[1], sizes)));
    Deno.exit(0);
  }
  if (Deno.args[0] === "parked-reopen") {
    const sizes = JSON.parse(Deno.args[2]) as ParkedSizes;
    const { parkedReopenProcess } = await import("./parked.ts");
    console.log(
      JSON.stringify(await parkedReopenProcess(Deno.args[1], sizes, Number(Deno.args[3]))),
    );
    Deno.exit(0);
  }
  if (Deno.args[0] === "serve" || Deno.args[0] === "worker") {
    Deno.cron("kvflow heartbeat", "* * * * *", heartbeat);
  }
  Deno.exit(await main(Deno.args, { pipelines: REGISTRY, loaders }));
}
