/**
 * Retention under a steady load: a month of a busy pipeline pushed through one engine
 * with a moved clock (many short runs a simulated day, kept 3 days), pruned once a day as
 * a worker's sweep would, with the KV file's size recorded each day; then prune throughput
 * (runs deleted per second, with everything they own) on a backlog of ended runs.
 *
 * @module
 */
import { openEngine, pipeline, step } from "../lib/mod.ts";
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
}

/** What the prune benchmark measured. */
export interface PruneResult {
  /** KV file size (database and its write-ahead log) at the end of each day, bytes. */
  sizes: number[];
  /** Runs pruned each day. */
  prunedPerDay: number[];
  /** The largest size of the last third of the month over the largest of the middle third. */
  plateauGrowth: number;
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
  const engine = await openEngine({ path, pipelines: [busy], clock, queues: false });
  const push = async (n: number) => {
    for (let i = 0; i < n; i += 25) {
      const batch = [];
      for (let j = i; j < Math.min(n, i + 25); j++) batch.push(engine.trigger(busy.name));
      await Promise.all((await Promise.all(batch)).map((run) => engine.runToEnd(run.id)));
    }
  };
  const result: PruneResult = {
    sizes: [],
    prunedPerDay: [],
    plateauGrowth: 0,
    runsPerSecond: 0,
    keysPerSecond: 0,
  };
  try {
    for (let day = 0; day < sizes.days; day++) {
      await push(sizes.runsPerDay);
      clock.advance(DAY);
      const report = await engine.prune();
      result.prunedPerDay.push(report.runs);
      result.sizes.push(await fileSize(path));
      log(
        `prune: day ${day + 1}: ${report.runs} runs pruned, file ${
          fmt(result.sizes[day] / 1e6, 2)
        } MB`,
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
