/**
 * Retention under a steady load: a month of a busy pipeline pushed through one engine
 * with a moved clock (many short runs a simulated day, kept 3 days), and of orders that
 * wait for their payment event by order id (half are paid, half time out, each order id
 * new), pruned once a day as a worker's sweep would, with the KV file's size and the
 * event keys (events, their indexes and effects, correlation heads, wait entries) counted
 * each day; then prune throughput (runs deleted per second, with everything they own) on
 * a backlog of ended runs.
 *
 * @module
 */
import { z } from "zod";
import { type Engine, openEngine, pipeline, step, waitFor } from "../lib/mod.ts";
import { TestClock } from "../lib/testing/mod.ts";
import { fmt, log } from "./_util.ts";
import type { Row } from "./report.ts";

/** Sizes of the prune benchmark. */
export interface PruneSizes {
  /** Simulated days. */
  days: number;
  /** Runs a simulated day. */
  runsPerDay: number;
  /** Retention, days. */
  retentionDays: number;
  /** Ended runs in the backlog the throughput is measured on. */
  backlog: number;
  /** Orders a simulated day (each waits for its payment; half are paid). */
  ordersPerDay?: number;
}

/** What the prune benchmark measured. */
export interface PruneResult {
  /** KV file size (database and its write-ahead log) at the end of each day, bytes. */
  sizes: number[];
  /** Runs pruned each day. */
  prunedPerDay: number[];
  /** The largest size of the last third of the month over the largest of the middle third. */
  plateauGrowth: number;
  /** Keys of events, their indexes and effects, correlation heads and waits, each day. */
  eventKeys: number[];
  /** Of them, correlation heads, each day. */
  heads: number[];
  /** Runs deleted per second (each with 3 steps, 3 attempts with logs, an 8 KB output). */
  runsPerSecond: number;
  /** Keys deleted per second. */
  keysPerSecond: number;
}

const DAY = 86_400_000;

const extract = step("extract", (_inputs, ctx) => {
  ctx.log.info("extracted", { rows: 120 });
  return { rows: "r".repeat(8_000) };
});
const transform = step("transform", { needs: { extract } }, ({ extract }) => extract.rows.length);
const load = step("load", { needs: { transform } }, ({ transform }, ctx) => {
  ctx.log.info("loaded", { bytes: transform });
  return transform;
});
const BUSY = pipeline("bench-busy", {
  steps: [extract, transform, load],
  retention: { succeeded: "3d", failed: "3d", cancelled: "3d" },
});

/** An order waits for its payment, matched by its id; unpaid after 2 hours, it is skipped. */
const paid = waitFor("paid", {
  events: { "order.paid": z.object({ order: z.string(), cents: z.number() }) },
  match: { field: "order", equals: (_inputs, run) => String(run.params.order) },
  timeout: "2h",
  onTimeout: "skip",
});
const ship = step("ship", { needs: { paid } }, ({ paid }) => paid.data?.cents ?? 0);

function orders(retention: `${number}d`) {
  return pipeline("bench-orders", {
    params: z.object({ order: z.string() }),
    steps: [paid, ship],
    retention: { succeeded: retention, failed: retention, cancelled: retention },
  });
}

/** Event keys (what events and waits leave) by family, for the plateau: heads apart. */
async function eventKeys(engine: Engine): Promise<{ all: number; heads: number }> {
  let all = 0, heads = 0;
  for await (const e of engine.kv.list({ prefix: ["kvflow"] })) {
    const family = String(e.key[1]);
    if (!/^(event|wait)/.test(family)) continue;
    all++;
    if (family === "event_head") heads++;
  }
  return { all, heads };
}

async function fileSize(path: string): Promise<number> {
  let size = 0;
  for (const suffix of ["", "-wal"]) {
    size += await Deno.stat(path + suffix).then((s) => s.size, () => 0);
  }
  return size;
}

