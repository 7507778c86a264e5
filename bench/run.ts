/**
 * kvflow benchmarks, all in one command on local KV files in a temp dir (deleted
 * afterwards): `deno task bench` (or `deno run -A bench/run.ts [--quick] [--json]`).
 *
 * 1. KV commit floor: sequential `check + set + set` commits on the benchmark engine's
 *    own KV handle, interleaved with the pipeline runs so each run has a floor measured
 *    next to it (absolute times drift on a noisy machine; ratios hold). The shape of a
 *    driver checkpoint (`check + 3 sets`) is measured too.
 * 2. A 1,000-step sequential pipeline of trivial steps: ms per step (total / steps) and
 *    the median gap between consecutive steps' durable success, and their ratios to the
 *    floor.
 * 3. 500 concurrent runs of a 5-step DAG, created first, then driven by one engine's
 *    started worker: steps/s and runs/s, next to raw commit throughput (64 in flight).
 * 4. RSS of the process after (3).
 * 5. KV operations per step on the sequential path, counted through a wrapping `Deno.Kv`,
 *    and the time per step spent outside KV commits.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  type AnyStep,
  type Engine,
  openEngine,
  type Pipeline,
  pipeline,
  type RunEvent,
  step,
} from "../lib/mod.ts";
import { countingKv, diffCounts, type KvCounts } from "./kv_count.ts";

/** Sizes of one bench run. */
interface Sizes {
  /** Commits per floor measurement. */
  floorCommits: number;
  /** Steps of the sequential pipeline. */
  seqSteps: number;
  /** (floor, pipeline) pairs. */
  seqRepeats: number;
  /** Runs of the concurrent benchmark. */
  concurrentRuns: number;
  /** Repeats of the concurrent benchmark. */
  concRepeats: number;
  /** Steps of the counted sequential run. */
  countSteps: number;
}

const FULL: Sizes = {
  floorCommits: 1000,
  seqSteps: 1000,
  seqRepeats: 5,
  concurrentRuns: 500,
  concRepeats: 3,
  countSteps: 1000,
};
const QUICK: Sizes = {
  floorCommits: 300,
  seqSteps: 1000,
  seqRepeats: 3,
  concurrentRuns: 100,
  concRepeats: 1,
  countSteps: 200,
};

/** Per-benchmark time limit, ms (`KVFLOW_BENCH_TIMEOUT_MS` overrides it). */
const TIMEOUT_MS = Number(Deno.env.get("KVFLOW_BENCH_TIMEOUT_MS") ?? 120_000);

/** Commit latency statistics, ms. */
interface Floor {
  commits: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  perSecond: number;
}

/** Result of the concurrent benchmark. */
interface Concurrent {
  runs: number;
  /** Commits/s of `check + set + set` with 64 in flight, measured just before. */
  rawCommitsPerSecond: number;
  steps: number;
  createMs: number;
  driveMs: number;
  stepsPerSecond: number;
  runsPerSecond: number;
  /** Claims and checkpoint commits the runs asked for. */
  batches: number;
  /** KV commits they took: group commit shares one among many. */
  kvCommits: number;
  rssMiB: number;
  heapUsedMiB: number;
}

/** KV operations per step of a sequential pipeline. */
interface PerStep {
  steps: number;
  counts: KvCounts;
  totalMs: number;
  /** ms per step spent outside awaited commits: the engine's own work plus event-loop hops. */
  outsideCommitMsPerStep: number;
  commitMsPerStep: number;
}

const openEngines = new Set<Engine>();
const openKvs = new Set<Deno.Kv>();

/** A chain of `n` trivial steps, each needing the previous one. */
export function chain(name: string, n: number): Pipeline<unknown> {
  let prev = step("s0", () => 0);
  const steps: AnyStep[] = [prev];
  for (let i = 1; i < n; i++) {
    const before = prev;
    prev = step(`s${i}`, { needs: { prev: before } }, ({ prev }) => prev + 1);
    steps.push(prev);
  }
  return pipeline(name, { steps }) as Pipeline<unknown>;
}

