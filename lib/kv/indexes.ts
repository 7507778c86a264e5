/**
 * A run's secondary indexes — by time, by pipeline, by status, by pipeline and status,
 * the active runs of a pipeline, the per-status counts and the due-index — written in
 * the same commit as the run record they index. Every creation and every status or
 * due-time change goes through here, so the indexes and counts never drift from the
 * records.
 *
 * @module
 */
import * as keys from "./keys.ts";
import { type RunRecord, TERMINAL } from "../model/records.ts";
import type { AtomicOperation } from "./kv.ts";

/** Value of a {@linkcode keys.runsByPipelineStatus} entry whose run is in its count. */
export const COUNTED = 1;

/** Minus one for a `sum` on a `Deno.KvU64`, which adds modulo 2^64. */
const MINUS_ONE = (1n << 64n) - 1n;

/**
 * Adds to `op` the creation of `run`: a check that its id is new, the record, its
 * indexes, its count by pipeline and status, and its due-index entry (at most 8
 * mutations).
 */
export function addRunIndexes(op: AtomicOperation, run: RunRecord): void {
  const at = run.createdAt;
  op.check({ key: keys.run(run.id), versionstamp: null })
    .set(keys.run(run.id), run)
    .set(keys.runsByTime(at, run.id), run.pipeline)
    .set(keys.runsByPipeline(run.pipeline, at, run.id), run.status)
    .set(keys.runsByStatus(run.status, at, run.id), run.pipeline)
    .set(keys.runsByPipelineStatus(run.pipeline, run.status, at, run.id), COUNTED)
    .sum(keys.runCount(run.pipeline, run.status), 1n);
  // a run imported as already ended (a history) is not active
  if (!TERMINAL.has(run.status)) op.set(keys.activeRun(run.pipeline, run.id), at);
  if (run.dueAt !== null) op.set(keys.due(run.dueAt, run.id), run.id);
}

/** Adds to `op` the due-index move from `before.dueAt` to `after.dueAt`. */
export function moveDue(op: AtomicOperation, before: RunRecord, after: RunRecord): void {
  if (before.dueAt === after.dueAt) return;
  if (before.dueAt !== null) op.delete(keys.due(before.dueAt, before.id));
  if (after.dueAt !== null) op.set(keys.due(after.dueAt, after.id), after.id);
}

/**
 * Adds to `op` the status-index move from `before.status` to `after.status`, and the move
 * of the run from one per-status count to the other: 8 mutations at most. Every status
 * change goes through here or {@linkcode addRunIndexes}, so the counts change in the
 * commits that move the index entries and never drift from them.
 */
export function moveStatus(op: AtomicOperation, before: RunRecord, after: RunRecord): void {
  if (before.status === after.status) return;
  op.delete(keys.runsByStatus(before.status, before.createdAt, before.id));
  op.set(keys.runsByStatus(after.status, after.createdAt, after.id), after.pipeline);
  op.set(keys.runsByPipeline(after.pipeline, after.createdAt, after.id), after.status);
  op.delete(keys.runsByPipelineStatus(before.pipeline, before.status, before.createdAt, before.id));
  op.set(
    keys.runsByPipelineStatus(after.pipeline, after.status, after.createdAt, after.id),
    COUNTED,
  );
  op.sum(keys.runCount(before.pipeline, before.status), MINUS_ONE);
  op.sum(keys.runCount(after.pipeline, after.status), 1n);
  if (TERMINAL.has(after.status)) op.delete(keys.activeRun(after.pipeline, after.id));
  else op.set(keys.activeRun(after.pipeline, after.id), after.createdAt);
}