/** Runs the prune benchmark on fresh KV files in `dir`. */
export async function prune(dir: string, sizes: PruneSizes): Promise<PruneResult> {
  const retention = `${sizes.retentionDays}d` as const;
  const busy = sizes.retentionDays === 3 ? BUSY : pipeline("bench-busy", {
    steps: [extract, transform, load],
    retention: { succeeded: retention, failed: retention, cancelled: retention },
  });
  const clock = new TestClock("2026-01-01T00:00:00Z", { auto: false });
  const path = `${dir}/prune.kv`;
  const shop = orders(retention);
  const engine = await openEngine({
    path,
    pipelines: [busy, shop],
    clock,
    queues: false,
    eventRetention: retention,
  });
  const push = async (n: number) => {
    for (let i = 0; i < n; i += 25) {
      const batch = [];
      for (let j = i; j < Math.min(n, i + 25); j++) batch.push(engine.trigger(busy.name));
      await Promise.all((await Promise.all(batch)).map((run) => engine.runToEnd(run.id)));
    }
  };
  let orderNo = 0;
  // a day's orders: all wait, half are paid, the rest time out two hours on
  const sell = async (n: number) => {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const order = `o-${++orderNo}`;
      const run = await engine.trigger(shop.name, { params: { order } });
      // drive it until its wait has started (a first claim may come before it is due)
      for (let tries = 0; (await engine.getRun(run.id))?.status !== "waiting"; tries++) {
        if (tries === 100) throw new Error(`order run ${run.id} did not start its wait`);
        await engine.worker.execute(run.id);
      }
      ids.push(run.id);
      if (i % 2 === 0) await engine.send("order.paid", { order, cents: 100 + i });
    }
    clock.advance(3 * 3_600_000);
    for (const id of ids) {
      const run = await engine.runToEnd(id);
      if (run.status !== "succeeded") throw new Error(`order run ${id} ended ${run.status}`);
    }
  };
  const result: PruneResult = {
    sizes: [],
    prunedPerDay: [],
    plateauGrowth: 0,
    eventKeys: [],
    heads: [],
    runsPerSecond: 0,
    keysPerSecond: 0,
  };
  try {
    for (let day = 0; day < sizes.days; day++) {
      await push(sizes.runsPerDay);
      await sell(sizes.ordersPerDay ?? 0);
      clock.advance(DAY - 3 * 3_600_000);
      const report = await engine.prune();
      result.prunedPerDay.push(report.runs);
      result.sizes.push(await fileSize(path));
      const counted = await eventKeys(engine);
      result.eventKeys.push(counted.all);
      result.heads.push(counted.heads);
      log(
        `prune: day ${
          day + 1
        }: ${report.runs} runs and ${report.events} events pruned, ${report.waitHeads} heads forgotten; file ${
          fmt(result.sizes[day] / 1e6, 2)
        } MB, ${counted.all} event keys (${counted.heads} heads)`,
      );
    }
    const third = Math.floor(sizes.days / 3);
    const middle = Math.max(...result.sizes.slice(third, 2 * third));
    const last = Math.max(...result.sizes.slice(2 * third));
    result.plateauGrowth = last / middle - 1;

    // throughput: a backlog of ended runs, all past retention, pruned at once
    await push(sizes.backlog);
    clock.advance(sizes.retentionDays * DAY + DAY);
    const t0 = performance.now();
    const report = await engine.prune();
    const seconds = (performance.now() - t0) / 1000;
    result.runsPerSecond = report.runs / seconds;
    result.keysPerSecond = report.keys / seconds;
    log(`prune: ${report.runs} runs (${report.keys} keys) in ${fmt(seconds, 2)} s`);
  } finally {
    await engine.close();
  }
  return result;
}

/** The table rows of the prune benchmark. */
export function pruneRows(r: PruneResult): Row[] {
  const mb = (b: number) => `${fmt(b / 1e6, 2)} MB`;
  const days = r.sizes.length;
  return [
    {
      benchmark: "prune: runs deleted per second (3 steps, logs, 8 KB output each)",
      figure: `${fmt(r.runsPerSecond, 0)} runs/s (${fmt(r.keysPerSecond, 0)} keys/s)`,
      target: "-",
      met: null,
      ratio: "-",
    },
    {
      benchmark:
        `prune: event keys over ${days} simulated days (orders waiting for payment by id; half paid, half timed out)`,
      figure: `day 3 ${r.eventKeys[2]} (${r.heads[2]} heads), day 10 ${
        r.eventKeys[Math.min(9, days - 1)]
      } (${r.heads[Math.min(9, days - 1)]}), day ${days} ${r.eventKeys[days - 1]} (${
        r.heads[days - 1]
      })`,
      target: "stops growing",
      met: r.eventKeys[days - 1] <= Math.max(...r.eventKeys.slice(0, Math.floor(days / 3) + 1)),
      ratio: "-",
    },
    {
      benchmark: `prune: KV file over ${days} simulated days, retention 3 days`,
      figure: `day 3 ${mb(r.sizes[2])}, day 10 ${mb(r.sizes[Math.min(9, days - 1)])}, day ${days} ${
        mb(r.sizes[days - 1])
      }; last third vs middle third ${fmt(r.plateauGrowth * 100, 1)} %`,
      target: "stops growing (< 5 %)",
      met: r.plateauGrowth < 0.05,
      ratio: "-",
    },
  ];
}
