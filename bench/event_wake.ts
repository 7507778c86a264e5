/**
 * Event sent → the waiting step's dependent starts. Runs of `bench-await` wait (parked:
 * their timeout is longer than the worker's hold time) for an event whose `key` is theirs;
 * each sample is one `engine.send`, timed from just before the call to the body of the step
 * after the wait starting (a timestamp the body records). Sent from the engine's own
 * process, then from another process on the same KV file, which only sends (its worker is
 * stopped): there the run is picked up by the worker through a queue hint or its sweep.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { openEngine } from "../lib/mod.ts";
import { commitFloor, type Floor } from "./floor.ts";
import { AWAIT, GO_EVENT, waitProbe, wallNow } from "./pipelines.ts";
import { countOf, fmt, type Latency, latency, log, sleep, until, withTimeout } from "./_util.ts";
import type { Row } from "./report.ts";

const ENTRY = fileURLToPath(new URL("./entry.ts", import.meta.url));

/** Sizes of the event benchmark. */
export interface EventSizes {
  /** Events sent from the engine's process, one at a time. */
  local: number;
  /** Events sent from another process. */
  cross: number;
  /** Commits of the floor measured before. */
  floorCommits: number;
}

/** What the event benchmark measured, ms. */
export interface EventResult {
  /** Same process: send → dependent body start. */
  local: Latency;
  /** Of it, until `engine.send` returned (the event stored and the wait ended). */
  localSend: Latency;
  /** Another process: its send → the dependent's body start in this process. */
  cross: Latency;
  /** Of it, until the sender's `engine.send` returned. */
  crossSend: Latency;
  /** The worker's sweep interval meanwhile. */
  pollMs: number;
  floor: Floor;
}

/** One event the sender process sent: when its send began and returned (wall ms). */
interface Sent {
  key: string;
  t0: number;
  t1: number;
}

/** The bodies of `after` steps as they start, by run id. */
function arrivals() {
  const at = new Map<string, number>();
  const waiting = new Map<string, (t: number) => void>();
  waitProbe.onAfter = (runId, t) => {
    at.set(runId, t);
    waiting.get(runId)?.(t);
  };
  return {
    at,
    /** When the run's `after` step starts (now, if it did already). */
    of(runId: string): Promise<number> {
      const t = at.get(runId);
      if (t !== undefined) return Promise.resolve(t);
      return new Promise((resolve) => waiting.set(runId, resolve));
    },
  };
}

