/**
 * Throughput against runs in flight, in one process: `runs` runs of the 5-step diamond
 * are created up front by a child process, then one engine's worker in this process drives
 * them all at once (`maxRuns` = runs, as `throughput.ts`'s worker process does). Besides
 * steps/s: KV commits and the parts (checkpoints, claims) they held, CPU time of each
 * thread (the JavaScript thread, V8's helpers, KV's SQLite thread) and bytes written, per
 * step. `deno task bench --only inflight` measures 50, 500 and 5,000 runs in flight.
 *
 * Run alone under the V8 profiler, it profiles the throughput path (only the driving: the
 * runs are created by the child process), and `cpuprofile.ts` splits the time:
 *
 * ```sh
 * deno run -A --cpu-prof --cpu-prof-dir=/tmp/kvflow-tput bench/inflight.ts [runs] [repeats] [setting]
 * deno run -A bench/cpuprofile.ts /tmp/kvflow-tput/*.cpuprofile [runs x 5 x repeats]
 * ```
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import type { Pipeline } from "../lib/mod.ts";
import { diamond } from "./pipelines.ts";
import {
  KEYED_DIAMOND,
  LIMIT_KEYS,
  ONE_STEP_FREE_DIAMOND,
  ONE_STEP_LIMITED_DIAMOND,
  PARAMS_DIAMOND,
  STEP_LIMITED_DIAMOND,
} from "./flow_pipelines.ts";
import { fmt, log, median, openDriving, withStore } from "./_util.ts";
import type { Row } from "./report.ts";

/** CPU ms (user, system) each thread of this process has used, by thread name (Linux). */
export async function threadCpu(): Promise<Map<string, { user: number; system: number }>> {
  const out = new Map<string, { user: number; system: number }>();
  const tick = 10; // ms a clock tick (USER_HZ = 100 on Linux)
  for await (const task of Deno.readDir("/proc/self/task")) {
    let stat: string;
    try {
      stat = await Deno.readTextFile(`/proc/self/task/${task.name}/stat`);
    } catch {
      continue; // the thread ended meanwhile
    }
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const sum = out.get(name) ?? { user: 0, system: 0 };
    sum.user += Number(fields[11]) * tick;
    sum.system += Number(fields[12]) * tick;
    out.set(name, sum);
  }
  return out;
}

/** Bytes this process has written: `wchar` (write calls), `write_bytes` (to the disk). */
export async function ioBytes(): Promise<{ written: number; toDisk: number }> {
  const text = await Deno.readTextFile("/proc/self/io");
  const field = (name: string) => Number(text.match(new RegExp(`^${name}: (\\d+)`, "m"))?.[1] ?? 0);
  return { written: field("wchar"), toDisk: field("write_bytes") };
}

/** What one measurement found. */
export interface InProcessThroughput {
  stepsPerSecond: number;
  /** KV commits of the group committer, and the parts (checkpoints, claims) they held. */
  commits: number;
  batches: number;
  /** CPU ms per thread name while the runs were driven. */
  cpu: Map<string, { user: number; system: number }>;
  seconds: number;
  /** Bytes written by write calls, and to the disk, while the runs were driven. */
  io: { written: number; toDisk: number };
}

/** Sizes of the in-flight benchmark. */
export interface InflightSizes {
  /** Runs in flight of each measurement. */
  runs: number[];
  /** Repeats of each. */
  repeats: number;
}

/** Every size, repeats interleaved so that drift hits each alike. */
export async function inflight(
  dir: string,
  sizes: InflightSizes,
  signal?: AbortSignal,
): Promise<(InProcessThroughput & { runs: number })[]> {
  const out: (InProcessThroughput & { runs: number })[] = [];
  for (let r = 0; r < sizes.repeats; r++) {
    for (const runs of sizes.runs) {
      signal?.throwIfAborted();
      const t = await inProcessThroughput(dir, runs);
      out.push({ ...t, runs });
      log(`inflight ${r + 1}: ${describe(runs, t)}`);
    }
  }
  return out;
}

/** Table rows: one per count of runs in flight, the median of its repeats. */
export function inflightRows(all: (InProcessThroughput & { runs: number })[]): Row[] {
  const counts = [...new Set(all.map((t) => t.runs))];
  return counts.map((runs) => {
    const mine = all.filter((t) => t.runs === runs);
    const steps = median(mine.map((t) => t.stepsPerSecond));
    const mid = mine.find((t) => t.stepsPerSecond === steps)!;
    const perStep = (ms: number) => fmt((1000 * ms) / (runs * 5), 0);
    const cpu = [...mid.cpu].map(([name, c]) => `${name} ${perStep(c.user + c.system)}`);
    return {
      benchmark: `2b. ${
        fmt(runs, 0)
      } concurrent 5-step runs in one process (median of ${mine.length})`,
      figure: `${fmt(steps, 0)} steps/s (${
        mine.map((t) => fmt(t.stepsPerSecond, 0)).join(", ")
      }); CPU µs a step: ${cpu.join(", ")}; ${
        fmt(mid.io.written / (runs * 5) / 1024, 1)
      } KiB written a step`,
      target: runs === 500 ? ">= 10,000 steps/s" : "-",
      met: runs === 500 ? steps >= 10_000 : null,
      ratio: `${fmt(mid.batches / mid.commits, 1)} parts a KV commit, ${
        fmt((runs * 5) / mid.commits, 1)
      } steps a commit`,
    };
  });
}

