/**
 * Several worker processes on one KV file: `deno task bench:workers` (or `deno run -A
 * bench/workers.ts [--quick] [--json]`).
 *
 * 1. Throughput with 1, 2 and 4 `worker` processes: runs of a 5-step diamond are created
 *    up front (without queue hints, as another process's hint would reach a worker only at
 *    its 60 s queue poll), then the workers start with `KVFLOW_POLL_MS=50` and find them
 *    through the due-index. Figure: steps / (last run's end − first run's start), from the
 *    records in KV, so the bench's own polling for completion is not in the figure.
 * 2. Tick to first step: one `worker` process with a pipeline scheduled every second;
 *    for each tick, the time from the tick to the start of its run's first attempt (from
 *    the attempt record), with the default poll (1 s) and with `KVFLOW_POLL_MS=100`;
 *    a few ticks from each of several worker starts at random moments.
 *
 * The same file is the workers' entrypoint (`bench/workers.ts worker`): the CLI with the
 * two benchmark pipelines registered, and the heartbeat cron of `main.ts`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { heartbeat, main as cli } from "../lib/cli/cli.ts";
import { type Pipeline, pipeline, step } from "../lib/mod.ts";
import { diamond, waitingDiamond } from "./pipelines.ts";
import { allRuns, withStore } from "./_util.ts";

const SCHEDULED = pipeline("bench-tick", {
  schedule: { cron: "* * * * * *", timezone: "UTC", overlap: "allow" },
  steps: [step("first", (_inputs, ctx) => ctx.run.tick)],
}) as Pipeline<unknown>;
const DIAMOND = diamond("bench-diamond");
const WAITING = waitingDiamond("bench-waiting", 25);
const REGISTRY = [DIAMOND, WAITING, SCHEDULED];

/** Sizes of one bench run. */
interface Sizes {
  /** Runs per throughput measurement. */
  runs: number;
  /** Repeats per worker count. */
  repeats: number;
  /** Ticks measured per worker start. */
  ticks: number;
  /** Worker starts per poll setting. */
  starts: number;
}

const FULL: Sizes = { runs: 1000, repeats: 3, ticks: 5, starts: 4 };
const QUICK: Sizes = { runs: 300, repeats: 1, ticks: 3, starts: 2 };
const SELF = fileURLToPath(import.meta.url);

/** A throughput measurement. */
interface Throughput {
  pipeline: string;
  workers: number;
  runs: number;
  seconds: number;
  stepsPerSecond: number;
  /** Lease takeovers among the runs: 0 unless a worker stalled past its lease. */
  takeovers: number;
}

/** Tick-to-first-step latency of one poll setting, ms. */
interface TickLatency {
  pollMs: number | "default (1000)";
  ticks: number;
  median: number;
  p95: number;
  max: number;
}

function spawnWorkers(kvPath: string, count: number, env: Record<string, string>) {
  return Array.from({ length: count }, () =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SELF, "worker"],
      env: { KVFLOW_KV_PATH: kvPath, NO_COLOR: "1", ...env },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn());
}

async function stop(children: Deno.ChildProcess[]): Promise<void> {
  for (const child of children) {
    try {
      child.kill("SIGTERM");
    } catch { /* already exited */ }
  }
  for (const child of children) {
    const [status, errText] = await Promise.all([
      child.status,
      new Response(child.stderr).text(),
    ]);
    if (status.code !== 0) throw new Error(`worker exited ${status.code}: ${errText}`);
  }
}

