/**
 * Many parked runs: a fresh process (`bench/entry.ts parked`, with `--expose-gc`) opens an
 * engine and starts its worker, measures itself idle, then with 10,000 and with 100,000
 * runs parked, half in an event wait (timeout one day), half in a sleep of a day: memory,
 * the time of one
 * `engine.worker.sweep()` with nothing due, the process's CPU over a few idle seconds, and
 * the time of one `send` that matches none of them or one.
 *
 * The first runs park through the engine (created 80 to a commit, claimed by the worker,
 * wait started, parked), at a rate this measures. The rest are copies of one of those
 * parked runs: every KV entry that names its run id or its correlation value, written with
 * a new id and value, its status counted and its delayed queue hint sent like the
 * engine's; parking them all through the engine would take minutes. Then a second fresh
 * process (`parked-reopen`) starts a worker on that file and measures it the same way: what
 * holding the parked runs costs a worker, without what parking them left in memory.
 *
 * @module
 */
import process from "node:process";
import { fileURLToPath } from "node:url";
import { type Engine, openEngine } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { runCount } from "../lib/kv/keys.ts";
import { AWAIT, GO_EVENT, napping } from "./pipelines.ts";
import { countOf, fmt, type Latency, latency, log, sleep, until } from "./_util.ts";
import type { Row } from "./report.ts";

const ENTRY = fileURLToPath(new URL("./entry.ts", import.meta.url));

/** Runs that sleep a day: half the parked runs sleep, half wait for an event. */
const NAP = napping(86_400_000);

/** Sizes of the parked-runs benchmark. */
export interface ParkedSizes {
  /** Runs parked through the engine: the first stage. */
  engineRuns: number;
  /** Parked runs at the second stage (the rest copied). */
  total: number;
  /** Sweeps and sends timed per stage. */
  samples: number;
  /** Seconds of idle CPU measured per stage. */
  cpuSeconds: number;
}

/** What one stage measured. */
export interface ParkedStage {
  runs: number;
  /** RSS as measured, then after a forced GC, and the V8 heap used after it, MiB. */
  rssMiB: number;
  rssAfterGcMiB: number;
  heapUsedMiB: number;
  /** V8 heap reserved, and memory outside it that V8 knows of (buffers), after the GC, MiB. */
  heapTotalMiB: number;
  externalMiB: number;
  /** One `engine.worker.sweep()` with nothing due, ms. */
  sweep: Latency;
  /** CPU (user + system) of the whole process while idle, ms per second. */
  cpuMsPerSecond: number;
  /** One `send` matching no wait, and one matching one parked run, ms. */
  sendNone: Latency;
  sendOne: Latency;
  /** Size of the KV file (with its WAL), MiB. */
  fileMiB: number;
  /** Fresh worker only: RSS once the engine is open (migrations run), and after one sweep. */
  rssOpenedMiB?: number;
  rssFirstSweepMiB?: number;
}

/** What the parked process prints. */
export interface ParkedReport {
  idle: ParkedStage;
  stages: ParkedStage[];
  /** Runs parked through the engine, and how long from their creation until all were parked. */
  engineRuns: number;
  parkSeconds: number;
  /** Runs copied, and how long that took. */
  copied: number;
  copySeconds: number;
  maxRuns: number;
  /**
   * A fresh worker process started on the file the first left (all the parked runs in it):
   * what a worker that holds them costs, without what parking them left in the first
   * process's memory.
   */
  reopened?: ParkedStage;
  /** The first such worker, which also ran the one-time migration (counting every run). */
  reopenedFirst?: ParkedStage;
}

/** Runs the parked-runs process on a fresh KV file, then a fresh worker on what it left. */
export async function parked(path: string, sizes: ParkedSizes): Promise<ParkedReport> {
  const report = await parkedChild("parked", path, sizes) as ParkedReport;
  // The first open that finds runs in a database without a schema version counts them all
  // (lib/kv/migrations.ts) and writes it: the second fresh worker shows the steady state.
  report.reopenedFirst = await parkedChild("parked-reopen", path, sizes, 2) as ParkedStage;
  report.reopened = await parkedChild("parked-reopen", path, sizes, 3) as ParkedStage;
  return report;
}

