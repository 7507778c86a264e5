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
import type { AtomicOperation, KvKey } from "./kv.ts";
import { PRIORITY_STEP_MS } from "../define/flow.ts";

/**
 * The time of a run's due-index entry, or null when it has none. A queued run that has
 * not started is listed earlier by its priority's credit ({@linkcode PRIORITY_STEP_MS}
 * per level), so workers with no room to spare claim it first, and a run that waited
 * longer overtakes it (age lifts priority); it is due at once all the same. Any other
 * run is listed at its due time.
 */
export function dueIndexTime(run: RunRecord): number | null {
  if (run.dueAt === null) return null;
  if (!run.priority || run.status !== "queued" || run.startedAt !== null || run.held) {
    return run.dueAt;
  }
  return run.dueAt - run.priority * PRIORITY_STEP_MS;
}

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
  const due = dueIndexTime(run);
  if (due !== null) op.set(keys.due(due, run.id), run.id);
}

/** Adds to `op` the due-index move from `before`'s entry to `after`'s (see {@linkcode dueIndexTime}). */
export function moveDue(op: AtomicOperation, before: RunRecord, after: RunRecord): void {
  const from = dueIndexTime(before), to = dueIndexTime(after);
  if (from === to) return;
  if (from !== null) op.delete(keys.due(from, before.id));
  if (to !== null) op.set(keys.due(to, after.id), after.id);
}

/**
 * Adds to `op` the status-index move from `before.status` to `after.status`, and the move
 * of the run from one per-status count to the other: 8 mutations at most. Every status
 * change goes through here or {@linkcode addRunIndexes}, so the counts change in the
 * commits that move the index entries and never drift from them. The end of a run under
 * a limit also frees what it holds there: 12 mutations at most.
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
  if (TERMINAL.has(after.status)) {
    op.delete(keys.activeRun(after.pipeline, after.id));
    releaseLimit(op, before, after);
  } else op.set(keys.activeRun(after.pipeline, after.id), after.createdAt);
}

/**
 * Adds to `op` the release of what an ending run holds under its limit: its slot, with a
 * gate that makes the next queued run of its key due (`store/flow.ts`), or its place in
 * the key's queue when it never got one.
 */
function releaseLimit(op: AtomicOperation, before: RunRecord, after: RunRecord): void {
  const limit = before.flow?.limit;
  if (!limit) return;
  const { scope, key } = limit;
  if (before.slot == null) {
    op.delete(keys.limitQueue(scope, key, queueRank(before), before.id));
    return;
  }
  const at = after.endedAt ?? after.createdAt;
  op.delete(keys.slot(scope, key, before.slot)).set(keys.limitRelease(scope, key), at);
  const value: GateDue = { gate: [limit.scope, limit.key, limit.max] };
  op.set(releaseGate(after), value);
}

/**
 * How long after a run's end the gate of its freed slot comes due. The worker that ended
 * the run wakes the next queued run itself at once and deletes the gate (in a commit it
 * shares with other gates); the gate opens only when that worker died in between.
 */
export const RELEASE_GATE_DELAY_MS = 1_000;

/**
 * The due-index key of the gate an ended run's freed slot leaves (one per run, so the
 * worker that ended it may delete it without a check).
 */
export function releaseGate(run: RunRecord): KvKey {
  const limit = run.flow!.limit!;
  const at = (run.endedAt ?? run.createdAt) + RELEASE_GATE_DELAY_MS;
  return keys.due(at, `${gateId(limit.scope, limit.key)} ${run.id}`);
}

/** The value of a gate's due-index entry: the limit key whose slot was freed. */
export interface GateDue {
  gate: [scope: string, key: string, max: number];
}

/** A run's place in its limit key's queue: earlier creation and higher priority first. */
export function queueRank(run: RunRecord): number {
  return run.createdAt - (run.priority ?? 0) * PRIORITY_STEP_MS;
}

/** Adds to `op` a gate that makes the first queued runs of a limit key due at `at`. */
export function addGate(
  op: AtomicOperation,
  at: number,
  limit: { scope: string; key: string; max: number },
): void {
  op.set(...gate(at, limit));
}

/**
 * A gate that makes the first queued runs of a limit key due at `at`: its due-index key
 * (`tag` tells gates of one key and time apart) and value. The queued runs' own limit
 * says how many (`store/flow.ts`); `max` counts when they have none.
 */
export function gate(
  at: number,
  limit: { scope: string; key: string; max: number },
  tag?: string,
): [KvKey, GateDue] {
  const id = gateId(limit.scope, limit.key);
  return [
    keys.due(at, tag === undefined ? id : `${id} ${tag}`),
    { gate: [limit.scope, limit.key, limit.max] },
  ];
}

function gateId(scope: string, key: string): string {
  return `limit ${scope} ${key}`;
}
