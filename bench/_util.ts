/**
 * Small helpers shared by the benchmarks: statistics, formatting, time limits, a store on
 * a KV file.
 *
 * @module
 */
import { type Engine, type Kv, openEngine, type Pipeline, type RunRecord } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { runCount } from "../lib/kv/keys.ts";

/**
 * Time limit of one section, ms (`KVFLOW_BENCH_TIMEOUT_MS` overrides it); a section past it
 * stops after its current measurement.
 */
export const TIMEOUT_MS = Number(Deno.env.get("KVFLOW_BENCH_TIMEOUT_MS") ?? 300_000);

/** Rejects when `promise` takes longer than `ms`. */
export function withTimeout<T>(promise: Promise<T>, label: string, ms = TIMEOUT_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The `p`-th percentile (0–100) of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

/** The median (the lower one of an even count). */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

/** Latency statistics, ms. */
export interface Latency {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

/** p50, p99 and max of samples. */
export function latency(samples: number[]): Latency {
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1],
  };
}

/** A number with a fixed count of decimals and thousands separators. */
export function fmt(n: number, digits = 2): string {
  return n.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** A Markdown table; the first row is the header. */
export function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => `| ${r.map((cell, c) => cell.padEnd(widths[c])).join(" | ")} |`;
  return [line(rows[0]), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`]
    .concat(rows.slice(1).map(line)).join("\n");
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A line on stderr, prefixed. */
export function log(s: string): void {
  console.error(`bench: ${s}`);
}

/** Runs `fn` with a store on the KV file at `kvPath`, closed afterwards. */
export async function withStore<T>(
  kvPath: string,
  fn: (store: Store) => Promise<T>,
): Promise<T> {
  const kv = await Deno.openKv(kvPath);
  try {
    return await fn(new Store(kv, { queues: false }));
  } finally {
    kv.close();
  }
}

/** Every run of a pipeline, page by page. */
export async function allRuns(store: Store, pipeline: string): Promise<RunRecord[]> {
  const out: RunRecord[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.listRuns({ pipeline, limit: 500, cursor });
    out.push(...page.runs);
    cursor = page.cursor;
  } while (cursor);
  return out;
}

/** How many runs of a pipeline have a status, from the store's per-status counter. */
export async function countOf(kv: Kv, pipeline: string, status: string): Promise<number> {
  const entry = await kv.get<Deno.KvU64>(runCount(pipeline, status));
  return Number(entry.value?.value ?? 0n);
}

/** Resolves once `count()` reaches `n`; rejects after `ms` naming `what`. */
export async function until(
  count: () => Promise<number>,
  n: number,
  what: string,
  ms = 120_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (true) {
    const got = await count();
    if (got >= n) return;
    if (Date.now() > deadline) throw new Error(`${what}: only ${got} of ${n} after ${ms} ms`);
    await sleep(50);
  }
}

/**
 * An engine (not started) with room to drive `runs` runs of `pipeline` at once in this
 * process, polling every 50 ms, and a promise of the moment the last of them succeeded.
 */
export async function openDriving(
  pipeline: Pipeline<unknown>,
  runs: number,
  where: { kv: Kv } | { path: string },
): Promise<{ engine: Engine; allSucceeded: Promise<void> }> {
  let succeeded = 0;
  const { promise: allSucceeded, resolve } = Promise.withResolvers<void>();
  const engine = await openEngine({
    ...where,
    pipelines: [pipeline],
    maxRuns: runs,
    maxSteps: 2 * runs,
    pollMs: 50,
    onAlert: () => {},
    onEvent: (e) => {
      if (e.type === "run" && e.run.status === "succeeded" && ++succeeded === runs) resolve();
    },
  });
  return { engine, allSucceeded };
}
