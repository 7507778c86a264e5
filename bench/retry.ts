/**
 * Retry lateness with the process alive: runs whose first step fails three times and is
 * retried after 20–500 ms, created over about a second, while other runs arrive at a
 * steady rate in the same engine. For each retry: when its attempt's body started minus
 * when it was due (the `nextAt` the engine stored with the failure). Beside it, the
 * lateness of bare `setTimeout`s of the same delays in the same process at the same time:
 * what the event loop alone adds.
 *
 * @module
 */
import { openEngine, type Pipeline } from "../lib/mod.ts";
import { commitFloor, type Floor } from "./floor.ts";
import { flaky, retryProbe, waitingDiamond } from "./pipelines.ts";
import { fmt, type Latency, latency, log, sleep } from "./_util.ts";
import type { Row } from "./report.ts";

/** Sizes of the retry benchmark. */
export interface RetrySizes {
  /** Runs with retries; each has three. */
  runs: number;
  /** Background runs started per second meanwhile. */
  backgroundPerSecond: number;
  /** Commits of the floor measured before. */
  floorCommits: number;
}

/** What the retry benchmark measured. */
export interface RetryResult {
  retries: number;
  /** Lateness, ms: attempt body start − due time. */
  lateness: Latency;
  /** The same per retry delay. */
  byDelay: Record<string, Latency>;
  /** Of it, due time → the engine starting the attempt (before its start marker commits). */
  wake: Latency;
  /** Lateness of bare timers of the same delays meanwhile, ms. */
  timers: Latency;
  /** Background runs that finished meanwhile, and over how long. */
  backgroundRuns: number;
  seconds: number;
  floor: Floor;
}

const DELAYS = [20, 50, 100, 200, 500];
const ATTEMPTS = 4;