async function throughput(
  dir: string,
  workers: number,
  runs: number,
  target: Pipeline<unknown>,
  env: Record<string, string>,
): Promise<Throughput> {
  const kvPath = `${dir}/tput-${workers}-${crypto.randomUUID().slice(0, 6)}.kv`;
  await withStore(kvPath, async (store) => {
    for (let i = 0; i < runs; i += 16) {
      const batch = Math.min(16, runs - i);
      await Promise.all(Array.from({ length: batch }, () => store.createRun(target)));
    }
  });
  const children = spawnWorkers(kvPath, workers, { KVFLOW_POLL_MS: "50", ...env });
  try {
    const deadline = Date.now() + 120_000;
    while (true) {
      const done = await withStore(kvPath, async (store) => {
        const page = await store.listRuns({ status: "succeeded", limit: runs });
        return page.runs.length;
      });
      if (done === runs) break;
      if (Date.now() > deadline) throw new Error(`only ${done} of ${runs} runs finished`);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  } finally {
    await stop(children);
  }
  const records = await withStore(kvPath, (store) => allRuns(store, target.name));
  const start = Math.min(...records.map((r) => r.startedAt!));
  const end = Math.max(...records.map((r) => r.endedAt!));
  const seconds = (end - start) / 1000;
  return {
    pipeline: target.name,
    workers,
    runs,
    seconds,
    stepsPerSecond: (runs * target.steps.length) / seconds,
    takeovers: records.reduce((n, r) => n + r.takeovers, 0),
  };
}

/**
 * Ticks measured in `starts` worker lifetimes, each started at a random moment: a worker's
 * sweeps keep their phase against the ticks, so consecutive ticks alone would sample one
 * phase.
 */
async function tickLatency(
  dir: string,
  pollMs: number | null,
  ticks: number,
  starts: number,
): Promise<TickLatency> {
  const samples: number[] = [];
  for (let s = 0; s < starts; s++) {
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 1000));
    const kvPath = `${dir}/tick-${pollMs ?? "default"}-${s}.kv`;
    const env: Record<string, string> = pollMs === null ? {} : { KVFLOW_POLL_MS: `${pollMs}` };
    const children = spawnWorkers(kvPath, 1, env);
    const since = Date.now();
    let mine: number[] = [];
    try {
      const deadline = Date.now() + 60_000;
      while (mine.length < ticks) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        mine = await withStore(kvPath, async (store) => {
          const out: number[] = [];
          for (const run of await allRuns(store, SCHEDULED.name)) {
            // the first ticks can be from before the worker was up: leave them out
            if (run.status !== "succeeded" || run.tick! < since + 2000) continue;
            const [first] = await store.getAttempts(run.id);
            out.push(first.startedAt - run.tick!);
          }
          return out;
        });
        if (Date.now() > deadline) throw new Error(`only ${mine.length} ticks ran`);
      }
    } finally {
      await stop(children);
    }
    samples.push(...mine.slice(0, ticks));
  }
  const sorted = samples.sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  return {
    pollMs: pollMs ?? "default (1000)",
    ticks: sorted.length,
    median: at(0.5),
    p95: at(0.95),
    max: sorted[sorted.length - 1],
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function bench(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { quick: { type: "boolean" }, json: { type: "boolean" } },
  });
  const sizes = values.quick ? QUICK : FULL;
  const dir = await Deno.makeTempDir({ prefix: "kvflow-bench-workers-" });
  try {
    const tput: Throughput[] = [];
    const kinds: { target: Pipeline<unknown>; runs: number; env: Record<string, string> }[] = [
      {
        target: DIAMOND,
        runs: sizes.runs,
        env: { KVFLOW_MAX_RUNS: "64", KVFLOW_MAX_STEPS: "256" },
      },
      { target: WAITING, runs: Math.round(sizes.runs * 0.6), env: {} },
    ];
    for (let r = 0; r < sizes.repeats; r++) {
      for (const { target, runs, env } of kinds) {
        for (const workers of [1, 2, 4]) {
          tput.push(await throughput(dir, workers, runs, target, env));
        }
      }
    }
    const latency = [
      await tickLatency(dir, null, sizes.ticks, sizes.starts),
      await tickLatency(dir, 100, sizes.ticks, sizes.starts),
    ];
    const titles = [
      `${kinds[0].runs} runs of a 5-step diamond of trivial steps, KVFLOW_MAX_RUNS=64`,
      `${kinds[1].runs} runs of the diamond with steps that wait 25 ms, default KVFLOW_MAX_RUNS=16`,
    ];
    console.log(`throughput: runs created up front, KVFLOW_POLL_MS=50, median of ${sizes.repeats}`);
    console.log(
      "| runs | worker processes | steps/s (median) | each repeat, steps/s | takeovers |",
    );
    console.log("| --- | ---: | ---: | --- | ---: |");
    kinds.forEach(({ target }, k) => {
      for (const workers of [1, 2, 4]) {
        const mine = tput.filter((t) => t.workers === workers && t.pipeline === target.name);
        console.log(
          `| ${titles[k]} | ${workers} | ${
            Math.round(median(mine.map((t) => t.stepsPerSecond)))
          } | ${mine.map((t) => Math.round(t.stepsPerSecond)).join(", ")} | ${
            mine.reduce((n, t) => n + t.takeovers, 0)
          } |`,
        );
      }
    });
    console.log(
      `\ntick → first step of its run, one worker process, a schedule of every second ` +
        `(${sizes.ticks} ticks from each of ${sizes.starts} worker starts)`,
    );
    console.log("| poll | ticks | median ms | p95 ms | max ms |");
    console.log("| --- | ---: | ---: | ---: | ---: |");
    for (const l of latency) {
      console.log(`| ${l.pollMs} | ${l.ticks} | ${l.median} | ${l.p95} | ${l.max} |`);
    }
    if (values.json) console.log(JSON.stringify({ sizes, tput, latency }, null, 2));
    return 0;
  } catch (error) {
    console.error(`bench failed: ${error instanceof Error ? error.stack : error}`);
    return 1;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  if (Deno.args[0] === "worker") {
    Deno.cron("kvflow heartbeat", "* * * * *", heartbeat);
    Deno.exit(await cli(Deno.args, { pipelines: REGISTRY }));
  }
  Deno.exit(await bench());
}