/** A 5-step diamond: load → (left, right) → join → report. */
export function diamond(name: string): Pipeline<unknown> {
  const load = step("load", () => ({ n: 1 }));
  const left = step("left", { needs: { load } }, ({ load }) => load.n + 1);
  const right = step("right", { needs: { load } }, ({ load }) => load.n + 2);
  const join = step("join", { needs: { left, right } }, ({ left, right }) => left + right);
  const report = step("report", { needs: { join } }, ({ join }) => `sum=${join}`);
  return pipeline(name, { steps: [load, left, right, join, report] }) as Pipeline<unknown>;
}

function withTimeout<T>(promise: Promise<T>, label: string, ms = TIMEOUT_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

async function engineAt(
  path: string,
  pipelines: Pipeline<unknown>[],
  extra: Partial<Parameters<typeof openEngine>[0]> = {},
): Promise<Engine> {
  const engine = await openEngine({ path, pipelines, ...extra });
  openEngines.add(engine);
  return engine;
}

async function closeEngine(engine: Engine): Promise<void> {
  openEngines.delete(engine);
  await engine.close(1000);
}

/** The shape of a commit: the floor's `check + set + set`, or the driver's `check + 3 sets`. */
type CommitShape = "floor" | "driver";

let floorSeq = 0;

/**
 * 1. Sequential commits on `kv` (the benchmark engine's own handle, so the same file,
 * warmed up): `check + set + set` (the floor), or the shape of a driver checkpoint
 * (`check` lease + `set` attempt, step, next step). Keys live under `["bench"]`.
 */
async function commitFloor(kv: Deno.Kv, commits: number, shape: CommitShape): Promise<Floor> {
  const runId = `20260101-000000-floor${floorSeq++}`;
  const lease = ["bench", "lease", runId];
  const { versionstamp } = await kv.set(lease, {
    owner: "host:1234:abcdefgh",
    host: "host",
    pid: 1234,
    deadline: Date.now(),
  });
  const task = (i: number, status: string) => ({
    status,
    attempt: 1,
    generation: 0,
    startedAt: Date.now(),
    endedAt: Date.now(),
    nextAt: null,
    error: null,
    output: { inline: i },
  });
  const once = async (i: number) => {
    const op = kv.atomic().check({ key: lease, versionstamp });
    if (shape === "floor") {
      op.set(["bench", "step", runId, `a${i}`], task(i, "succeeded"))
        .set(["bench", "step", runId, `b${i}`], task(i, "succeeded"));
    } else {
      op.set(["bench", "attempt", runId, `s${i}`, -1, 1], {
        step: `s${i}`,
        item: -1,
        n: 1,
        status: "succeeded",
        startedAt: Date.now(),
        endedAt: Date.now(),
        error: null,
        logs: [],
      }).set(["bench", "step", runId, `s${i}`], task(i, "succeeded"))
        .set(["bench", "step", runId, `s${i + 1}`], task(i, "running"));
    }
    const result = await op.commit();
    if (!result.ok) throw new Error("floor: check failed");
  };
  for (let i = 0; i < 50; i++) await once(-i - 1); // warm-up
  const samples: number[] = [];
  const start = performance.now();
  for (let i = 0; i < commits; i++) {
    const t0 = performance.now();
    await once(i);
    samples.push(performance.now() - t0);
  }
  const total = performance.now() - start;
  samples.sort((a, b) => a - b);
  return {
    commits,
    p50: percentile(samples, 50),
    p90: percentile(samples, 90),
    p99: percentile(samples, 99),
    mean: total / commits,
    perSecond: (commits * 1000) / total,
  };
}

/** Throughput of `check + set + set` commits on `kv` with `inFlight` of them at once. */
async function commitThroughput(kv: Deno.Kv, commits: number, inFlight: number): Promise<number> {
  const value = { status: "succeeded", attempt: 1, startedAt: Date.now(), output: { inline: 1 } };
  let next = 0;
  const lane = async (lane: number) => {
    const lease = ["bench", "lease", `lane${lane}`];
    const { versionstamp } = await kv.set(lease, { owner: "bench" });
    while (next < commits) {
      const i = next++;
      const result = await kv.atomic().check({ key: lease, versionstamp })
        .set(["bench", "step", `lane${lane}`, `a${i}`], value)
        .set(["bench", "step", `lane${lane}`, `b${i}`], value)
        .commit();
      if (!result.ok) throw new Error("throughput: check failed");
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: inFlight }, (_, i) => lane(i)));
  return (commits * 1000) / (performance.now() - t0);
}

