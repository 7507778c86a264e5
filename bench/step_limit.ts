/**
 * What a step limit costs: the throughput benchmark's shape (500 runs of the 5-step
 * diamond created up front, then `worker` processes on the same KV file drive them, group
 * commit on) without a step limit and with one. In the limited diamonds every step has a
 * limit on one key shared by all runs, so each attempt takes and frees a slot in KV: of
 * 1,000 (never reached: what taking a slot costs) and of `KVFLOW_BENCH_LIMIT_MAX`
 * (default 100: reached, runs wait for slots). Prints steps/s of each and their ratios.
 *
 * Standalone (not in `bench/run.ts`): `deno run -A bench/step_limit.ts`. `KVFLOW_BENCH_RUNS`
 * sets the runs (default 500), `KVFLOW_BENCH_WORKERS` the worker processes (default 1),
 * `KVFLOW_BENCH_REPEATS` the repeats (default 1).
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { main } from "../lib/cli/cli.ts";
import { type Pipeline, pipeline, step } from "../lib/mod.ts";
import { diamond } from "./pipelines.ts";
import { allRuns, fmt, median, sleep, withStore } from "./_util.ts";
import { stopWorkers } from "./throughput.ts";

const SELF = fileURLToPath(import.meta.url);
const MAX = Number(Deno.env.get("KVFLOW_BENCH_LIMIT_MAX") ?? 100);

/** The diamond of `bench/pipelines.ts`, every step under one shared limit. */
function limitedDiamond(name: string, max: number): Pipeline<unknown> {
  const limit = { max, scope: "bench" };
  const load = step("load", { limit }, () => ({ n: 1 }));
  const left = step("left", { needs: { load }, limit }, ({ load }) => load.n + 1);
  const right = step("right", { needs: { load }, limit }, ({ load }) => load.n + 2);
  const join = step("join", { needs: { left, right }, limit }, ({ left, right }) => left + right);
  const report = step("report", { needs: { join }, limit }, ({ join }) => `sum=${join}`);
  return pipeline(name, { steps: [load, left, right, join, report] }) as Pipeline<unknown>;
}

const PLAIN = diamond("bench-plain");
const UNBOUND = limitedDiamond("bench-limited-1000", 1000);
const LIMITED = limitedDiamond(`bench-limited-${MAX}`, MAX);

async function measure(dir: string, p: Pipeline<unknown>, runs: number, workers: number) {
  const kvPath = `${dir}/${p.name}-${crypto.randomUUID().slice(0, 6)}.kv`;
  await withStore(kvPath, async (store) => {
    for (let i = 0; i < runs; i += 16) {
      const batch = Math.min(16, runs - i);
      await Promise.all(Array.from({ length: batch }, () => store.createRun(p)));
    }
  });
  const children = Array.from({ length: workers }, () =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SELF, "worker"],
      env: {
        KVFLOW_KV_PATH: kvPath,
        NO_COLOR: "1",
        KVFLOW_POLL_MS: "50",
        KVFLOW_MAX_RUNS: `${runs}`,
        KVFLOW_MAX_STEPS: `${2 * runs}`,
        KVFLOW_GROUP_COMMIT: "on",
      },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn());
  try {
    const deadline = Date.now() + 300_000;
    while (true) {
      await sleep(100);
      const done = await withStore(kvPath, async (store) => {
        const page = await store.listRuns({ status: "succeeded", limit: runs });
        return page.runs.length;
      });
      if (done === runs) break;
      if (Date.now() > deadline) throw new Error(`only ${done} of ${runs} runs finished`);
    }
  } finally {
    await stopWorkers(children);
  }
  const records = await withStore(kvPath, (store) => allRuns(store, p.name));
  const start = Math.min(...records.map((r) => r.startedAt!));
  const end = Math.max(...records.map((r) => r.endedAt!));
  return (runs * p.steps.length) / ((end - start) / 1000);
}

if (import.meta.main) {
  if (Deno.args[0] === "worker") {
    Deno.exit(await main(Deno.args, { pipelines: [PLAIN, UNBOUND, LIMITED] }));
  }
  const runs = Number(Deno.env.get("KVFLOW_BENCH_RUNS") ?? 500);
  const workers = Number(Deno.env.get("KVFLOW_BENCH_WORKERS") ?? 1);
  const repeats = Number(Deno.env.get("KVFLOW_BENCH_REPEATS") ?? 1);
  const dir = await Deno.makeTempDir({ prefix: "kvflow-bench-steplimit-" });
  try {
    const plain: number[] = [];
    const unbound: number[] = [];
    const limited: number[] = [];
    for (let r = 0; r < repeats; r++) {
      plain.push(await measure(dir, PLAIN, runs, workers));
      unbound.push(await measure(dir, UNBOUND, runs, workers));
      limited.push(await measure(dir, LIMITED, runs, workers));
      console.log(
        `repeat ${r + 1}: no step limit ${fmt(plain[r], 0)} steps/s; limit 1000 ${
          fmt(unbound[r], 0)
        } steps/s; limit ${MAX} ${fmt(limited[r], 0)} steps/s`,
      );
    }
    const a = median(plain);
    const b = median(unbound);
    const c = median(limited);
    console.log(
      `${runs} runs of the 5-step diamond, ${workers} worker(s): ${
        fmt(a, 0)
      } steps/s without a step limit; with one on every step, max 1000 (never reached): ${
        fmt(b, 0)
      } steps/s, ratio ${fmt(b / a)}; max ${MAX} (reached): ${fmt(c, 0)} steps/s, ratio ${
        fmt(c / a)
      }`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
