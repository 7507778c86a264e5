/**
 * Remote KV at a distance (issue 13, item 5): the engine over {@linkcode remoteKv}, a local
 * KV file behind a wrapper that keeps the remote rules (10 checks a commit, no queues) and
 * adds a round trip to every get, getMany, list page and commit.
 *
 * 1. The sequential step at each round trip (and at home: local KV with its queues, the
 *    same wrapper only counting): a chain driven inline, ms per step and step-to-step p50,
 *    next to one bare commit through the same wrapper; round trips per step by kind.
 * 2. Throughput: 1, 4 and 16 engines in this process, each with its own wrapper (its own
 *    round trips) of one KV handle, the server (in memory, or a file), each holding
 *    `maxRuns` runs at once, of 5-step chains created beforehand (no queue hint: the remote
 *    has none, so the sweeps find them); steps per second from the first sweep to the last
 *    run's end, the process's CPU over that time, round trips per step by kind and key.
 *
 * @module
 */
import process from "node:process";
import { type Engine, openEngine, type Pipeline } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { diffRemoteCounts, emptyRemoteCounts, type RemoteCounts, remoteKv } from "./remote_kv.ts";
import { chain } from "./pipelines.ts";
import { countOf, fmt, log, median, percentile, sleep, until } from "./_util.ts";
import type { Row } from "./report.ts";

/** Sizes of the remote benchmark. */
export interface RemoteSizes {
  /** Round trips of the sequential part, ms. */
  rtts: number[];
  /** Steps of the sequential chain, and repeats per round trip. */
  steps: number;
  repeats: number;
  /** Round trip of the throughput part, ms. */
  throughputRtt: number;
  /** Engines of the throughput part. */
  workers: number[];
  /** Runs each engine holds at once (its `maxRuns`). */
  inFlight: number[];
  /** Runs created per engine slot: total runs = workers × inFlight × this. */
  rounds: number;
  /** What the simulated server keeps its data in, for the throughput part (see below). */
  servers: RemoteServer[];
}

/**
 * The simulated server's storage in the throughput part. "file": a local KV file, every
 * commit fsynced on this machine's disk, one commit at a time: with many engines its
 * commit rate, not the engines, is the limit. "memory": `Deno.openKv(":memory:")`, a
 * server whose own storage is not the limit (the remote's storage is not this disk), to
 * show how far the engines themselves scale. Engines commit the same way over either.
 */
export type RemoteServer = "file" | "memory";

/** The sequential step at one round trip. */
export interface RemoteStep {
  /** "home": local KV with queues, counted only; else the simulated remote. */
  where: "home" | "remote";
  rttMs: number;
  /** One bare commit (check + set) through the same wrapper, mean ms. */
  commitMs: number;
  /** Wall ms of the chain / steps, per repeat. */
  msPerStep: number[];
  /** Median ms between consecutive steps' durable success, per repeat. */
  p50: number[];
  /** Round trips of one counted chain, per step. */
  perStep: RemoteCounts;
  steps: number;
}

/** One throughput configuration. */
export interface RemoteThroughput {
  server: RemoteServer;
  rttMs: number;
  workers: number;
  inFlight: number;
  runs: number;
  steps: number;
  seconds: number;
  stepsPerSecond: number;
  /** CPU of the whole process over that time, in cores (2 is all of this machine). */
  cpuCores: number;
  counts: RemoteCounts;
  /** Round trips by kind and the keys they touched (see {@linkcode remoteKv}), all engines. */
  byKey: Record<string, number>;
}

/** Everything the remote benchmark measured. */
export interface RemoteResult {
  steps: RemoteStep[];
  throughput: RemoteThroughput[];
}

const STEPS_PER_RUN = 5;

async function bareCommits(kv: Deno.Kv, n: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const key = ["bench", "remote-floor", i % 8];
    const entry = await kv.get(key);
    const ok = await kv.atomic().check(entry).set(key, i).set(["bench", "remote-x"], i).commit();
    if (!ok.ok) throw new Error("remote floor: a commit failed");
  }
  // each iteration is a get and a commit: half of it is the commit
  return (performance.now() - t0) / n / 2;
}

