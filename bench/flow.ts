/**
 * Flow control (issue 12), `--only limit`:
 *
 * - Throughput: 500 runs of the 5-step diamond, created up front, driven by one worker
 *   process (`bench/flow_entry.ts worker`), without a limit and under limits: a run limit
 *   per key that is never reached, one that is ({@linkcode LIMIT_MAX} per key over
 *   {@linkcode LIMIT_KEYS} keys), a step limit per key on one step, and a step limit on
 *   every step; each as the median, over rounds, of its ratio to its twin without the
 *   limit measured in the same round (the same params and step outputs, so that the
 *   ratio is what the limit costs and nothing else).
 * - Slot latency: a run holding the only slot of its key ends; how long until the queued
 *   run behind it is claimed (its `startedAt` less the holder's `endedAt`, both wall time
 *   from the records). Same process: one engine runs both. Another process: a worker
 *   process runs the holder, this process's engine (sweep every 100 ms, no queue hints
 *   between processes) the queued run.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { openEngine } from "../lib/mod.ts";
import type { RunRecord } from "../lib/model/records.ts";
import { allSucceeded, stopWorkers } from "./throughput.ts";
import { BENCH_DIAMOND } from "./entry.ts";
import {
  KEYED_DIAMOND,
  KEYED_MAX,
  LIMIT_KEYS,
  LIMIT_MAX,
  LIMITED_DIAMOND,
  ONE_STEP_FREE_DIAMOND,
  ONE_STEP_LIMITED_DIAMOND,
  ONE_STEP_MAX,
  PARAMS_DIAMOND,
  SLOT_FAR,
  SLOT_NEAR,
  STEP_LIMITED_DIAMOND,
  STEP_MAX,
} from "./flow_pipelines.ts";
import { allRuns, fmt, type Latency, latency, log, median, sleep, withStore } from "./_util.ts";
import type { Row } from "./report.ts";

const ENTRY = fileURLToPath(new URL("./flow_entry.ts", import.meta.url));

/** Sizes of the flow-control benchmark. */
export interface FlowSizes {
  /** Runs of each throughput measurement. */
  runs: number;
  /** Repeats of each throughput setting. */
  repeats: number;
  /** Slot hand-overs measured within one process. */
  local: number;
  /** Slot hand-overs measured across processes. */
  cross: number;
}

/** What the flow-control benchmark measured. */
export interface FlowResult {
  /** Runs of each throughput measurement. */
  runs: number;
  /** Steps per second per setting, one per repeat. */
  steps: Record<Setting, number[]>;
  /** Same process: holder's end → queued run's claim, ms. */
  local: Latency;
  /** Another process ran the holder, ms. */
  cross: Latency;
  /** This process's sweep interval in the cross-process measurement. */
  pollMs: number;
}

function spawnWorker(kvPath: string, runs: number): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ENTRY, "worker"],
    env: {
      KVFLOW_KV_PATH: kvPath,
      NO_COLOR: "1",
      KVFLOW_POLL_MS: "50",
      KVFLOW_MAX_RUNS: `${runs}`,
      KVFLOW_MAX_STEPS: `${2 * runs}`,
    },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

/**
 * The throughput settings, each a diamond: plain, under a kind of limit, or a limited
 * one's twin without its limit (the same params and step outputs: `params` for `keyed`,
 * `one-free` for `one`; `free` is the twin of `step`).
 */
const SETTINGS = {
  free: BENCH_DIAMOND,
  params: PARAMS_DIAMOND,
  keyed: KEYED_DIAMOND,
  step: STEP_LIMITED_DIAMOND,
  "one-free": ONE_STEP_FREE_DIAMOND,
  one: ONE_STEP_LIMITED_DIAMOND,
  binding: LIMITED_DIAMOND,
} as const;

/** A throughput setting. */
export type Setting = keyof typeof SETTINGS;

/** Each limited setting's twin: the same diamond without the limit. */
const TWIN: Partial<Record<Setting, Setting>> = {
  keyed: "params",
  one: "one-free",
  step: "free",
  binding: "params",
};