async function parkedChild(
  mode: string,
  path: string,
  sizes: ParkedSizes,
  stage = 0,
): Promise<unknown> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--v8-flags=--expose-gc",
      ENTRY,
      mode,
      path,
      JSON.stringify(sizes),
      String(stage),
    ],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`${mode} process exited ${out.code}`);
  const text = new TextDecoder().decode(out.stdout).trim();
  return JSON.parse(text.split("\n").at(-1)!);
}

async function collect(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("Run the parked process with --v8-flags=--expose-gc");
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(20);
  }
}

function fileMiB(path: string): number {
  let bytes = 0;
  for (const suffix of ["", "-wal", "-shm"]) {
    try {
      bytes += Deno.statSync(path + suffix).size;
    } catch {
      // no such file
    }
  }
  return bytes / 2 ** 20;
}

async function measure(
  engine: Engine,
  path: string,
  runs: number,
  wakeKeys: string[],
  sizes: ParkedSizes,
): Promise<ParkedStage> {
  await sleep(1500); // let the worker's last claims, parks and hints settle
  const rssMiB = Deno.memoryUsage().rss / 2 ** 20;
  await collect();
  const afterGc = Deno.memoryUsage();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(sizes.cpuSeconds * 1000);
  const c1 = process.cpuUsage(c0);
  const cpuMsPerSecond = (c1.user + c1.system) / 1000 / ((performance.now() - t0) / 1000);
  const sweeps: number[] = [];
  for (let i = 0; i < sizes.samples; i++) {
    const s0 = performance.now();
    await engine.worker.sweep();
    sweeps.push(performance.now() - s0);
    await sleep(20);
  }
  const none: number[] = [];
  for (let i = 0; i < sizes.samples; i++) {
    const s0 = performance.now();
    const r = await engine.send(GO_EVENT, { key: `nobody-${runs}-${i}` });
    none.push(performance.now() - s0);
    if (r.woke.length !== 0) throw new Error("parked: a send for nobody woke a run");
    await sleep(20);
  }
  const one: number[] = [];
  for (const key of wakeKeys) {
    const s0 = performance.now();
    const r = await engine.send(GO_EVENT, { key });
    one.push(performance.now() - s0);
    if (r.woke.length !== 1) throw new Error(`parked: ${key} woke ${r.woke.length}`);
    await sleep(20);
  }
  return {
    runs,
    rssMiB,
    rssAfterGcMiB: afterGc.rss / 2 ** 20,
    heapUsedMiB: afterGc.heapUsed / 2 ** 20,
    heapTotalMiB: afterGc.heapTotal / 2 ** 20,
    externalMiB: afterGc.external / 2 ** 20,
    sweep: latency(sweeps),
    cpuMsPerSecond,
    sendNone: latency(none),
    sendOne: latency(one),
    fileMiB: fileMiB(path),
  };
}

/**
 * Creates runs of `bench-await` with the given keys (or of the day-long sleep, keyed by
 * these names only here), 80 to a commit, with no queue hint.
 */
async function createRuns(
  store: Store,
  keys: string[],
  sleeping = false,
): Promise<Map<string, string>> {
  const ids = new Map<string, string>();
  let next = 0;
  const lane = async () => {
    while (next < keys.length) {
      const batch = keys.slice(next, next + 80);
      next += 80;
      const op = store.kv.atomic();
      for (const key of batch) {
        const run = sleeping ? store.newRun(NAP) : store.newRun(AWAIT, { params: { key } });
        store.addRunCreation(op, run);
        ids.set(key, run.id);
      }
      if (!(await op.commit()).ok) throw new Error("parked: a creation commit failed");
    }
  };
  await Promise.all([lane(), lane()]);
  return ids;
}

/** A value with every string `from` maps replaced, and the run id replaced inside strings. */
function swapped(value: unknown, from: Map<string, string>, runId: string, newId: string): unknown {
  if (typeof value === "string") {
    return from.get(value) ?? (value.includes(runId) ? value.replaceAll(runId, newId) : value);
  }
  if (Array.isArray(value)) return value.map((v) => swapped(v, from, runId, newId));
  if (
    value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype
  ) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, swapped(v, from, runId, newId)]),
    );
  }
  return value;
}

/**
 * Writes `count` copies of the parked run `runId` (correlation `key`): every entry whose key
 * names the run id or the key, with `<runId>-c<n>` and `<key>-c<n>` instead; the per-status
 * count summed; a queue hint delayed like the original's (to its due time).
 */
