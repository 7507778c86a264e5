/**
 * List and get latency with 100,000 runs in history: the runs are written the way
 * `bench/http_bench.ts` writes them (direct batched writes in the store's key layout),
 * then timed through the store in this process and through the real service
 * (`main.ts serve`) in its own process. The KV commit floor is measured on the same file.
 *
 * @module
 */
import { openEngine } from "../lib/mod.ts";
import { runDetail } from "../lib/http/run_view.ts";
import example from "../pipelines/example/mod.ts";
import { commitFloor, type Floor } from "./floor.ts";
import { populate, startServer, time } from "./http_bench.ts";
import { fmt, type Latency, latency, log } from "./_util.ts";
import type { Row } from "./report.ts";

/** Sizes of the history benchmark. */
export interface HistorySizes {
  /** Runs stored. */
  runs: number;
  /** Timed calls per row. */
  samples: number;
  /** Commits of the floor. */
  floorCommits: number;
}

/** What the history benchmark measured. */
export interface HistoryResult {
  runs: number;
  populateMs: number;
  fileMiB: number;
  floor: Floor;
  /** Store calls in this process, by label. */
  store: Record<string, Latency>;
  /** HTTP requests to the service, by label. */
  http: Record<string, Latency>;
}

async function series(n: number, call: () => Promise<unknown>): Promise<Latency> {
  for (let i = 0; i < 10; i++) await call();
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await call();
    samples.push(performance.now() - t0);
  }
  return latency(samples);
}

/** Populates a fresh KV file, then times the store and the service on it. */
export async function history(dir: string, sizes: HistorySizes): Promise<HistoryResult> {
  const path = `${dir}/history.kv`;
  const { detailed, ms: populateMs } = await populate(path, sizes.runs);
  const fileMiB = Deno.statSync(path).size / 2 ** 20;
  log(
    `history: ${sizes.runs} runs stored in ${fmt(populateMs / 1000, 1)} s (${fmt(fileMiB, 0)} MiB)`,
  );
  let pick = 0;
  const nextRun = () => detailed[(pick++ * 7919) % detailed.length];
  const n = sizes.samples;
  const store: Record<string, Latency> = {};
  const engine = await openEngine({ path, pipelines: [example], queues: false });
  let floor: Floor;
  try {
    floor = await commitFloor(engine.kv, sizes.floorCommits);
    const s = engine.store;
    const deep = await s.listRuns({ limit: 1000 });
    store["listRuns() first page (20)"] = await series(n, () => s.listRuns());
    store["listRuns({ pipeline })"] = await series(n, () => s.listRuns({ pipeline: "example" }));
    store["listRuns({ status: failed })"] = await series(n, () => s.listRuns({ status: "failed" }));
    store["listRuns({ cursor }) after 1,000"] = await series(
      n,
      () => s.listRuns({ cursor: deep.cursor }),
    );
    store["getRun(id)"] = await series(n, () => s.getRun(nextRun()));
    store["runDetail(id): steps, items, attempts, artifacts"] = await series(
      n,
      () => runDetail(engine, nextRun()),
    );
  } finally {
    await engine.close(1000);
  }
  const http: Record<string, Latency> = {};
  const { child, url } = await startServer(path);
  try {
    await time(`${url}/healthz`);
    const deep = await (await fetch(`${url}/api/runs?limit=1000`)).json();
    const get = (u: () => string) => series(n, () => time(u()));
    http["GET /api/runs (first page, 20)"] = await get(() => `${url}/api/runs`);
    http["GET /api/runs?pipeline=example"] = await get(() => `${url}/api/runs?pipeline=example`);
    http["GET /api/runs?status=failed"] = await get(() => `${url}/api/runs?status=failed`);
    http["GET /api/runs?cursor=… after 1,000"] = await get(() =>
      `${url}/api/runs?cursor=${encodeURIComponent(deep.cursor)}`
    );
    http["GET /api/runs/:id (steps, items, attempts)"] = await get(() =>
      `${url}/api/runs/${nextRun()}`
    );
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
  log(
    `history: store first page p50 ${fmt(store["listRuns() first page (20)"].p50, 2)} ms, ` +
      `HTTP first page p50 ${fmt(http["GET /api/runs (first page, 20)"].p50, 2)} ms`,
  );
  return { runs: sizes.runs, populateMs, fileMiB, floor: floor!, store, http };
}

/** Table rows of the history benchmark. */
export function historyRows(r: HistoryResult): Row[] {
  const f = r.floor.mean;
  // The HTTP benchmark's target for a page and a run (bench/http_bench.ts).
  const targeted = (level: string, label: string) =>
    level === "HTTP" && (label.includes("first page") || label.includes(":id"));
  const row = (level: string, label: string, l: Latency, first: boolean): Row => ({
    benchmark: `${first ? "**5. " : "5. "}${level}, ${
      r.runs.toLocaleString("en-US")
    } runs stored: ${label}${first ? "**" : ""}`,
    figure: `p50 ${fmt(l.p50, 2)} ms, p99 ${fmt(l.p99, 2)} ms (${l.n} calls)`,
    target: targeted(level, label) ? "p50 < 20 ms" : "-",
    met: targeted(level, label) ? l.p50 < 20 : null,
    ratio: `p50 ${fmt(l.p50 / f, 1)}, p99 ${fmt(l.p99 / f, 1)} floor commits`,
  });
  const rows: Row[] = [];
  Object.entries(r.store).forEach(([label, l], i) => rows.push(row("store", label, l, i === 0)));
  Object.entries(r.http).forEach(([label, l]) => rows.push(row("HTTP", label, l, false)));
  rows[rows.length - 1].ratio += ` (floor ${fmt(f, 3)} ms on this file)`;
  return rows;
}
