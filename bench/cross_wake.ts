/**
 * Wake-ups across processes (`--only wake`): a commit in this process (process A) → the
 * first step of the run it concerns starting in a worker process B on the same KV file.
 * Four kinds of commit: a new run; a resume of a failed run; an event a parked run waits
 * for; the end of a run in A that frees the limit slot a queued run of B waits for (timed
 * from the holder's step returning, so A's end commit and its hand-over commit count).
 * B is started with its watch of the file on, then off (`KVFLOW_WATCH`), alternately,
 * with the default 1 s sweep. Then B's CPU over `cpuSeconds` of idleness, watch on and
 * off, on a quiet file and beside a process committing back to back.
 *
 * `deno run -A bench/cross_wake.ts worker <kv-path>` is process B: it prints `ready`, then
 * a JSON line `{ runId, at }` when a first step starts, and `{ looks }` when it reads
 * `looks` on stdin. `… noise <kv-path> <ms>` commits back to back for `ms` and prints its
 * count of commits.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { type Engine, openEngine, type Pipeline, pipeline, step } from "../lib/mod.ts";
import { AWAIT, GO_EVENT, waitProbe, wallNow } from "./pipelines.ts";
import { countOf, fmt, type Latency, latency, log, sleep, until, withTimeout } from "./_util.ts";
import type { Row } from "./report.ts";

const SELF = fileURLToPath(import.meta.url);
/** Worker B's sweep interval: the default. */
const POLL_MS = 1000;

/** Sizes of the cross-process wake-up benchmark. */
export interface CrossWakeSizes {
  /** Samples of each kind with the watch on, over two worker processes. */
  watched: number;
  /** Samples of each kind with the watch off (each costs half a sweep interval). */
  polled: number;
  /** Seconds of each idle-CPU measurement. */
  cpuSeconds: number;
}

const KINDS = ["create", "resume", "event", "slot"] as const;
type Kind = typeof KINDS[number];

/** CPU of an idle worker process over a window. */
export interface IdleCpu {
  /** CPU time over wall time, percent of one core. */
  percent: number;
  /** Looks at the due-index its watch made per second. */
  looksPerSecond: number;
  /** Commits per second of the other process meanwhile (0 on a quiet file). */
  commitsPerSecond: number;
}

/** What the benchmark measured. */
export interface CrossWakeResult {
  /** Commit → first step, ms, by kind, watch on. */
  watched: Record<Kind, Latency>;
  /** The same with the watch off. */
  polled: Record<Kind, Latency>;
  /** Worker B's sweep interval. */
  pollMs: number;
  /** A's commit alone (create, resume, send), ms: part of every figure. */
  commit: Latency;
  /**
   * A new run → its first step within one serving process (claim, steps read, first
   * checkpoint): what a wake-up across processes adds to.
   */
  local: Latency;
  /** Idle CPU of B: watch on/off, quiet file/busy file. */
  idle: { on: IdleCpu; off: IdleCpu; onBusy: IdleCpu; offBusy: IdleCpu };
}

/** Told by B's pipelines when a first step starts. */
const probe: { onFirst?: (runId: string, at: number) => void } = {};

const FIRST_CREATE = pipeline("bench-wake-create", {
  steps: [step("first", (_inputs, ctx) => {
    probe.onFirst?.(ctx.run.id, wallNow());
    return 1;
  })],
}) as Pipeline<unknown>;

/** Runs whose step failed once in this process: the run's resume succeeds. */
const failedOnce = new Set<string>();

const FIRST_RESUME = pipeline("bench-wake-resume", {
  steps: [step("first", { retry: { attempts: 1 } }, (_inputs, ctx) => {
    if (!failedOnce.has(ctx.run.id)) {
      failedOnce.add(ctx.run.id);
      throw new Error("fails until resumed");
    }
    probe.onFirst?.(ctx.run.id, wallNow());
    return 1;
  })],
}) as Pipeline<unknown>;

const SLOT = { scope: "bench-wake", max: 1 };

/** When A lets its holder go: the holder's step returns. */
const holder: { release?: () => void } = {};

/** Holds the slot in A until released. */
const SLOT_HOLDER = pipeline("bench-wake-holder", {
  limit: SLOT,
  steps: [step("hold", () => new Promise<number>((resolve) => holder.release = () => resolve(1)))],
}) as Pipeline<unknown>;

/** Queued in B behind the holder. */
const SLOT_HELD = pipeline("bench-wake-held", {
  limit: SLOT,
  steps: [step("first", (_inputs, ctx) => {
    probe.onFirst?.(ctx.run.id, wallNow());
    return 1;
  })],
}) as Pipeline<unknown>;

