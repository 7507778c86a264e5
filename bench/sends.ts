/**
 * Sends per second with 0, 1 and 100 matching waits per event, in the engine's process
 * (its worker started, so the runs a send wakes continue meanwhile). 0: events whose
 * correlation no wait has. 1: each event ends the wait of its own parked run. 100: 100
 * runs wait on one correlation; one send wakes them all (more waits than one commit may
 * check: the rest go through the event's outbox entry, in the same call).
 *
 * @module
 */
import { openEngine } from "../lib/mod.ts";
import { commitFloor, type Floor } from "./floor.ts";
import { AWAIT, GO_EVENT, waitProbe } from "./pipelines.ts";
import { countOf, fmt, type Latency, latency, log, median, until } from "./_util.ts";
import type { Row } from "./report.ts";

/** Sizes of the sends benchmark. */
export interface SendSizes {
  /** Events sent one at a time with no matching wait, and with one. */
  sends: number;
  /** Events sent with 100 matching waits each (100 runs parked for each). */
  groups: number;
  /** Events in flight at once in the concurrent measurements. */
  inFlight: number;
  /** Commits of the floor measured before. */
  floorCommits: number;
}

/** One rate: events a second and the latency of one `send`, ms. */
export interface SendRate {
  perSecond: number;
  send: Latency;
}

/** What the sends benchmark measured. */
export interface SendResult {
  none: SendRate;
  noneConcurrent: SendRate;
  one: SendRate;
  oneConcurrent: SendRate;
  /** 100 matching waits: one send each; sends/s is 1000 / the median send. */
  hundred: SendRate;
  /** From just before each 100-wait send until all 100 dependents started, ms. */
  hundredAllStarted: Latency;
  inFlight: number;
  floor: Floor;
}

/** Runs the sends benchmark on a fresh KV file. */
export async function sends(path: string, sizes: SendSizes): Promise<SendResult> {
  const started = new Map<string, number>();
  const engine = await openEngine({
    path,
    pipelines: [AWAIT],
    maxRuns: 256,
    maxSteps: 512,
    onAlert: () => {},
  });
  waitProbe.onAfter = (runId) => started.set(runId, performance.now());
  let parked = 0;
  const park = async (keys: string[]) => {
    const ids: string[] = [];
    for (let i = 0; i < keys.length; i += 50) {
      const batch = keys.slice(i, i + 50).map((key) =>
        engine.trigger(AWAIT.name, { params: { key } })
      );
      for (const run of await Promise.all(batch)) ids.push(run.id);
    }
    parked += keys.length;
    await until(
      async () => {
        const waiting = await countOf(engine.kv, AWAIT.name, "waiting");
        const done = await countOf(engine.kv, AWAIT.name, "succeeded");
        return waiting + done;
      },
      parked,
      "sends: parked",
    );
    return ids;
  };
  /** Sends one event per key, `lanes` at a time. */
  const rate = async (keys: string[], lanes: number, woke: number): Promise<SendRate> => {
    const samples: number[] = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: lanes }, async () => {
      while (next < keys.length) {
        const key = keys[next++];
        const s0 = performance.now();
        const result = await engine.send(GO_EVENT, { key });
        samples.push(performance.now() - s0);
        if (result.woke.length !== woke) {
          throw new Error(`sends: event ${key} woke ${result.woke.length}, want ${woke}`);
        }
      }
    }));
    return { perSecond: (keys.length * 1000) / (performance.now() - t0), send: latency(samples) };
  };
  try {
    const floor = await commitFloor(engine.kv, sizes.floorCommits);
    engine.start();
    const n = sizes.sends;
    const keys = (prefix: string) => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
    const none = await rate(keys("none"), 1, 0);
    const noneConcurrent = await rate(keys("none-c"), sizes.inFlight, 0);
    await park(keys("one"));
    const one = await rate(keys("one"), 1, 1);
    await park(keys("one-c"));
    const oneConcurrent = await rate(keys("one-c"), sizes.inFlight, 1);
    const hundred: number[] = [];
    const allStarted: number[] = [];
    for (let g = 0; g < sizes.groups; g++) {
      const ids = await park(Array.from({ length: 100 }, () => `group-${g}`));
      const s0 = performance.now();
      const result = await engine.send(GO_EVENT, { key: `group-${g}` });
      hundred.push(performance.now() - s0);
      if (result.woke.length !== 100) throw new Error(`sends: woke ${result.woke.length} of 100`);
      const deadline = Date.now() + 30_000;
      while (!ids.every((id) => started.has(id))) {
        if (Date.now() > deadline) throw new Error("sends: 100 woken runs did not all start");
        await new Promise((r) => setTimeout(r, 1));
      }
      allStarted.push(Math.max(...ids.map((id) => started.get(id)!)) - s0);
    }
    const result: SendResult = {
      none,
      noneConcurrent,
      one,
      oneConcurrent,
      hundred: { perSecond: 1000 / median(hundred), send: latency(hundred) },
      hundredAllStarted: latency(allStarted),
      inFlight: sizes.inFlight,
      floor,
    };
    log(
      `sends: ${fmt(none.perSecond, 0)}/s with 0 waits, ${fmt(one.perSecond, 0)}/s with 1, ${
        fmt(result.hundred.perSecond, 0)
      }/s with 100 (send p50 ${fmt(result.hundred.send.p50, 1)} ms)`,
    );
    return result;
  } finally {
    waitProbe.onAfter = undefined;
    await engine.close(1000);
  }
}

/** Table rows of the sends benchmark. */
export function sendRows(r: SendResult): Row[] {
  const floor = r.floor.perSecond;
  const row = (what: string, x: SendRate, bold = false): Row => ({
    benchmark: bold ? `**9. sends per second, ${what}**` : `9. sends per second, ${what}`,
    figure: `${bold ? "**" : ""}${fmt(x.perSecond, 0)} sends/s${bold ? "**" : ""}; one send p50 ${
      fmt(x.send.p50, 2)
    } ms, p99 ${fmt(x.send.p99, 2)} ms`,
    target: "-",
    met: null,
    ratio: `${fmt(x.perSecond / floor, 2)} sends per floor commit (floor ${
      fmt(floor, 0)
    } commits/s)`,
  });
  return [
    row(`0 matching waits, 1 in flight (${r.none.send.n} events)`, r.none, true),
    row(`0 matching waits, ${r.inFlight} in flight`, r.noneConcurrent),
    row(`1 matching wait each, 1 in flight (${r.one.send.n} parked runs)`, r.one, true),
    row(`1 matching wait each, ${r.inFlight} in flight`, r.oneConcurrent),
    {
      ...row(
        `100 matching waits each (${r.hundred.send.n} events, 100 parked runs each)`,
        r.hundred,
        true,
      ),
      figure: `**${fmt(r.hundred.perSecond, 0)} sends/s** (1000 / median send); one send p50 ${
        fmt(r.hundred.send.p50, 1)
      } ms, max ${fmt(r.hundred.send.max, 1)} ms; all 100 dependents started p50 ${
        fmt(r.hundredAllStarted.p50, 0)
      } ms, max ${fmt(r.hundredAllStarted.max, 0)} ms after the send began`,
    },
  ];
}