async function copyParked(
  engine: Engine,
  runId: string,
  key: string | null,
  count: number,
): Promise<void> {
  const kv = engine.kv as Deno.Kv;
  const template: Deno.KvEntry<unknown>[] = [];
  for await (const e of kv.list({ prefix: ["kvflow"] })) {
    if (e.key.includes(runId) || (key !== null && e.key.includes(key))) template.push(e);
  }
  const run = await engine.store.requireRun(runId);
  const perCommit = Math.floor(800 / (template.length + 1));
  const quiet = new Store(kv, { queues: true });
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const from = next;
      const to = Math.min(count, next + perCommit);
      next = to;
      const op = kv.atomic();
      for (let n = from; n < to; n++) {
        const newId = `${runId}-c${n}`;
        const map = new Map([[runId, newId]]);
        if (key !== null) map.set(key, `${key}-c${n}`);
        for (const e of template) {
          op.set(
            swapped(e.key, map, runId, newId) as Deno.KvKey,
            swapped(e.value, map, runId, newId),
          );
        }
        quiet.wake(op, newId, run.dueAt! - Date.now());
      }
      op.sum(runCount(run.pipeline, "waiting"), BigInt(to - from));
      if (!(await op.commit()).ok) throw new Error("parked: a copy commit failed");
    }
  };
  await Promise.all([lane(), lane()]);
}

/**
 * The parked-runs process (`bench/entry.ts parked <kv-path> <sizes-json>`, run with
 * `--v8-flags=--expose-gc`): prints one JSON line, a {@linkcode ParkedReport}.
 */
export async function parkedProcess(path: string, sizes: ParkedSizes): Promise<ParkedReport> {
  const maxRuns = 64;
  const engine = await openEngine({
    path,
    pipelines: [AWAIT, NAP],
    maxRuns,
    maxSteps: 2 * maxRuns,
    onAlert: () => {},
  });
  try {
    engine.start();
    const idle = await measure(engine, path, 0, [], sizes);
    const stages: ParkedStage[] = [];
    const t0 = performance.now();
    const half = Math.floor(sizes.engineRuns / 2);
    const keys = Array.from({ length: half }, (_, i) => `k${i}`);
    const creator = new Store(engine.kv, { queues: false });
    const ids = await createRuns(creator, keys);
    const naps = await createRuns(creator, keys.map((k) => `nap-${k}`), true);
    await until(
      () => waitingOf(engine),
      2 * half,
      "parked: engine runs",
      600_000,
    );
    const parkSeconds = (performance.now() - t0) / 1000;
    const wake = (stage: number) =>
      Array.from({ length: sizes.samples }, (_, i) => `k${stage * sizes.samples + i}`);
    stages.push(await measure(engine, path, sizes.engineRuns, wake(0), sizes));
    const copied = sizes.total - 2 * half;
    const last = keys.at(-1)!;
    const c0 = performance.now();
    await copyParked(engine, ids.get(last)!, last, Math.ceil(copied / 2));
    await copyParked(engine, naps.get(`nap-${last}`)!, null, Math.floor(copied / 2));
    const copySeconds = (performance.now() - c0) / 1000;
    stages.push(await measure(engine, path, await waitingOf(engine), wake(1), sizes));
    return {
      idle,
      stages,
      engineRuns: sizes.engineRuns,
      parkSeconds,
      copied,
      copySeconds,
      maxRuns,
    };
  } finally {
    await engine.close(1000);
  }
}

/** Parked runs: event waits and sleeps. */
async function waitingOf(engine: Engine): Promise<number> {
  return await countOf(engine.kv, AWAIT.name, "waiting") +
    await countOf(engine.kv, NAP.name, "waiting");
}

/**
 * The fresh worker (`bench/entry.ts parked-reopen <kv-path> <sizes-json> <stage>`, with
 * `--expose-gc`): opens an engine on the file the parked process left, starts its worker
 * and measures it like a stage; prints it as one JSON line.
 */
export async function parkedReopenProcess(
  path: string,
  sizes: ParkedSizes,
  stage: number,
): Promise<ParkedStage> {
  const engine = await openEngine({
    path,
    pipelines: [AWAIT, NAP],
    maxRuns: 64,
    maxSteps: 128,
    onAlert: () => {},
  });
  try {
    const rssOpenedMiB = Deno.memoryUsage().rss / 2 ** 20;
    await engine.worker.sweep();
    const rssFirstSweepMiB = Deno.memoryUsage().rss / 2 ** 20;
    engine.start();
    const keys = Array.from({ length: sizes.samples }, (_, i) => `k${stage * sizes.samples + i}`);
    const measured = await measure(engine, path, await waitingOf(engine), keys, sizes);
    return { ...measured, rssOpenedMiB, rssFirstSweepMiB };
  } finally {
    await engine.close(1000);
  }
}