/** Runs the event benchmark on a fresh KV file. */
export async function eventWake(
  path: string,
  sizes: EventSizes,
  signal: AbortSignal,
): Promise<EventResult> {
  const pollMs = 1000;
  const engine = await openEngine({
    path,
    pipelines: [AWAIT],
    maxRuns: 64,
    pollMs,
    onAlert: () => {},
  });
  const seen = arrivals();
  try {
    const floor = await commitFloor(engine.kv, sizes.floorCommits);
    engine.start();
    const runOf = new Map<string, string>();
    const keys = [
      ...Array.from({ length: sizes.local }, (_, i) => `local-${i}`),
      ...Array.from({ length: sizes.cross }, (_, i) => `cross-${i}`),
    ];
    for (const key of keys) {
      const run = await engine.trigger(AWAIT.name, { params: { key } });
      runOf.set(key, run.id);
    }
    await until(() => countOf(engine.kv, AWAIT.name, "waiting"), keys.length, "event: parked");

    const local: number[] = [];
    const localSend: number[] = [];
    for (let i = 0; i < sizes.local && !signal.aborted; i++) {
      await sleep(5 + Math.random() * 20);
      const key = `local-${i}`;
      const t0 = wallNow();
      await engine.send(GO_EVENT, { key });
      localSend.push(wallNow() - t0);
      const at = await withTimeout(seen.of(runOf.get(key)!), `event ${key}`, 10_000);
      local.push(at - t0);
    }

    const cross: number[] = [];
    const crossSend: number[] = [];
    if (!signal.aborted) {
      const sender = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", ENTRY, "send-events", path, keys.slice(sizes.local).join(",")],
        env: { NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = await withTimeout(sender, "event: sender process", 120_000);
      if (!out.success) {
        throw new Error(`sender exited ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
      }
      const sent = new TextDecoder().decode(out.stdout).trim().split("\n")
        .map((line) => JSON.parse(line) as Sent);
      for (const s of sent) {
        const at = await withTimeout(seen.of(runOf.get(s.key)!), `event ${s.key}`, 10_000);
        cross.push(at - s.t0);
        crossSend.push(s.t1 - s.t0);
      }
    }
    const result: EventResult = {
      local: latency(local),
      localSend: latency(localSend),
      cross: latency(cross),
      crossSend: latency(crossSend),
      pollMs,
      floor,
    };
    log(
      `event: same process p50 ${fmt(result.local.p50)} ms, p99 ${
        fmt(result.local.p99)
      } ms; another process p50 ${fmt(result.cross.p50, 0)} ms, p99 ${fmt(result.cross.p99, 0)} ms`,
    );
    return result;
  } finally {
    waitProbe.onAfter = undefined;
    await engine.close(1000);
  }
}

/**
 * The sender process (`bench/entry.ts send-events <kv-path> <key,key,…>`): opens an engine
 * on the file with the benchmark pipelines registered (so it knows the correlation field),
 * stops its worker (it only sends, as a script would), then sends one event per key, 50–400
 * ms apart (so the sends fall at every phase of the worker's sweep), and prints one JSON
 * line per event.
 */
export async function sendEvents(path: string, keys: string[]): Promise<void> {
  const engine = await openEngine({ path, pipelines: [AWAIT], onAlert: () => {} });
  try {
    await engine.worker.stop(0);
    for (const key of keys) {
      await sleep(50 + Math.random() * 350);
      const t0 = wallNow();
      const result = await engine.send(GO_EVENT, { key });
      const t1 = wallNow();
      if (result.woke.length !== 1) throw new Error(`event ${key} woke ${result.woke.length}`);
      console.log(JSON.stringify({ key, t0, t1 } satisfies Sent));
    }
  } finally {
    await engine.close(0);
  }
}

/** Table rows of the event benchmark. */
export function eventRows(r: EventResult): Row[] {
  const f = r.floor.mean;
  return [{
    benchmark:
      `**7. event sent → the waiting step's dependent starts**, same process (${r.local.n} events, one at a time, to parked runs)`,
    figure: `p50 ${fmt(r.local.p50)} ms, **p99 ${fmt(r.local.p99)} ms**, max ${
      fmt(r.local.max)
    } ms (just before \`engine.send\` → the dependent's body); of which \`send\` p50 ${
      fmt(r.localSend.p50)
    }, p99 ${fmt(r.localSend.p99)} ms`,
    target: "p99 <= 10 ms",
    met: r.local.p99 <= 10,
    ratio: `p50 ${fmt(r.local.p50 / f, 1)}, p99 ${fmt(r.local.p99 / f, 1)} floor commits (floor ${
      fmt(f, 3)
    } ms)`,
  }, {
    benchmark:
      `7. the same from another process on the KV file (${r.cross.n} events, 50-400 ms apart)`,
    figure: `p50 ${fmt(r.cross.p50, 0)} ms, p99 ${fmt(r.cross.p99, 0)} ms, max ${
      fmt(r.cross.max, 0)
    } ms; of which the sender's \`send\` p50 ${fmt(r.crossSend.p50)} ms (worker sweep every ${
      fmt(r.pollMs, 0)
    } ms)`,
    target: "-",
    met: null,
    ratio: `p50 ${fmt(r.cross.p50 / f, 0)} floor commits`,
  }];
}