/** Process B as A drives it. */
class WorkerProcess {
  readonly child: Deno.ChildProcess;
  readonly #arrivals = new Map<string, number>();
  readonly #waiting = new Map<string, (at: number) => void>();
  #looks: ((n: number) => void) | undefined;
  #ready: () => void = () => {};
  readonly ready: Promise<void>;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #reading: Promise<void>;

  constructor(path: string, watch: boolean) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SELF, "worker", path],
      env: { NO_COLOR: "1", KVFLOW_WATCH: watch ? "on" : "off" },
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#stdin = this.child.stdin.getWriter();
    this.ready = new Promise((resolve) => this.#ready = resolve);
    this.#reading = this.#read();
  }

  async #read(): Promise<void> {
    let rest = "";
    for await (const text of this.child.stdout.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + text).split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        if (line === "ready") {
          this.#ready();
          continue;
        }
        const message = JSON.parse(line) as { runId?: string; at?: number; looks?: number };
        if (message.looks !== undefined) this.#looks?.(message.looks);
        if (message.runId !== undefined) {
          this.#arrivals.set(message.runId, message.at!);
          this.#waiting.get(message.runId)?.(message.at!);
        }
      }
    }
  }

  /** When the run's first step started in B. */
  firstStep(runId: string): Promise<number> {
    const at = this.#arrivals.get(runId);
    if (at !== undefined) return Promise.resolve(at);
    return withTimeout(
      new Promise((resolve) => this.#waiting.set(runId, resolve)),
      `first step of ${runId}`,
      10_000,
    );
  }

  /** Looks B's watch made so far. */
  async looks(): Promise<number> {
    const answer = new Promise<number>((resolve) => this.#looks = resolve);
    await this.#stdin.write(new TextEncoder().encode("looks\n"));
    return await withTimeout(answer, "looks", 5_000);
  }

  /** CPU time of B so far, ms (Linux). */
  async cpuMs(): Promise<number> {
    const stat = (await Deno.readTextFile(`/proc/${this.child.pid}/stat`)).split(") ")[1]
      .split(" ");
    return (Number(stat[11]) + Number(stat[12])) * 10;
  }

  async stop(): Promise<void> {
    await this.#stdin.close();
    await this.child.status;
    await this.#reading;
  }
}

/** One sample of a kind: A's commit → B's first step, ms. */
async function sample(
  kind: Kind,
  engine: Engine,
  b: WorkerProcess,
  prepared: Prepared,
): Promise<{ ms: number; commitMs?: number }> {
  const store = engine.store;
  if (kind === "create") {
    const t0 = wallNow();
    const run = await store.createRun(FIRST_CREATE);
    const t1 = wallNow();
    return { ms: (await b.firstStep(run.id)) - t0, commitMs: t1 - t0 };
  }
  if (kind === "resume") {
    const run = await store.requireRun(prepared.resume.pop()!);
    const t0 = wallNow();
    await store.resume(run, FIRST_RESUME);
    const t1 = wallNow();
    return { ms: (await b.firstStep(run.id)) - t0, commitMs: t1 - t0 };
  }
  if (kind === "event") {
    const { runId, key } = prepared.event.pop()!;
    const t0 = wallNow();
    await engine.send(GO_EVENT, { key });
    const t1 = wallNow();
    return { ms: (await b.firstStep(runId)) - t0, commitMs: t1 - t0 };
  }
  const hold = await store.createRun(SLOT_HOLDER);
  const released = new Promise<void>((resolve) => {
    const check = () => holder.release ? resolve() : setTimeout(check, 1);
    check();
  });
  const holding = engine.runToEnd(hold.id);
  await released;
  const held = await store.createRun(SLOT_HELD);
  await waitFor(engine, held.id, (r) => r.status === "queued" && Boolean(r.held));
  const t0 = wallNow();
  const release = holder.release!;
  holder.release = undefined;
  release();
  const at = await b.firstStep(held.id);
  await holding;
  // the next holder finds the slot free
  await waitFor(engine, held.id, (r) => r.status === "succeeded");
  return { ms: at - t0 };
}

/** Runs made ready for a worker process: failed ones to resume, parked ones to send to. */
interface Prepared {
  resume: string[];
  event: { runId: string; key: string }[];
}

async function waitFor(
  engine: Engine,
  runId: string,
  done: (run: { status: string; held?: unknown }) => boolean,
): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done(await engine.store.requireRun(runId))) {
    if (Date.now() > deadline) throw new Error(`wake: run ${runId} not ready`);
    await sleep(5);
  }
}