/** Logs a summary of the report. */
export function logParked(r: ParkedReport): void {
  for (const s of [r.idle, ...r.stages, r.reopenedFirst, r.reopened]) {
    if (!s) continue;
    log(
      `parked: ${s.runs} runs: RSS ${fmt(s.rssMiB, 0)} MiB (${
        fmt(s.rssAfterGcMiB, 0)
      } after GC, heap ${fmt(s.heapUsedMiB, 1)}), sweep p50 ${fmt(s.sweep.p50)} ms, idle CPU ${
        fmt(s.cpuMsPerSecond, 1)
      } ms/s, send p50 ${fmt(s.sendNone.p50)} / ${s.sendOne.n ? fmt(s.sendOne.p50) : "-"} ms`,
    );
  }
}

/** Table rows of the parked-runs benchmark. */
export function parkedRows(r: ParkedReport): Row[] {
  const idle = r.idle;
  return r.stages.map((s, i): Row => ({
    benchmark: `${i === 0 ? "**" : ""}10. ${s.runs.toLocaleString("en-US")} parked runs${
      i === 0 ? "**" : ""
    } waiting for events, one worker process (${
      i === 0
        ? `parked through the engine: ${
          fmt(r.engineRuns / r.parkSeconds, 0)
        } runs/s, maxRuns ${r.maxRuns}`
        : `${r.copied.toLocaleString("en-US")} of them copies of a parked run`
    }; KV file ${fmt(s.fileMiB, 0)} MiB)`,
    figure:
      `RSS ${fmt(s.rssMiB, 0)} MiB (idle engine ${fmt(idle.rssMiB, 0)}), ${
        fmt(s.rssAfterGcMiB, 0)
      } after GC, V8 heap used ${fmt(s.heapUsedMiB, 1)} MiB (idle ${fmt(idle.heapUsedMiB, 1)}) of ${
        fmt(s.heapTotalMiB, 0)
      } reserved; ` +
      `**one sweep p50 ${fmt(s.sweep.p50, 2)} ms**, max ${fmt(s.sweep.max, 2)} (idle ${
        fmt(idle.sweep.p50, 2)
      }); idle CPU ${fmt(s.cpuMsPerSecond, 1)} ms/s (idle engine ${
        fmt(idle.cpuMsPerSecond, 1)
      }); send matching 0 / 1 of them p50 ${fmt(s.sendNone.p50, 2)} / ${fmt(s.sendOne.p50, 2)} ms`,
    target: "-",
    met: null,
    ratio: "-",
  })).concat(r.reopened ? [reopenedRow(r.idle, r.reopened)] : []);
}

function reopenedRow(idle: ParkedStage, s: ParkedStage): Row {
  const more = s.rssMiB - idle.rssMiB;
  return {
    benchmark: `**10. a fresh worker process on the ${
      s.runs.toLocaleString("en-US")
    } parked runs** (half sleeping a day, half waiting for an event; started on the file the first process left)`,
    figure: `**RSS ${fmt(s.rssMiB, 0)} MiB, ${more >= 0 ? "+" : ""}${
      fmt(more, 0)
    } over the idle engine** (${fmt(idle.rssMiB, 0)}); V8 heap used ${
      fmt(s.heapUsedMiB, 1)
    } MiB; RSS ${fmt(s.rssOpenedMiB ?? NaN, 0)} MiB once open, ${
      fmt(s.rssFirstSweepMiB ?? NaN, 0)
    } after the first sweep; one sweep p50 ${fmt(s.sweep.p50, 2)} ms, max ${
      fmt(s.sweep.max, 2)
    }; idle CPU ${fmt(s.cpuMsPerSecond, 1)} ms/s (idle engine ${
      fmt(idle.cpuMsPerSecond, 1)
    }); send matching 0 / 1 p50 ${fmt(s.sendNone.p50, 2)} / ${fmt(s.sendOne.p50, 2)} ms`,
    target: "RSS <= idle + 20 MiB",
    met: more <= 20,
    ratio: "-",
  };
}
