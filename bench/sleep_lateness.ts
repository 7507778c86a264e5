/**
 * Sleep lateness in a living process: runs of `sleep(for: d)` then a step `after`, with d
 * from 50 ms to 2 s (held in the process: shorter than the worker's hold time) and 6 s
 * (longer: the run is parked and woken by the worker's timer, a queue hint or the sweep).
 * Lateness = the body of `after` starting − the sleep's `until` (its output). Beside it,
 * bare `setTimeout`s of the same delays in the same process at the same time.
 *
 * @module
 */
import { openEngine, type Pipeline } from "../lib/mod.ts";
import { commitFloor, type Floor } from "./floor.ts";
import { napping, waitProbe } from "./pipelines.ts";
import { countOf, fmt, type Latency, latency, log, sleep } from "./_util.ts";
import type { Row } from "./report.ts";

/** Sizes of the sleep benchmark. */
export interface SleepSizes {
  /** Runs with a short sleep (50 ms to 2 s), created over about 1.5 s. */
  short: number;
  /** Runs with a sleep longer than the hold time, created over about 3 s. */
  long: number;
  /** Commits of the floor measured before. */
  floorCommits: number;
}

/** What the sleep benchmark measured, ms. */
export interface SleepResult {
  short: Latency;
  byDelay: Record<string, Latency>;
  long: Latency;
  /** Long sleepers found parked (status `waiting`) before any was due. */
  longParked: number;
  /** Lateness of bare timers of the short delays meanwhile. */
  timers: Latency;
  holdMs: number;
  longMs: number;
  floor: Floor;
}

const SHORT = [50, 100, 200, 500, 1000, 2000];
const LONG = 6000;
const HOLD_MS = 5000;

/** Runs the sleep benchmark on a fresh KV file. */
export async function sleepLateness(path: string, sizes: SleepSizes): Promise<SleepResult> {
  const shorts = SHORT.map(napping);
  const long = napping(LONG);
  const late = new Map<string, number>();
  const engine = await openEngine({
    path,
    pipelines: [...shorts, long],
    maxRuns: 1000,
    maxSteps: 2000,
    holdMs: HOLD_MS,
    onAlert: () => {},
  });
  waitProbe.onAfter = (runId, at, until) => late.set(runId, at - until!);
  let stop = false;
  try {
    const floor = await commitFloor(engine.kv, sizes.floorCommits);
    engine.start();
    const timerSamples: number[] = [];
    const timers = (async () => {
      for (let i = 0; !stop; i++) {
        const d = SHORT[i % SHORT.length];
        const due = Date.now() + d;
        await sleep(d);
        timerSamples.push(Date.now() - due);
      }
    })();
    const delayOf = new Map<string, number>();
    const start = async (p: Pipeline<unknown>, ms: number) => {
      const run = await engine.trigger(p.name);
      delayOf.set(run.id, ms);
    };
    const longRuns: Promise<void>[] = [];
    for (let i = 0; i < sizes.long; i++) {
      longRuns.push(start(long, LONG));
      await sleep(3000 / sizes.long);
    }
    const shortRuns: Promise<void>[] = [];
    for (let i = 0; i < sizes.short; i++) {
      shortRuns.push(start(shorts[i % shorts.length], SHORT[i % SHORT.length]));
      await sleep(1500 / sizes.short);
    }
    await Promise.all([...longRuns, ...shortRuns]);
    // the first long sleeper is due 6 s after it started, about 4.5 s from now
    const longParked = await countOf(engine.kv, long.name, "waiting");
    const total = sizes.short + sizes.long;
    const deadline = Date.now() + 60_000;
    while (late.size < total) {
      if (Date.now() > deadline) throw new Error(`sleep: ${late.size} of ${total} woke`);
      await sleep(50);
    }
    stop = true;
    await timers;
    const byDelay: Record<string, number[]> = {};
    for (const [runId, ms] of late) (byDelay[`${delayOf.get(runId)} ms`] ??= []).push(ms);
    const shortSamples = SHORT.flatMap((d) => byDelay[`${d} ms`] ?? []);
    const result: SleepResult = {
      short: latency(shortSamples),
      byDelay: Object.fromEntries(Object.entries(byDelay).map(([d, xs]) => [d, latency(xs)])),
      long: latency(byDelay[`${LONG} ms`]),
      longParked,
      timers: latency(timerSamples),
      holdMs: HOLD_MS,
      longMs: LONG,
      floor,
    };
    log(
      `sleep: ${result.short.n} short sleeps late by p50 ${fmt(result.short.p50)} ms, p99 ${
        fmt(result.short.p99)
      } ms; ${result.long.n} of ${LONG} ms (${longParked} parked) p50 ${
        fmt(result.long.p50)
      } ms, p99 ${fmt(result.long.p99)} ms`,
    );
    return result;
  } finally {
    stop = true;
    waitProbe.onAfter = undefined;
    await engine.close(1000);
  }
}

/** Table rows of the sleep benchmark. */
export function sleepRows(r: SleepResult): Row[] {
  const f = r.floor.mean;
  return [{
    benchmark:
      `**8. sleep lateness**: ${r.short.n} runs sleeping 50-2,000 ms (held in the process: under \`holdMs\` ${
        fmt(r.holdMs, 0)
      } ms), created over 1.5 s`,
    figure: `p50 ${fmt(r.short.p50, 1)} ms, **p99 ${fmt(r.short.p99, 1)} ms**, max ${
      fmt(r.short.max, 1)
    } ms (dependent's body start − the sleep's until); bare setTimeout meanwhile: p50 ${
      fmt(r.timers.p50, 0)
    }, p99 ${fmt(r.timers.p99, 0)} ms`,
    target: "p99 <= 20 ms",
    met: r.short.p99 <= 20,
    ratio: `p50 ${fmt(r.short.p50 / f, 1)}, p99 ${fmt(r.short.p99 / f, 1)} floor commits (floor ${
      fmt(f, 3)
    } ms)`,
  }, {
    benchmark: `8. the same for ${r.long.n} runs sleeping ${
      fmt(r.longMs / 1000, 0)
    } s (parked: ${r.longParked} of ${r.long.n} seen \`waiting\` before the first was due)`,
    figure: `p50 ${fmt(r.long.p50, 1)} ms, p99 ${fmt(r.long.p99, 1)} ms, max ${
      fmt(r.long.max, 1)
    } ms`,
    target: "-",
    met: null,
    ratio: `p50 ${fmt(r.long.p50 / f, 1)}, p99 ${fmt(r.long.p99 / f, 1)} floor commits`,
  }];
}
