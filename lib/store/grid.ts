/**
 * What the dashboard's grid of a pipeline reads: a page of its runs, newest first, paged by
 * the run id at either edge, and the step records of those runs with the item counts of
 * their fan-out steps. The reads are bounded: one list of the pipeline's index, one
 * `getMany` per ten step records, and item lists only for fan-out steps that have not
 * succeeded, up to {@linkcode ITEM_READ_BUDGET} items a page. Attempts are never read.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import type { Kv, KvKey } from "../kv/kv.ts";
import { getAll } from "../kv/reads.ts";
import { UsageError } from "../model/errors.ts";
import { isRunId } from "../model/run_id.ts";
import type { RunRecord, StepStatus, TaskRecord } from "../model/records.ts";

/** The most item records one grid page lists to count fan-out items. */
export const ITEM_READ_BUDGET = 5_000;

/** Which page of a pipeline's runs: the newest, or the runs before or after one run. */
export interface GridPageOptions {
  /** How many runs, 1 to 100. */
  runs: number;
  /** The runs created before this one (older). */
  before?: string;
  /** The runs created after this one (newer). */
  after?: string;
}

/** A page of a pipeline's runs for the grid. */
export interface GridRunPage {
  /** The runs, newest first. */
  runs: RunRecord[];
  /** The oldest run shown, when older runs exist: `before` for the next page back. */
  older: string | null;
  /** The newest run shown, when newer runs exist: `after` for the page forward. */
  newer: string | null;
}

/** How a fan-out step's items stand in one run. */
export interface ItemCounts {
  /** Items the step's list had. */
  total: number;
  /** Items that succeeded. */
  succeeded: number;
  /** Items that failed. */
  failed: number;
}

/**
 * A page of a pipeline's runs, newest first.
 *
 * @throws {UsageError} when `before` or `after` is not a run of this pipeline, or both are given
 */
export async function gridRuns(
  kv: Kv,
  pipeline: string,
  options: GridPageOptions,
): Promise<GridRunPage> {
  const { runs: limit, before, after } = options;
  if (before !== undefined && after !== undefined) {
    throw new UsageError("Give either 'before' or 'after', not both");
  }
  const cursorId = before ?? after;
  const prefix = keys.runsByPipelinePrefix(pipeline);
  if (cursorId === undefined) {
    const ids = await listIds(kv, { prefix }, limit + 1, true);
    return page(kv, ids.slice(0, limit), ids.length > limit, false);
  }
  const cursor = await cursorRun(kv, pipeline, cursorId);
  const at = keys.runsByPipeline(pipeline, cursor.createdAt, cursor.id);
  if (before !== undefined) {
    const ids = await listIds(kv, { prefix, end: at }, limit + 1, true);
    return page(kv, ids.slice(0, limit), ids.length > limit, true);
  }
  // `start` is inclusive: one more, and the cursor's own entry dropped
  const newer = (await listIds(kv, { prefix, start: at }, limit + 2, false))
    .filter((id) => id !== cursor.id);
  // fewer than a page newer than the cursor: the newest page, full
  if (newer.length <= limit) return gridRuns(kv, pipeline, { runs: limit });
  return page(kv, newer.slice(0, limit).reverse(), true, true);
}

async function cursorRun(kv: Kv, pipeline: string, id: string): Promise<RunRecord> {
  const shown = JSON.stringify(id.slice(0, 80));
  if (!isRunId(id)) throw new UsageError(`Invalid cursor ${shown}: not a run id`);
  const run = (await kv.get<RunRecord>(keys.run(id))).value;
  if (!run || run.pipeline !== pipeline) {
    throw new UsageError(
      `Invalid cursor ${shown}: no run of pipeline '${pipeline}' has that id (it may have been pruned)`,
    );
  }
  return run;
}

async function listIds(
  kv: Kv,
  selector: Parameters<Kv["list"]>[0],
  limit: number,
  reverse: boolean,
): Promise<string[]> {
  const ids: string[] = [];
  for await (const e of kv.list(selector, { limit, reverse, batchSize: Math.min(limit, 500) })) {
    ids.push(e.key[e.key.length - 1] as string);
  }
  return ids;
}

async function page(
  kv: Kv,
  ids: string[],
  hasOlder: boolean,
  hasNewer: boolean,
): Promise<GridRunPage> {
  const runs = (await getManyValues<RunRecord>(kv, ids.map((id) => keys.run(id))))
    .filter((r): r is RunRecord => r !== null);
  return {
    runs,
    older: hasOlder && runs.length > 0 ? runs[runs.length - 1].id : null,
    newer: hasNewer && runs.length > 0 ? runs[0].id : null,
  };
}

/** Values of many keys, ten to a `getMany` (KV's limit), the batches read in parallel. */
async function getManyValues<T>(kv: Kv, list: KvKey[]): Promise<(T | null)[]> {
  return (await getAll<T>(kv, list)).map((e) => e.value);
}

/** A cell's key in {@linkcode GridTasks}' maps. */
export function cellKey(runId: string, step: string): string {
  return `${runId}\u0000${step}`;
}

/** The step records of a page of runs, and the item counts of their fan-out steps. */
export interface GridTasks {
  /** Step records by {@linkcode cellKey}; absent: the run has none for that step. */
  steps: Map<string, TaskRecord>;
  /**
   * Item counts of fan-out steps by {@linkcode cellKey}; absent for a fan-out step whose
   * items were over the page's read budget.
   */
  items: Map<string, ItemCounts>;
}

/**
 * The records of `steps` in each of `runs`, read by key (`getMany`), with item counts for
 * their fan-out steps: a succeeded one had every item succeed (a fan-out step succeeds only
 * then), the others' items are listed while the page's budget lasts, newest runs first.
 */
export async function gridTasks(
  kv: Kv,
  runs: readonly RunRecord[],
  steps: readonly string[],
): Promise<GridTasks> {
  const cells = runs.flatMap((run) => steps.map((step) => [run.id, step] as const));
  const records = await getManyValues<TaskRecord>(
    kv,
    cells.map(([run, step]) => keys.step(run, step)),
  );
  const out: GridTasks = { steps: new Map(), items: new Map() };
  const toCount: [string, string, number][] = [];
  let budget = ITEM_READ_BUDGET;
  cells.forEach(([run, step], i) => {
    const record = records[i];
    if (!record) return;
    out.steps.set(cellKey(run, step), record);
    if (record.items === undefined) return;
    if (record.status === "succeeded") {
      out.items.set(cellKey(run, step), {
        total: record.items,
        succeeded: record.items,
        failed: 0,
      });
    } else if (record.items <= budget) {
      budget -= record.items;
      toCount.push([run, step, record.items]);
    }
  });
  await Promise.all(toCount.map(async ([run, step, total]) => {
    const count: Partial<Record<StepStatus, number>> = {};
    const iter = kv.list<TaskRecord>({ prefix: keys.itemPrefix(run, step) }, {
      batchSize: Math.max(1, Math.min(total, 500)),
    });
    for await (const e of iter) count[e.value.status] = (count[e.value.status] ?? 0) + 1;
    out.items.set(cellKey(run, step), {
      total,
      succeeded: count.succeeded ?? 0,
      failed: count.failed ?? 0,
    });
  }));
  return out;
}