/** Settings whose runs take a key param. */
const KEYED_SETTINGS: ReadonlySet<Setting> = new Set([
  "params",
  "keyed",
  "one-free",
  "one",
  "binding",
]);

/** Steps per second of `runs` diamonds in one worker process, in one setting. */
async function measure(dir: string, runs: number, setting: Setting): Promise<number> {
  const kvPath = `${dir}/flow-${setting}-${crypto.randomUUID().slice(0, 6)}.kv`;
  const p = SETTINGS[setting];
  const keyed = KEYED_SETTINGS.has(setting);
  await withStore(kvPath, async (store) => {
    for (let i = 0; i < runs; i += 16) {
      await Promise.all(
        Array.from(
          { length: Math.min(16, runs - i) },
          (_, j) =>
            store.createRun(p, keyed ? { params: { key: `k${(i + j) % LIMIT_KEYS}` } } : {}),
        ),
      );
    }
  });
  const child = spawnWorker(kvPath, runs);
  try {
    await allSucceeded(kvPath, runs);
  } finally {
    await stopWorkers([child]);
  }
  const records = await withStore(kvPath, (store) => allRuns(store, p.name));
  const seconds = (Math.max(...records.map((r) => r.endedAt!)) -
    Math.min(...records.map((r) => r.startedAt!))) / 1000;
  return (runs * BENCH_DIAMOND.steps.length) / seconds;
}

async function handOver(
  holder: () => Promise<RunRecord>,
  queued: () => Promise<RunRecord>,
  getRun: (id: string) => Promise<RunRecord | null>,
): Promise<number> {
  const a = await holder();
  const b = await queued();
  const deadline = Date.now() + 30_000;
  while (true) {
    const [ra, rb] = await Promise.all([getRun(a.id), getRun(b.id)]);
    if (ra?.status === "succeeded" && rb?.status === "succeeded") {
      return rb.startedAt! - ra.endedAt!;
    }
    if (Date.now() > deadline) throw new Error(`hand-over of ${a.id} to ${b.id} timed out`);
    await sleep(20);
  }
}

/** Slot hand-overs: same process, then with the holder in another process. */
async function slotLatency(
  dir: string,
  sizes: FlowSizes,
  pollMs: number,
): Promise<{ local: number[]; cross: number[] }> {
  const kvPath = `${dir}/flow-slot.kv`;
  const local: number[] = [];
  const cross: number[] = [];
  {
    await using engine = await openEngine({ path: kvPath, pipelines: [SLOT_NEAR], pollMs });
    engine.start();
    const started = async (id: string) => {
      while ((await engine.getRun(id))?.status !== "running") await sleep(2);
    };
    for (let i = 0; i < sizes.local; i++) {
      local.push(
        await handOver(
          async () => {
            const run = await engine.trigger(SLOT_NEAR.name);
            await started(run.id);
            return run;
          },
          () => engine.trigger(SLOT_NEAR.name),
          (id) => engine.getRun(id),
        ),
      );
    }
  }
  const child = spawnWorker(kvPath, 4);
  try {
    await using engine = await openEngine({ path: kvPath, pipelines: [SLOT_NEAR], pollMs });
    engine.start();
    for (let i = 0; i < sizes.cross; i++) {
      cross.push(
        await handOver(
          async () => {
            const run = await engine.store.createRun(SLOT_FAR);
            while ((await engine.getRun(run.id))?.status !== "running") await sleep(2);
            return run;
          },
          () => engine.trigger(SLOT_NEAR.name),
          (id) => engine.getRun(id),
        ),
      );
    }
  } finally {
    await stopWorkers([child]);
  }
  return { local, cross };
}