function describe(runs: number, t: InProcessThroughput): string {
  const steps = runs * 5;
  const threads = [...t.cpu].map(([name, c]) =>
    `${name} ${((1000 * (c.user + c.system)) / steps).toFixed(0)}`
  );
  return `${runs} runs: ${
    t.stepsPerSecond.toFixed(0)
  } steps/s, ${t.commits} KV commits for ${t.batches} parts (${
    (t.batches / t.commits).toFixed(1)
  } a commit); CPU µs a step: ${threads.join(", ")}; written ${
    (t.io.written / steps / 1024).toFixed(1)
  } KiB a step; wall ${(t.seconds * 1000).toFixed(0)} ms`;
}

/**
 * The diamonds it can drive, as in the flow benchmark: plain (`free`), under a never-reached
 * run limit per key (`keyed`), with every step under a never-reached step limit (`step`),
 * with one step under a never-reached step limit per key (`one`), and the twins of `keyed`
 * and `one` without their limit (`params`, `one-free`); the limited ones to see where a
 * limit's cost goes.
 */
const SETTINGS: Record<string, () => Pipeline<unknown>> = {
  free: () => diamond("tput-profile"),
  params: () => PARAMS_DIAMOND,
  keyed: () => KEYED_DIAMOND,
  step: () => STEP_LIMITED_DIAMOND,
  "one-free": () => ONE_STEP_FREE_DIAMOND,
  one: () => ONE_STEP_LIMITED_DIAMOND,
};

/** Settings whose runs take a key param. */
const KEYED = new Set(["params", "keyed", "one-free", "one"]);

function pipelineOf(setting: string): Pipeline<unknown> {
  const make = SETTINGS[setting];
  if (!make) throw new Error(`unknown setting '${setting}' (${Object.keys(SETTINGS)})`);
  return make();
}

/** One measurement: `runs` diamonds of a setting driven at once by one in-process worker. */
export async function inProcessThroughput(
  dir: string,
  runs: number,
  setting = "free",
): Promise<InProcessThroughput> {
  const pipe = pipelineOf(setting);
  const path = `${dir}/tput-${crypto.randomUUID().slice(0, 6)}.kv`;
  // created by another process, so that a profile of this one shows only the driving
  const create = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", fileURLToPath(import.meta.url), "create", path, `${runs}`, setting],
    stdout: "null",
  });
  if (!(await create.output()).success) throw new Error("creating the runs failed");
  const { engine, allSucceeded } = await openDriving(pipe, runs, { path });
  try {
    const before = await threadCpu();
    const io0 = await ioBytes();
    const t0 = performance.now();
    engine.start();
    await allSucceeded;
    const seconds = (performance.now() - t0) / 1000;
    const after = await threadCpu();
    const io1 = await ioBytes();
    const cpu = new Map<string, { user: number; system: number }>();
    for (const [name, t] of after) {
      const b = before.get(name) ?? { user: 0, system: 0 };
      if (t.user + t.system > b.user + b.system) {
        cpu.set(name, { user: t.user - b.user, system: t.system - b.system });
      }
    }
    const { commits, batches } = engine.store.committer.stats;
    return {
      stepsPerSecond: (runs * pipe.steps.length) / seconds,
      commits,
      batches,
      cpu,
      seconds,
      io: { written: io1.written - io0.written, toDisk: io1.toDisk - io0.toDisk },
    };
  } finally {
    await engine.close();
  }
}

async function createRuns(path: string, runs: number, setting: string): Promise<void> {
  const pipe = pipelineOf(setting);
  // as many runs per key as the flow benchmark's 500 over its keys, so that a limit never
  // reached there is not reached here either
  const keys = Math.max(LIMIT_KEYS, Math.ceil(runs / (500 / LIMIT_KEYS)));
  await withStore(path, async (store) => {
    for (let i = 0; i < runs; i += 64) {
      const batch = Math.min(64, runs - i);
      await Promise.all(Array.from({ length: batch }, (_, j) =>
        store.createRun(
          pipe,
          KEYED.has(setting) ? { params: { key: `k${(i + j) % keys}` } } : {},
        )));
    }
  });
}

if (import.meta.main && Deno.args[0] === "create") {
  await createRuns(Deno.args[1], Number(Deno.args[2]), Deno.args[3] ?? "free");
} else if (import.meta.main) {
  const runs = Number(Deno.args[0] ?? 500);
  const repeats = Number(Deno.args[1] ?? 3);
  // alternated, so that drift hits each alike
  const settings = (Deno.args[2] ?? "free").split(",");
  const dir = await Deno.makeTempDir({ prefix: "kvflow-tput-" });
  try {
    for (let r = 0; r < repeats; r++) {
      for (const setting of settings) {
        const t = await inProcessThroughput(dir, runs, setting);
        console.error(`${setting}: ${describe(runs, t)}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