/** One run of the sequential pipeline. */
interface SequentialRun {
  /** Wall ms of `runToEnd`, claim to end. */
  ms: number;
  /** Median ms between consecutive steps' durable success. */
  p50: number;
}

/**
 * 2. One run of a long chain of trivial steps, driven inline. `marks` collects the time
 * of each step's durable success (the engine's `onEvent`).
 */
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

/** 3 and 4. Many runs created first, then driven by one started worker. */
async function concurrent(
  path: string,
  runs: number,
  commits: number,
): Promise<Concurrent> {
  const dag = diamond("dag");
  const stepsPerRun = dag.steps.length;
  let succeeded = 0;
  let failure: string | undefined;
  let allDone!: () => void;
  const done = new Promise<void>((resolve) => (allDone = resolve));
  const onEvent = (e: RunEvent) => {
    if (e.type !== "run") return;
    if (e.run.status === "succeeded") {
      if (++succeeded === runs) allDone();
    } else if (e.run.status === "failed" || e.run.status === "cancelled") {
      failure ??= `run ${e.run.id} ${e.run.status}: ${e.run.error?.message}`;
      allDone();
    }
  };
  // Every run may have both branches of its diamond running: room for all of them.
  const engine = await engineAt(path, [dag], {
    maxRuns: runs,
    maxSteps: 2 * runs,
    onEvent,
    onAlert: () => {},
  });
  try {
    // Raw commit throughput on the same file and handle, right before: the floor here.
    const rawCommitsPerSecond = await commitThroughput(engine.kv, commits, 64);
    const t0 = performance.now();
    const ids: string[] = [];
    for (let i = 0; i < runs; i += 16) {
      const batch = Array.from(
        { length: Math.min(16, runs - i) },
        () => engine.store.createRun(dag),
      );
      for (const run of await Promise.all(batch)) ids.push(run.id);
    }
    const createMs = performance.now() - t0;
    const t1 = performance.now();
    const before = { ...engine.store.committer.stats };
    engine.worker.start();
    for (const id of ids) engine.worker.poke(id);
    await done;
    const driveMs = performance.now() - t1;
    const after = engine.store.committer.stats;
    if (failure) throw new Error(failure);
    const memory = Deno.memoryUsage();
    const report = await engine.store.getOutput(ids[ids.length - 1], "report");
    if (report !== "sum=5") throw new Error(`concurrent run: output ${report}, want sum=5`);
    return {
      runs,
      rawCommitsPerSecond,
      steps: runs * stepsPerRun,
      createMs,
      driveMs,
      stepsPerSecond: (runs * stepsPerRun * 1000) / driveMs,
      runsPerSecond: (runs * 1000) / driveMs,
      batches: after.batches - before.batches,
      kvCommits: after.commits - before.commits,
      rssMiB: memory.rss / 2 ** 20,
      heapUsedMiB: memory.heapUsed / 2 ** 20,
    };
  } finally {
    await closeEngine(engine);
  }
}

/**
 * 5. KV operations per step of a sequential chain, through a counting wrapper around
 * `kv` (the sequential benchmark's own handle: same file, warmed up).
 */
async function perStep(shared: Deno.Kv, n: number): Promise<PerStep> {
  const seq = chain("counted", n);
  const { kv, counts } = countingKv(shared);
  const engine = await openEngine({ kv, queues: true, pipelines: [seq] });
  openEngines.add(engine);
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
    await closeEngine(engine);
  }
}