/** Runs the flow-control benchmark in `dir`. */
export async function flowBench(
  dir: string,
  sizes: FlowSizes,
  signal?: AbortSignal,
): Promise<FlowResult> {
  const steps = Object.fromEntries(
    Object.keys(SETTINGS).map((s) => [s, [] as number[]]),
  ) as Record<Setting, number[]>;
  // KVFLOW_BENCH_LIMITS=keyed,step measures only those and their twins (to compare two
  // versions quickly)
  const only = Deno.env.get("KVFLOW_BENCH_LIMITS")?.split(",") as Setting[] | undefined;
  const wanted = only && new Set(only.flatMap((s) => [s, TWIN[s] ?? s]));
  const settings = (Object.keys(SETTINGS) as Setting[]).filter((s) => !wanted || wanted.has(s));
  // alternated, so the machine's drift falls on every setting alike
  for (let r = 0; r < sizes.repeats; r++) {
    for (const setting of settings) {
      signal?.throwIfAborted();
      const perSecond = await measure(dir, sizes.runs, setting);
      steps[setting].push(perSecond);
      log(`limit ${r + 1}: ${setting}: ${fmt(perSecond, 0)} steps/s`);
    }
  }
  const pollMs = 100;
  const { local, cross } = await slotLatency(dir, sizes, pollMs);
  return {
    runs: sizes.runs,
    steps,
    local: latency(local),
    cross: latency(cross),
    pollMs,
  };
}

/** Table rows. */
export function flowRows(r: FlowResult): Row[] {
  const ms = (l: Latency) =>
    `p50 ${fmt(l.p50, 0)} ms, p99 ${fmt(l.p99, 0)} ms, max ${fmt(l.max, 0)} ms`;
  const row = (setting: Setting, what: string, target: boolean): Row => {
    const mine = r.steps[setting];
    const twin = r.steps[TWIN[setting]!];
    const figure = median(mine);
    // each round measures the setting and its twin within seconds of each other: a round's
    // ratio is little touched by the machine's drift, and their median by a round that
    // went astray
    const ratios = mine.map((s, i) => s / twin[i]);
    const ratio = median(ratios);
    return {
      benchmark:
        `12. ${r.runs} concurrent 5-step runs, 1 worker, ${what} (median of ${mine.length})`,
      figure: `${fmt(figure, 0)} steps/s (${mine.map((s) => fmt(s, 0)).join(", ")})`,
      target: target ? "within 10 % of no limit" : "-",
      met: target ? ratio >= 0.9 : null,
      ratio: `${fmt(ratio)} of the same without the limit (median of rounds ${
        ratios.map((x) => fmt(x)).join(", ")
      }; without it ${fmt(median(twin), 0)} steps/s)`,
    };
  };
  // KVFLOW_BENCH_LIMITS may have left settings out
  const settings: [Setting, string, boolean][] = [
    ["keyed", `run limit ${KEYED_MAX} per key over ${LIMIT_KEYS} keys (never reached)`, true],
    [
      "one",
      `one step of five under a step limit of ${ONE_STEP_MAX} per key over ${LIMIT_KEYS} keys (never reached)`,
      true,
    ],
    // the worst case, not the target (a run-level and a step-level key limit): a
    // limit with no key on each of the five steps, five slots taken and freed a run; what
    // it costs is the slots' KV work (bench/README.md, "the floor under the every-step row")
    [
      "step",
      `every step under a step limit of ${STEP_MAX} (never reached; the worst case: five limited starts a run)`,
      false,
    ],
    [
      "binding",
      `run limit ${LIMIT_MAX} per key over ${LIMIT_KEYS} keys (reached: 200 run at once)`,
      false,
    ],
  ];
  const rows = settings.filter(([setting]) => r.steps[setting].length > 0)
    .map(([setting, what, target]) => row(setting, what, target));
  return [
    ...rows,
    {
      benchmark: "12. Slot freed → queued run claimed, same process",
      figure: ms(r.local),
      target: "-",
      met: null,
      ratio: `${r.local.n} hand-overs`,
    },
    {
      benchmark: `12. Slot freed in another process → queued run claimed (sweep ${r.pollMs} ms)`,
      figure: ms(r.cross),
      target: "-",
      met: null,
      ratio: `${r.cross.n} hand-overs`,
    },
  ];
}
