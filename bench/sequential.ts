/**
 * The sequential path: a 1,000-step chain of trivial steps driven inline, next to the KV
 * commit floor measured on the same handle, and the KV operations one step costs.
 *
 * @module
 */
import { type Engine, openEngine, type Pipeline } from "../lib/mod.ts";
import { countingKv, diffCounts, type KvCounts } from "./kv_count.ts";
import { commitFloor, type Floor } from "./floor.ts";
import { chain } from "./pipelines.ts";
import { fmt, log, median, percentile, withTimeout } from "./_util.ts";
import type { Row } from "./report.ts";

/** Sizes of the sequential benchmark. */
export interface SequentialSizes {
  /** Commits per floor measurement. */
  floorCommits: number;
  /** Steps of the chain. */
  steps: number;
  /** (floor, chain) pairs. */
  repeats: number;
  /** Steps of the counted run. */
  countSteps: number;
}

/** One run of the chain. */
export interface SequentialRun {
  /** Wall ms of `runToEnd`, claim to end. */
  ms: number;
  /** Median ms between consecutive steps' durable success. */
  p50: number;
}

/** KV operations per step of the chain. */
export interface PerStep {
  steps: number;
  counts: KvCounts;
  totalMs: number;
  /** ms per step spent outside awaited commits: the engine's own work plus event-loop hops. */
  outsideCommitMsPerStep: number;
  commitMsPerStep: number;
}

/** Everything the sequential benchmark measured. */
export interface SequentialResult {
  floors: Floor[];
  shaped: Floor[];
  runs: SequentialRun[];
  counted: PerStep;
}

async function sequentialRun(
  engine: Engine,
  seq: Pipeline<unknown>,
  marks: number[],
): Promise<SequentialRun> {
  const n = seq.steps.length;
  const run = await engine.store.createRun(seq);
  marks.length = 0;
  const t0 = performance.now();
  const end = await engine.runToEnd(run.id);
  const ms = performance.now() - t0;
  if (end.status !== "succeeded") throw new Error(`sequential run ${end.status}`);
  const last = await engine.store.getOutput(run.id, `s${n - 1}`);
  if (last !== n - 1) throw new Error(`sequential run: last output ${last}, want ${n - 1}`);
  if (marks.length !== n) throw new Error(`sequential run: ${marks.length} successes, want ${n}`);
  const gaps = marks.slice(1).map((t, i) => t - marks[i]).sort((a, b) => a - b);
  return { ms, p50: percentile(gaps, 50) };
}

/** KV operations per step, through a counting wrapper around `shared`. */
async function perStep(shared: Deno.Kv, n: number): Promise<PerStep> {
  const seq = chain("counted", n);
  const { kv, counts } = countingKv(shared);
  const engine = await openEngine({ kv, queues: true, pipelines: [seq] });
  try {
    const warm = await engine.store.createRun(seq);
    await engine.runToEnd(warm.id);
    const run = await engine.store.createRun(seq);
    const before = { ...counts };
    const t0 = performance.now();
    const end = await engine.runToEnd(run.id);
    const totalMs = performance.now() - t0;
    if (end.status !== "succeeded") throw new Error(`counted run ${end.status}`);
    const used = diffCounts(before, counts);
    return {
      steps: n,
      counts: used,
      totalMs,
      commitMsPerStep: used.commitMs / n,
      outsideCommitMsPerStep: (totalMs - used.commitMs) / n,
    };
  } finally {
    await engine.close(1000);
  }
}

/**
 * (floor, driver-shaped floor, chain) triples on one engine's handle, then a counted run.
 *
 * @param path a fresh KV file
 * @param signal aborted: stop after the current triple
 */
