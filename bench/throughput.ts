/**
 * Concurrent runs driven by worker processes: 500 runs of a 5-step diamond are created up
 * front, then 1 or 2 `worker` processes (`bench/entry.ts worker`, the real CLI) on the same
 * KV file drive them, with group commit on and off. Next to each measurement, on the same
 * file just before: raw commit throughput with 64 commits in flight.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { commitThroughput } from "./floor.ts";
import { BENCH_DIAMOND } from "./entry.ts";
import { allRuns, fmt, log, median, sleep, withStore } from "./_util.ts";
import type { Row } from "./report.ts";

const ENTRY = fileURLToPath(new URL("./entry.ts", import.meta.url));

/** Sizes of the throughput benchmark. */
export interface ThroughputSizes {
  /** Runs per measurement. */
  runs: number;
  /** Repeats of each (workers, group commit) setting. */
  repeats: number;
  /** Commits of the raw throughput measurement. */
  floorCommits: number;
}

/** One measurement. */
export interface Throughput {
  workers: number;
  groupCommit: boolean;
  runs: number;
  /** From the first run's claim to the last run's end, from the records in KV. */
  seconds: number;
  stepsPerSecond: number;
  runsPerSecond: number;
  /** `check + set + set` commits/s with 64 in flight, on the same file just before. */
  rawCommitsPerSecond: number;
  /** Lease takeovers among the runs: 0 unless a worker stalled past its lease. */
  takeovers: number;
}

/** Starts `count` worker processes on `kvPath`. */
export function spawnWorkers(
  kvPath: string,
  count: number,
  env: Record<string, string>,
): Deno.ChildProcess[] {
  return Array.from({ length: count }, () =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", ENTRY, "worker"],
      env: { KVFLOW_KV_PATH: kvPath, NO_COLOR: "1", ...env },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn());
}

/** Stops worker processes with SIGTERM and checks that they exit cleanly. */
export async function stopWorkers(children: Deno.ChildProcess[]): Promise<void> {
  for (const child of children) {
    try {
      child.kill("SIGTERM");
    } catch { /* already exited */ }
  }
  const problems: string[] = [];
  for (const child of children) {
    const [status, errText] = await Promise.all([
      child.status,
      new Response(child.stderr).text(),
    ]);
    if (status.code !== 0) problems.push(`worker exited ${status.code}: ${errText}`);
  }
  if (problems.length) throw new Error(problems.join("\n"));
}

async function measure(
  dir: string,
  workers: number,
  groupCommit: boolean,
  sizes: ThroughputSizes,
): Promise<Throughput> {
  const { runs } = sizes;
  const kvPath = `${dir}/tput-${workers}-${groupCommit ? "on" : "off"}-${
    crypto.randomUUID().slice(0, 6)
  }.kv`;
  // Created without queue hints: another process's hint reaches a worker only at its 60 s
  // queue poll; the workers find the runs through the due-index.
  const rawCommitsPerSecond = await withStore(kvPath, async (store) => {
    const raw = await commitThroughput(store.kv, sizes.floorCommits, 64);
    for (let i = 0; i < runs; i += 16) {
      const batch = Math.min(16, runs - i);
      await Promise.all(Array.from({ length: batch }, () => store.createRun(BENCH_DIAMOND)));
    }
    return raw;
  });
  const children = spawnWorkers(kvPath, workers, {
    KVFLOW_POLL_MS: "50",
    KVFLOW_MAX_RUNS: `${runs}`,
    KVFLOW_MAX_STEPS: `${2 * runs}`,
    KVFLOW_GROUP_COMMIT: groupCommit ? "on" : "off",
  });
  try {
    await allSucceeded(kvPath, runs);
  } finally {
    await stopWorkers(children);
  }
  const records = await withStore(kvPath, (store) => allRuns(store, BENCH_DIAMOND.name));
  const start = Math.min(...records.map((r) => r.startedAt!));
  const end = Math.max(...records.map((r) => r.endedAt!));
  const seconds = (end - start) / 1000;
  return {
    workers,
    groupCommit,
    runs,
    seconds,
    stepsPerSecond: (runs * BENCH_DIAMOND.steps.length) / seconds,
    runsPerSecond: runs / seconds,
    rawCommitsPerSecond,
    takeovers: records.reduce((n, r) => n + r.takeovers, 0),
  };
}

/** Every setting, repeats interleaved so that drift of the disk hits each alike. */
export async function throughput(
  dir: string,
  sizes: ThroughputSizes,
  signal?: AbortSignal,
): Promise<Throughput[]> {
  const out: Throughput[] = [];
  for (let r = 0; r < sizes.repeats; r++) {
    for (const groupCommit of [true, false]) {
      for (const workers of [1, 2]) {
        signal?.throwIfAborted();
        const t = await measure(dir, workers, groupCommit, sizes);
        out.push(t);
        log(
          `throughput ${r + 1}: ${workers} worker(s), group commit ${groupCommit ? "on" : "off"}: ${
            fmt(t.stepsPerSecond, 0)
          } steps/s (raw ${fmt(t.rawCommitsPerSecond, 0)} commits/s)`,
        );
      }
    }
  }
  return out;
}

/** Table rows: one per (group commit, workers). */
export function throughputRows(all: Throughput[]): Row[] {
  const rows: Row[] = [];
  for (const groupCommit of [true, false]) {
    for (const workers of [1, 2]) {
      const mine = all.filter((t) => t.workers === workers && t.groupCommit === groupCommit);
      const steps = median(mine.map((t) => t.stepsPerSecond));
      const mid = mine.find((t) => t.stepsPerSecond === steps)!;
      const ratio = median(mine.map((t) => t.stepsPerSecond / t.rawCommitsPerSecond));
      const headline = workers === 1 && groupCommit;
      const name = `${mid.runs} concurrent 5-step runs, ${workers} worker process${
        workers > 1 ? "es" : ""
      }, group commit ${groupCommit ? "on" : "off"} (median of ${mine.length})`;
      rows.push({
        benchmark: headline ? `**2. ${name}**` : `2. ${name}`,
        figure: `${headline ? "**" : ""}${fmt(steps, 0)} steps/s${headline ? "**" : ""}, ${
          fmt(mid.runsPerSecond, 0)
        } runs/s (${mine.map((t) => fmt(t.stepsPerSecond, 0)).join(", ")}); ${
          mine.reduce((n, t) => n + t.takeovers, 0)
        } takeovers`,
        target: headline ? ">= 2,000 steps/s" : "-",
        met: headline ? steps >= 2000 : null,
        ratio: `${fmt(ratio)} steps per raw commit (raw ${
          fmt(median(mine.map((t) => t.rawCommitsPerSecond)), 0)
        } commits/s, 64 in flight)`,
      });
    }
  }
  return rows;
}

/** Resolves once `runs` runs in the KV file at `kvPath` have succeeded (two minutes at most). */
export async function allSucceeded(kvPath: string, runs: number): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (true) {
    await sleep(100);
    const done = await withStore(kvPath, async (store) => {
      const page = await store.listRuns({ status: "succeeded", limit: runs });
      return page.runs.length;
    });
    if (done === runs) return;
    if (Date.now() > deadline) throw new Error(`only ${done} of ${runs} runs finished`);
  }
}