/** Runs the benchmark on a fresh KV file. */
export async function crossWake(
  path: string,
  sizes: CrossWakeSizes,
  signal: AbortSignal,
): Promise<CrossWakeResult> {
  const engine = await openEngine({
    path,
    pipelines: [SLOT_HOLDER, AWAIT],
    watch: false,
    onAlert: () => {},
  });
  const samples = { on: new Map<Kind, number[]>(), off: new Map<Kind, number[]>() };
  const commits: number[] = [];
  for (const kind of KINDS) {
    samples.on.set(kind, []);
    samples.off.set(kind, []);
  }
  try {
    const store = engine.store;
    // alternately, two worker processes each way
    for (const watch of [true, false, true, false]) {
      signal.throwIfAborted();
      const n = Math.ceil((watch ? sizes.watched : sizes.polled) / 2);
      const b = new WorkerProcess(path, watch);
      try {
        await withTimeout(b.ready, "wake: worker B ready", 60_000);
        // runs to resume (failed once in B) and runs parked on an event, made ready first
        const prepared: Prepared = { resume: [], event: [] };
        const failedBefore = await countOf(engine.kv, FIRST_RESUME.name, "failed");
        const parkedBefore = await countOf(engine.kv, AWAIT.name, "waiting");
        for (let i = 0; i < n; i++) {
          prepared.resume.push((await store.createRun(FIRST_RESUME)).id);
          const key = crypto.randomUUID();
          const run = await store.createRun(AWAIT, { params: { key } });
          prepared.event.push({ runId: run.id, key });
        }
        await until(
          () => countOf(engine.kv, FIRST_RESUME.name, "failed"),
          failedBefore + n,
          "wake: runs to resume failed",
        );
        await until(
          () => countOf(engine.kv, AWAIT.name, "waiting"),
          parkedBefore + n,
          "wake: runs parked",
        );
        for (let i = 0; i < n; i++) {
          for (const kind of KINDS) {
            // at a random point of B's sweep interval
            await sleep(Math.random() * (watch ? 100 : POLL_MS));
            const { ms, commitMs } = await sample(kind, engine, b, prepared);
            samples[watch ? "on" : "off"].get(kind)!.push(ms);
            if (commitMs !== undefined) commits.push(commitMs);
          }
        }
        log(`wake: watch ${watch ? "on" : "off"}: ${n} samples of each kind`);
      } finally {
        await b.stop();
      }
    }
    const local = await localCreate(`${path}-local`, sizes.watched);
    const idle = {
      on: await idleCpu(path, true, sizes.cpuSeconds, false),
      off: await idleCpu(path, false, sizes.cpuSeconds, false),
      onBusy: await idleCpu(path, true, sizes.cpuSeconds, true),
      offBusy: await idleCpu(path, false, sizes.cpuSeconds, true),
    };
    const byKind = (from: Map<Kind, number[]>) =>
      Object.fromEntries(KINDS.map((k) => [k, latency(from.get(k)!)])) as Record<Kind, Latency>;
    const result: CrossWakeResult = {
      watched: byKind(samples.on),
      polled: byKind(samples.off),
      pollMs: POLL_MS,
      commit: latency(commits),
      local,
      idle,
    };
    for (const kind of KINDS) {
      const on = result.watched[kind];
      const off = result.polled[kind];
      log(
        `wake: ${kind}: watch p50 ${fmt(on.p50, 1)} ms, p99 ${fmt(on.p99, 1)} ms; ` +
          `sweep only p50 ${fmt(off.p50, 0)} ms, p99 ${fmt(off.p99, 0)} ms`,
      );
    }
    log(`wake: same process: p50 ${fmt(local.p50, 1)} ms, p99 ${fmt(local.p99, 1)} ms`);
    log(
      `wake: A's commit alone p50 ${fmt(result.commit.p50, 1)} ms, p99 ${
        fmt(result.commit.p99, 1)
      } ms`,
    );
    for (const [name, cpu] of Object.entries(idle)) {
      log(
        `wake: idle CPU ${name}: ${fmt(cpu.percent, 2)} %, ${fmt(cpu.looksPerSecond, 1)} looks/s, ${
          fmt(cpu.commitsPerSecond, 0)
        } commits/s beside`,
      );
    }
    return result;
  } finally {
    await engine.close(1000);
  }
}

/** A new run → its first step, in one process that serves, `n` times. */
async function localCreate(path: string, n: number): Promise<Latency> {
  const engine = await openEngine({ path, pipelines: [FIRST_CREATE], onAlert: () => {} });
  const samples: number[] = [];
  try {
    engine.start();
    for (let i = 0; i < n; i++) {
      await sleep(Math.random() * 100);
      const started = new Promise<number>((resolve) => probe.onFirst = (_runId, at) => resolve(at));
      const t0 = wallNow();
      await engine.trigger(FIRST_CREATE.name);
      samples.push((await withTimeout(started, "wake: same process", 10_000)) - t0);
    }
  } finally {
    probe.onFirst = undefined;
    await engine.close(1000);
  }
  return latency(samples);
}