function fmt(n: number, digits = 2): string {
  return n.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => `| ${r.map((cell, c) => cell.padEnd(widths[c])).join(" | ")} |`;
  return [line(rows[0]), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`]
    .concat(rows.slice(1).map(line)).join("\n");
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { quick: { type: "boolean" }, json: { type: "boolean" } },
  });
  const sizes = values.quick ? QUICK : FULL;
  const dir = await Deno.makeTempDir({ prefix: "kvflow-bench-" });
  let files = 0;
  const file = (name: string) => `${dir}/${name}-${files++}.kv`;
  const log = (s: string) => console.error(`bench: ${s}`);
  // Ctrl-C: drop the temp dir at once (Linux lets open files be unlinked).
  const onInterrupt = () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } finally {
      Deno.exit(130);
    }
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    log(`temp dir ${dir}${values.quick ? " (quick)" : ""}`);

    // 1 and 2, interleaved so that each pipeline run has floors measured next to it.
    const warm = chain("warm", 100);
    const seq = chain("seq", sizes.seqSteps);
    const floors: Floor[] = [];
    const shaped: Floor[] = [];
    const seqRuns: SequentialRun[] = [];
    let counted: PerStep;
    const marks: number[] = [];
    const engine = await engineAt(file("sequential"), [warm, seq], {
      onEvent: (e) => {
        if (e.type === "task" && e.status === "succeeded") marks.push(performance.now());
      },
    });
    try {
      const w = await engine.store.createRun(warm);
      if ((await engine.runToEnd(w.id)).status !== "succeeded") throw new Error("warm-up failed");
      for (let r = 0; r < sizes.seqRepeats; r++) {
        floors.push(
          await withTimeout(commitFloor(engine.kv, sizes.floorCommits, "floor"), "floor"),
        );
        shaped.push(
          await withTimeout(commitFloor(engine.kv, sizes.floorCommits, "driver"), "shaped"),
        );
        seqRuns.push(await withTimeout(sequentialRun(engine, seq, marks), "sequential"));
        log(
          `pair ${r + 1}: floor p50 ${fmt(floors[r].p50, 3)} mean ${fmt(floors[r].mean, 3)} ms; ` +
            `driver-shaped p50 ${fmt(shaped[r].p50, 3)} mean ${fmt(shaped[r].mean, 3)} ms; ` +
            `pipeline p50 ${fmt(seqRuns[r].p50, 3)} mean ${
              fmt(seqRuns[r].ms / sizes.seqSteps, 3)
            } ms/step`,
        );
      }
      // 5. What one sequential step costs in KV operations, on the same handle.
      counted = await withTimeout(perStep(engine.kv, sizes.countSteps), "counted");
      log(`counted: ${JSON.stringify(counted.counts)}`);
    } finally {
      await closeEngine(engine);
    }
    const seqMs = seqRuns.map((x) => x.ms);
    const ratios = seqMs.map((ms, r) => ms / sizes.seqSteps / floors[r].mean);
    const ratiosP50 = seqRuns.map((x, r) => x.p50 / floors[r].p50);
    const ratiosShaped = seqRuns.map((x, r) => x.p50 / shaped[r].p50);

    // 3 and 4, each next to a measure of raw commit throughput with many commits in flight.
    const conc: Concurrent[] = [];
    const tput: number[] = [];
    for (let r = 0; r < sizes.concRepeats; r++) {
      conc.push(
        await withTimeout(
          concurrent(file("concurrent"), sizes.concurrentRuns, sizes.floorCommits),
          "conc",
        ),
      );
      tput.push(conc[r].rawCommitsPerSecond);
      log(
        `concurrent ${r + 1}: ${fmt(conc[r].driveMs, 0)} ms for ${conc[r].runs} runs ` +
          `(${fmt(conc[r].stepsPerSecond, 0)} steps/s; raw commits ${fmt(tput[r], 0)}/s; ` +
          `${conc[r].batches} commits grouped into ${conc[r].kvCommits} KV commits)`,
      );
    }
    const mid = (xs: number[]) => median(xs);
    const floorMean = mid(floors.map((f) => f.mean));
    const floorP50 = mid(floors.map((f) => f.p50));
    const msPerStep = mid(seqMs) / sizes.seqSteps;
    const concMid = [...conc].sort((a, b) => a.stepsPerSecond - b.stepsPerSecond)[
      Math.floor((conc.length - 1) / 2)
    ];
    const stepsPerCommit = conc.map((c, r) => c.stepsPerSecond / tput[r]);
    const c = counted.counts;
    const per = (x: number) => fmt(x / counted.steps, 3);
    const rows = [
      ["benchmark", "figure", "target", "ratio"],
      [
        `KV commit floor: check+set+set, sequential (median of ${floors.length})`,
        `p50 ${fmt(floorP50, 3)} ms, mean ${fmt(floorMean, 3)} ms (${
          fmt(1000 / floorMean, 0)
        } commits/s)`,
        "-",
        "1.00 (floor)",
      ],
      [
        "driver-shaped commit: check+3 sets, sequential",
        `p50 ${fmt(mid(shaped.map((f) => f.p50)), 3)} ms, mean ${
          fmt(mid(shaped.map((f) => f.mean)), 3)
        } ms`,
        "-",
        `${fmt(mid(shaped.map((f, r) => f.p50 / floors[r].p50)))}x p50, ${
          fmt(mid(shaped.map((f, r) => f.mean / floors[r].mean)))
        }x mean`,
      ],
      [
        `sequential ${sizes.seqSteps}-step pipeline: total/steps (median of ${seqMs.length})`,
        `${fmt(msPerStep, 3)} ms/step (range ${fmt(Math.min(...seqMs) / sizes.seqSteps, 3)}-${
          fmt(Math.max(...seqMs) / sizes.seqSteps, 3)
        }); p50 step ${fmt(mid(seqRuns.map((x) => x.p50)), 3)} ms`,
        "<= 0.7 ms/step; stretch <= 1.3x floor",
        `${fmt(mid(ratios))}x mean/mean, ${fmt(mid(ratiosP50))}x p50/p50 (${
          fmt(mid(ratiosShaped))
        }x driver-shaped p50)`,
      ],
      [
        `KV ops per sequential step (${counted.steps}-step run, counted)`,
        `${per(c.commit)} commits, ${per(c.get + c.getMany + c.list)} reads, ${
          per(c.set + c.delete)
        } writes, ${per(c.check)} checks`,
        "1 commit",
        "-",
      ],
      [
        "time per sequential step outside commits",
        `${fmt(counted.outsideCommitMsPerStep, 3)} ms (in commits ${
          fmt(counted.commitMsPerStep, 3)
        } ms)`,
        "-",
        `${fmt(counted.outsideCommitMsPerStep / floorMean)}x floor mean`,
      ],
      [
        `KV commit throughput, 64 in flight (median of ${tput.length})`,
        `${fmt(mid(tput), 0)} commits/s`,
        "-",
        "-",
      ],
      [
        `${sizes.concurrentRuns} concurrent 5-step DAG runs (median of ${conc.length})`,
        `${fmt(concMid.stepsPerSecond, 0)} steps/s, ${fmt(concMid.runsPerSecond, 0)} runs/s; ` +
        `${concMid.batches} commits shared ${concMid.kvCommits} KV commits (group commit)`,
        ">= 2,000 steps/s",
        `${fmt(mid(stepsPerCommit))} steps per raw commit/s`,
      ],
      [
        "RSS after the concurrent runs (max)",
        `${fmt(Math.max(...conc.map((x) => x.rssMiB)), 0)} MiB (heap used ${
          fmt(Math.max(...conc.map((x) => x.heapUsedMiB)), 0)
        } MiB)`,
        "-",
        "-",
      ],
    ];
    console.log(table(rows));
    if (values.json) {
      console.log(
        JSON.stringify(
          { sizes, floors, shaped, seqRuns, counted, tput, conc },
          null,
          2,
        ),
      );
    }
    return 0;
  } catch (error) {
    console.error(`bench failed: ${error instanceof Error ? error.stack : error}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
    for (const engine of openEngines) await engine.close(0).catch(() => {});
    for (const kv of openKvs) {
      try {
        kv.close();
      } catch { /* already closed */ }
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  Deno.exit(await main());
}