export async function sequential(
  path: string,
  sizes: SequentialSizes,
  signal?: AbortSignal,
): Promise<SequentialResult> {
  const warm = chain("warm", 100);
  const seq = chain("seq", sizes.steps);
  const floors: Floor[] = [];
  const shaped: Floor[] = [];
  const runs: SequentialRun[] = [];
  const marks: number[] = [];
  const engine = await openEngine({
    path,
    pipelines: [warm, seq],
    onEvent: (e) => {
      if (e.type === "task" && e.status === "succeeded") marks.push(performance.now());
    },
  });
  try {
    const w = await engine.store.createRun(warm);
    if ((await engine.runToEnd(w.id)).status !== "succeeded") throw new Error("warm-up failed");
    for (let r = 0; r < sizes.repeats; r++) {
      signal?.throwIfAborted();
      floors.push(await withTimeout(commitFloor(engine.kv, sizes.floorCommits), "floor"));
      shaped.push(
        await withTimeout(commitFloor(engine.kv, sizes.floorCommits, "driver"), "shaped"),
      );
      runs.push(await withTimeout(sequentialRun(engine, seq, marks), "sequential"));
      log(
        `sequential ${r + 1}: floor p50 ${fmt(floors[r].p50, 3)} mean ${
          fmt(floors[r].mean, 3)
        } ms; driver-shaped p50 ${fmt(shaped[r].p50, 3)} ms; chain ${
          fmt(runs[r].ms / sizes.steps, 3)
        } ms/step (p50 ${fmt(runs[r].p50, 3)})`,
      );
    }
    const counted = await withTimeout(perStep(engine.kv, sizes.countSteps), "counted");
    return { floors, shaped, runs, counted };
  } finally {
    await engine.close(1000);
  }
}

/** The median floor mean of a sequential result, ms: the reference of other ratios. */
export function floorMeanOf(r: SequentialResult): number {
  return median(r.floors.map((f) => f.mean));
}

/** Table rows of the sequential benchmark. */
export function sequentialRows(r: SequentialResult, steps: number): Row[] {
  const { floors, shaped, runs, counted } = r;
  const floorMean = floorMeanOf(r);
  const perStepMs = runs.map((x) => x.ms / steps);
  const ratios = perStepMs.map((ms, i) => ms / floors[i].mean);
  const ratio = median(ratios);
  const c = counted.counts;
  const per = (x: number) => fmt(x / counted.steps, 3);
  return [
    {
      benchmark: `KV commit floor: sequential check+set+set (median of ${floors.length})`,
      figure: `p50 ${fmt(median(floors.map((f) => f.p50)), 3)} ms, mean ${fmt(floorMean, 3)} ms (${
        fmt(1000 / floorMean, 0)
      } commits/s)`,
      target: "-",
      met: null,
      ratio: "1.00 (floor)",
    },
    {
      benchmark: "driver-shaped commit: check + 3 sets, sequential",
      figure: `p50 ${fmt(median(shaped.map((f) => f.p50)), 3)} ms, mean ${
        fmt(median(shaped.map((f) => f.mean)), 3)
      } ms`,
      target: "-",
      met: null,
      ratio: `${fmt(median(shaped.map((f, i) => f.mean / floors[i].mean)))}x mean`,
    },
    {
      benchmark: `**1. sequential ${
        steps.toLocaleString("en-US")
      }-step run**: wall / steps (median of ${runs.length})`,
      figure: `**${fmt(median(perStepMs), 3)} ms/step** (range ${fmt(Math.min(...perStepMs), 3)}-${
        fmt(Math.max(...perStepMs), 3)
      }); p50 step-to-step ${fmt(median(runs.map((x) => x.p50)), 3)} ms`,
      target: "<= 1.3x floor",
      met: ratio <= 1.3,
      ratio: `**${fmt(ratio)}x** mean/mean (${
        fmt(median(runs.map((x, i) => x.p50 / floors[i].p50)))
      }x p50/p50)`,
    },
    {
      benchmark: `KV operations per sequential step (${
        counted.steps.toLocaleString("en-US")
      }-step run, counted)`,
      figure: `${per(c.commit)} commits, ${per(c.get + c.getMany + c.list)} reads, ${
        per(c.set + c.delete)
      } writes, ${per(c.check)} checks; ${
        fmt(counted.outsideCommitMsPerStep, 3)
      } ms outside commits`,
      target: "1 commit",
      met: c.commit / counted.steps < 1.05,
      ratio: `${fmt(counted.outsideCommitMsPerStep / floorMean)}x outside commits`,
    },
  ];
}