async function stepAt(
  path: string,
  where: "home" | "remote",
  rttMs: number,
  sizes: RemoteSizes,
): Promise<RemoteStep> {
  const local = await Deno.openKv(path);
  const { kv, counts } = remoteKv(local, { rttMs, rules: where === "remote" });
  const seq = chain(`seq-${where}-${rttMs}`, sizes.steps);
  const marks: number[] = [];
  let engine: Engine | undefined;
  try {
    engine = await openEngine({
      kv,
      queues: where === "home",
      pipelines: [seq],
      onAlert: () => {},
      onEvent: (e) => {
        if (e.type === "task" && e.status === "succeeded") marks.push(performance.now());
      },
    });
    const commitMs = await bareCommits(kv, rttMs >= 20 ? 10 : 40);
    const warm = await engine.store.createRun(seq);
    if ((await engine.runToEnd(warm.id)).status !== "succeeded") throw new Error("warm-up failed");
    const msPerStep: number[] = [];
    const p50: number[] = [];
    let perStep = emptyRemoteCounts();
    for (let r = 0; r < sizes.repeats; r++) {
      const run = await engine.store.createRun(seq);
      marks.length = 0;
      const before = { ...counts };
      const t0 = performance.now();
      const end = await engine.runToEnd(run.id);
      const ms = performance.now() - t0;
      if (end.status !== "succeeded") throw new Error(`remote chain ${end.status}`);
      const used = diffRemoteCounts(before, counts);
      if (r === 0) perStep = used;
      msPerStep.push(ms / sizes.steps);
      const gaps = marks.slice(1).map((t, i) => t - marks[i]).sort((a, b) => a - b);
      p50.push(percentile(gaps, 50));
    }
    const result = { where, rttMs, commitMs, msPerStep, p50, perStep, steps: sizes.steps };
    log(
      `remote: ${where} rtt ${rttMs} ms: commit ${fmt(commitMs)} ms, step ${
        fmt(median(msPerStep))
      } ms (p50 ${fmt(median(p50))}), per step ${fmt(perStep.trips / sizes.steps)} trips (${
        fmt(perStep.commit / sizes.steps)
      } commits, ${fmt((perStep.get + perStep.getMany + perStep.listPage) / sizes.steps)} reads)`,
    );
    return result;
  } finally {
    await engine?.close(1000);
    local.close();
  }
}

async function throughputAt(
  path: string,
  server: RemoteServer,
  rttMs: number,
  workers: number,
  inFlight: number,
  rounds: number,
): Promise<RemoteThroughput> {
  const p: Pipeline<unknown> = chain("tput", STEPS_PER_RUN);
  const runs = workers * inFlight * rounds;
  const setup = await Deno.openKv(server === "memory" ? ":memory:" : path);
  const engines: Engine[] = [];
  const wrapped: RemoteCounts[] = [];
  const byKey: Record<string, number> = {};
  const traces: Map<string, number>[] = [];
  try {
    // created beforehand, 100 to a commit, with no queue hint
    const store = new Store(setup, { queues: false });
    for (let i = 0; i < runs; i += 100) {
      const op = setup.atomic();
      for (let j = i; j < Math.min(runs, i + 100); j++) store.addRunCreation(op, store.newRun(p));
      if (!(await op.commit()).ok) throw new Error("remote: a creation commit failed");
    }
    // One handle is the server: a remote KV serializes its clients' commits itself, where
    // handles of their own on one SQLite file fail commits as "database is locked" under
    // load, which no remote client sees.
    for (let w = 0; w < workers; w++) {
      const { kv, counts, byKey: trace } = remoteKv(setup, { rttMs });
      wrapped.push(counts);
      traces.push(trace);
      engines.push(
        await openEngine({
          kv,
          queues: false,
          pipelines: [p],
          maxRuns: inFlight,
          maxSteps: 2 * inFlight,
          onAlert: () => {},
        }),
      );
    }
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (const e of engines) e.start();
    await until(() => countOf(setup, p.name, "succeeded"), runs, "remote throughput", 600_000);
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(c0);
    const counts = emptyRemoteCounts();
    for (const c of wrapped) {
      for (const k of Object.keys(counts) as (keyof RemoteCounts)[]) {
        counts[k] = k === "maxChecks" ? Math.max(counts[k], c[k]) : counts[k] + c[k];
      }
    }
    for (const trace of traces) {
      for (const [label, n] of trace) byKey[label] = (byKey[label] ?? 0) + n;
    }
    const steps = runs * STEPS_PER_RUN;
    const result = {
      server,
      rttMs,
      workers,
      inFlight,
      runs,
      steps,
      seconds,
      stepsPerSecond: steps / seconds,
      cpuCores: (cpu.user + cpu.system) / 1e6 / seconds,
      counts,
      byKey,
    };
    log(
      `remote: ${server} server, rtt ${rttMs} ms, ${workers} workers x ${inFlight} in flight: ${runs} runs, ${
        fmt(result.stepsPerSecond, 0)
      } steps/s, CPU ${fmt(result.cpuCores)} cores, ${fmt(counts.trips / steps)} trips/step (${
        fmt(counts.trips / seconds, 0)
      } calls/s at the server), ${counts.commitFailed} failed commits; a step: ${
        Object.entries(byKey).sort((a, b) => b[1] - a[1]).slice(0, 10)
          .map(([label, n]) => `${label} ${fmt(n / steps)}`).join("; ")
      }`,
    );
    return result;
  } finally {
    await Promise.all(engines.map((e) => e.close(2000)));
    setup.close();
  }
}