/** CPU of an idle worker B over `seconds`, beside a process committing when `busy`. */
async function idleCpu(
  path: string,
  watch: boolean,
  seconds: number,
  busy: boolean,
): Promise<IdleCpu> {
  const b = new WorkerProcess(path, watch);
  try {
    await withTimeout(b.ready, "wake: worker B ready", 60_000);
    await sleep(1500);
    const noise = busy
      ? new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", SELF, "noise", path, String(seconds * 1000 + 1000)],
        stdout: "piped",
        stderr: "inherit",
      }).output()
      : undefined;
    // let the other process open the file and get going
    if (busy) await sleep(700);
    const cpu0 = await b.cpuMs();
    const looks0 = await b.looks();
    const t0 = performance.now();
    await sleep(seconds * 1000);
    const cpu1 = await b.cpuMs();
    const looks1 = await b.looks();
    const wall = performance.now() - t0;
    const commits = noise ? Number(new TextDecoder().decode((await noise).stdout).trim()) : 0;
    return {
      percent: (100 * (cpu1 - cpu0)) / wall,
      looksPerSecond: ((looks1 - looks0) * 1000) / wall,
      commitsPerSecond: commits / (seconds + 1),
    };
  } finally {
    await b.stop();
  }
}

/** Table rows. */
export function crossWakeRows(r: CrossWakeResult): Row[] {
  const what: Record<Kind, string> = {
    create: "new run",
    resume: "resume of a failed run",
    event: "event to a parked run",
    slot: "limit slot freed by a run ending",
  };
  const rows: Row[] = KINDS.map((kind) => {
    const on = r.watched[kind];
    const off = r.polled[kind];
    return {
      benchmark: `14. another process's commit → first step in a worker: ${what[kind]}`,
      figure: `watch: p50 ${fmt(on.p50, 1)} ms, p99 ${
        fmt(on.p99, 1)
      } ms (${on.n}); sweep only (${r.pollMs} ms): p50 ${fmt(off.p50, 0)} ms, p99 ${
        fmt(off.p99, 0)
      } ms (${off.n})`,
      target: "p50 <= 10 ms, p99 <= 50 ms",
      met: on.p50 <= 10 && on.p99 <= 50,
      ratio: `${fmt(off.p50 / on.p50, 0)}x faster at p50; A's commit alone p50 ${
        fmt(r.commit.p50, 1)
      } ms; a new run within one process p50 ${fmt(r.local.p50, 1)} ms, p99 ${
        fmt(r.local.p99, 1)
      } ms`,
    };
  });
  const cpu = (c: IdleCpu) => `${fmt(c.percent, 2)} % of a core`;
  rows.push({
    benchmark: "14. idle worker CPU, watch on / off: quiet file; another process committing",
    figure: `${cpu(r.idle.on)} / ${cpu(r.idle.off)}; ${cpu(r.idle.onBusy)} (${
      fmt(r.idle.onBusy.looksPerSecond, 0)
    } looks/s) / ${cpu(r.idle.offBusy)} beside ${fmt(r.idle.onBusy.commitsPerSecond, 0)} commits/s`,
    target: "-",
    met: null,
    ratio: "-",
  });
  return rows;
}

async function workerProcess(path: string): Promise<void> {
  const engine = await openEngine({
    path,
    pipelines: [FIRST_CREATE, FIRST_RESUME, AWAIT, SLOT_HELD],
    pollMs: POLL_MS,
    watch: Deno.env.get("KVFLOW_WATCH") !== "off",
    onAlert: () => {},
  });
  const encoder = new TextEncoder();
  const print = (line: string) => Deno.stdout.writeSync(encoder.encode(`${line}\n`));
  probe.onFirst = (runId, at) => print(JSON.stringify({ runId, at }));
  waitProbe.onAfter = (runId, at) => print(JSON.stringify({ runId, at }));
  engine.start();
  print("ready");
  // stdin: `looks` asks for the watch's count; its end stops the worker
  let rest = "";
  for await (const text of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + text).split("\n");
    rest = lines.pop()!;
    for (const line of lines) {
      if (line === "looks") print(JSON.stringify({ looks: engine.worker.watchLooks }));
    }
  }
  await engine.close(1000);
}

async function noiseProcess(path: string, ms: number): Promise<void> {
  const kv = await Deno.openKv(path);
  const end = Date.now() + ms;
  let commits = 0;
  while (Date.now() < end) await kv.set(["bench-noise", commits++ % 100], commits);
  kv.close();
  console.log(commits);
}

if (import.meta.main) {
  const [command, path, arg] = Deno.args;
  if (command === "worker") await workerProcess(path);
  else if (command === "noise") await noiseProcess(path, Number(arg));
  else throw new Error(`Unknown command ${command}: use worker or noise`);
}