/** Runs the retry benchmark on a fresh KV file. */
export async function retry(path: string, sizes: RetrySizes): Promise<RetryResult> {
  const flakies = DELAYS.map((d) => flaky(`bench-retry-${d}`, d, ATTEMPTS));
  const busy = waitingDiamond("bench-busy", 5);
  const dueAt = new Map<string, number>(); // `${runId}:${attempt}` → due time
  const startedAt = new Map<string, number>();
  const markedAt = new Map<string, number>();
  const delayOf = new Map<string, number>();
  let backgroundRuns = 0;
  let failure: string | undefined;
  const engine = await openEngine({
    path,
    pipelines: [...flakies, busy],
    maxRuns: 1000,
    maxSteps: 2000,
    onAlert: () => {},
    onEvent: (e) => {
      if (e.type === "task" && e.status === "retrying" && e.nextAt) {
        dueAt.set(`${e.runId}:${e.attempt + 1}`, e.nextAt);
      }
      if (e.type === "task" && e.status === "running" && e.attempt > 1 && e.startedAt) {
        markedAt.set(`${e.runId}:${e.attempt}`, e.startedAt);
      }
      if (e.type === "run" && e.run.status === "failed") failure ??= `run ${e.run.id} failed`;
      if (e.type === "run" && e.run.status === "succeeded" && e.run.pipeline === busy.name) {
        backgroundRuns++;
      }
    },
  });
  retryProbe.onStart = (runId, attempt, at) => startedAt.set(`${runId}:${attempt}`, at);
  let stop = false;
  try {
    const floor = await commitFloor(engine.kv, sizes.floorCommits);
    engine.start();
    const t0 = performance.now();
    // Other runs arriving at a steady rate, whatever the engine makes of them.
    const background = (async () => {
      for (let i = 0; !stop; i++) {
        await engine.trigger(busy.name);
        await sleep(
          Math.max(0, t0 + ((i + 1) * 1000) / sizes.backgroundPerSecond - performance.now()),
        );
      }
    })();
    const timerSamples: number[] = [];
    const timers = (async () => {
      for (let i = 0; !stop; i++) {
        const d = DELAYS[i % DELAYS.length];
        const due = Date.now() + d;
        await sleep(d);
        timerSamples.push(Date.now() - due);
      }
    })();
    await sleep(200);
    const ids: string[] = [];
    const created: Promise<void>[] = [];
    for (let i = 0; i < sizes.runs; i++) {
      const pipeline = flakies[i % flakies.length] as Pipeline<unknown>;
      created.push(
        engine.trigger(pipeline.name).then((run) => {
          ids.push(run.id);
          delayOf.set(run.id, DELAYS[i % DELAYS.length]);
        }),
      );
      await sleep(1000 / sizes.runs);
    }
    await Promise.all(created);
    const deadline = Date.now() + 120_000;
    while (true) {
      if (failure) throw new Error(`retry: ${failure}`);
      const runs = await Promise.all(ids.map((id) => engine.store.requireRun(id)));
      if (runs.every((r) => r.status === "succeeded")) break;
      if (Date.now() > deadline) throw new Error("retry: runs still not done after 120 s");
      await sleep(100);
    }
    stop = true;
    const seconds = (performance.now() - t0) / 1000;
    await Promise.all([background, timers]);
    const all: number[] = [];
    const wake: number[] = [];
    const byDelay: Record<string, number[]> = {};
    for (const [key, due] of dueAt) {
      const started = startedAt.get(key);
      if (started === undefined) throw new Error(`retry: ${key} never started`);
      const late = started - due;
      all.push(late);
      wake.push(markedAt.get(key)! - due);
      const d = `${delayOf.get(key.split(":")[0])} ms`;
      (byDelay[d] ??= []).push(late);
    }
    const expected = sizes.runs * (ATTEMPTS - 1);
    if (all.length !== expected) throw new Error(`retry: ${all.length} retries, want ${expected}`);
    const result: RetryResult = {
      retries: all.length,
      lateness: latency(all),
      byDelay: Object.fromEntries(Object.entries(byDelay).map(([d, xs]) => [d, latency(xs)])),
      wake: latency(wake),
      timers: latency(timerSamples),
      backgroundRuns,
      seconds,
      floor,
    };
    log(
      `retry: ${result.retries} retries late by p50 ${fmt(result.lateness.p50, 0)} ms, p99 ${
        fmt(result.lateness.p99, 0)
      } ms, max ${fmt(result.lateness.max, 0)} ms; bare timers p50 ${
        fmt(result.timers.p50, 0)
      } ms, p99 ${fmt(result.timers.p99, 0)} ms; ${backgroundRuns} background runs in ${
        fmt(seconds, 1)
      } s`,
    );
    return result;
  } finally {
    stop = true;
    retryProbe.onStart = undefined;
    await engine.close(1000);
  }
}

/** Table rows of the retry benchmark. */
export function retryRows(r: RetryResult): Row[] {
  const f = r.floor.mean;
  return [{
    benchmark: `**4. retry lateness**: ${r.retries} retries due 20-500 ms after a failure, ${
      fmt(r.backgroundRuns / r.seconds, 0)
    } other 5-step runs/s in the same process`,
    figure: `p50 ${fmt(r.lateness.p50, 0)} ms, **p99 ${fmt(r.lateness.p99, 0)} ms**, max ${
      fmt(r.lateness.max, 0)
    } ms (body start − due time), of which until the engine starts the attempt p50 ${
      fmt(r.wake.p50, 0)
    }, p99 ${fmt(r.wake.p99, 0)} ms; bare setTimeout meanwhile: p50 ${fmt(r.timers.p50, 0)}, p99 ${
      fmt(r.timers.p99, 0)
    } ms`,
    target: "p99 <= 100 ms",
    met: r.lateness.p99 <= 100,
    ratio: `p50 ${fmt(r.lateness.p50 / f, 1)}, p99 ${
      fmt(r.lateness.p99 / f, 1)
    } floor commits (floor ${fmt(f, 3)} ms)`,
  }];
}