/**
 * Runs the remote benchmark on fresh KV files in `dir`.
 *
 * @param signal aborted: stop after the current measurement
 */
export async function remote(
  dir: string,
  sizes: RemoteSizes,
  signal?: AbortSignal,
): Promise<RemoteResult> {
  const steps: RemoteStep[] = [];
  steps.push(await stepAt(`${dir}/remote-home.kv`, "home", 0, sizes));
  for (const rtt of sizes.rtts) {
    signal?.throwIfAborted();
    steps.push(await stepAt(`${dir}/remote-${rtt}.kv`, "remote", rtt, sizes));
  }
  const throughput: RemoteThroughput[] = [];
  for (const server of sizes.servers) {
    for (const inFlight of sizes.inFlight) {
      for (const workers of sizes.workers) {
        signal?.throwIfAborted();
        throughput.push(
          await throughputAt(
            `${dir}/remote-tput-${workers}-${inFlight}.kv`,
            server,
            sizes.throughputRtt,
            workers,
            inFlight,
            sizes.rounds,
          ),
        );
        await sleep(200);
      }
    }
  }
  return { steps, throughput };
}

/** Table rows of the remote benchmark. */
export function remoteRows(r: RemoteResult): Row[] {
  const rows: Row[] = [];
  const home = r.steps.find((s) => s.where === "home");
  const homeTrips = home ? home.perStep.trips / home.steps : NaN;
  for (const s of r.steps) {
    const step = median(s.msPerStep);
    const trips = s.perStep.trips / s.steps;
    const p50 = median(s.p50);
    const perCommit = p50 / s.commitMs;
    rows.push({
      benchmark: `${s.where === "remote" ? "**" : ""}13. sequential step, ${
        s.where === "home"
          ? "at home (local KV with queues, counted)"
          : `remote KV at ${s.rttMs} ms a round trip`
      }${
        s.where === "remote" ? "**" : ""
      } (${s.steps}-step chain, median of ${s.msPerStep.length})`,
      figure: `${fmt(step, 2)} ms/step (p50 step-to-step ${fmt(p50, 2)}); one commit ${
        fmt(s.commitMs, 2)
      } ms; ${fmt(trips)} round trips a step (${fmt(s.perStep.commit / s.steps)} commits, ${
        fmt((s.perStep.get + s.perStep.getMany + s.perStep.listPage) / s.steps)
      } reads); most checks in a commit ${s.perStep.maxChecks}`,
      target: s.where === "remote" ? "p50 <= 1.3x one commit; trips <= home's" : "-",
      met: s.where === "remote" ? perCommit <= 1.3 && trips <= homeTrips * 1.05 : null,
      ratio: `p50 ${fmt(perCommit)}x, wall ${fmt(step / s.commitMs)}x one commit${
        s.where === "remote" ? `; ${fmt(trips / homeTrips)}x home's trips` : ""
      }`,
    });
  }
  for (const t of r.throughput) {
    rows.push({
      benchmark:
        `13. throughput over remote KV at ${t.rttMs} ms (${t.server} server), ${t.workers} engine${
          t.workers > 1 ? "s" : ""
        } x ${t.inFlight} runs in flight (${t.runs} 5-step runs)`,
      figure: `**${fmt(t.stepsPerSecond, 0)} steps/s**; CPU ${fmt(t.cpuCores)} cores; ${
        fmt(t.counts.trips / t.steps)
      } round trips a step (the server: ${
        fmt(t.counts.trips / t.seconds, 0)
      } calls/s); ${t.counts.commitFailed} failed commits (claims lost)`,
      target: "-",
      met: null,
      ratio: "-",
    });
  }
  return rows;
}
