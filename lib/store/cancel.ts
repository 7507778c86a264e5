/**
 * Cancelling a run: it ends and loses its lease in one commit, then its unfinished steps
 * and items are marked in as many commits as KV's limits need.
 *
 * @module
 */
import { UsageError } from "../model/errors.ts";
import { isRunId, unknownRun } from "../model/run_id.ts";
import { type Lease, type RunRecord, TERMINAL } from "../model/records.ts";
import { cancelTask } from "../model/transitions.ts";
import * as keys from "../kv/keys.ts";
import { moveDue, moveStatus } from "../kv/indexes.ts";
import { addWrites, commitAtomic, type KvWrite, splitWrites } from "../kv/commit.ts";
import { reclaimRunBlobs } from "./commands.ts";
import { getItems, getSteps } from "./queries.ts";
import { slotFreedWrites } from "./slots.ts";
import type { StoreParts } from "./parts.ts";
import { ring, waitEndWrites } from "./events.ts";
import type { TaskRecord } from "../model/records.ts";

/**
 * Cancels an active run: takes its lease away (so its worker can write nothing more and
 * aborts its running steps), marks unfinished steps, and ends the run `cancelled`.
 *
 * @throws {UsageError} when the run already ended
 */
export async function cancel(
  store: StoreParts,
  runId: string,
  reason = "Cancelled by request",
): Promise<RunRecord> {
  if (!isRunId(runId)) throw unknownRun(runId);
  for (let tries = 0; tries < 5; tries++) {
    const [runEntry, leaseEntry] = await store.kv.getMany<[RunRecord, Lease]>([
      keys.run(runId),
      keys.lease(runId),
    ]);
    const run = runEntry.value;
    if (!run) throw unknownRun(runId);
    if (TERMINAL.has(run.status)) {
      // A cancel that stopped between its two parts left tasks open: this one ends them.
      if (run.status === "cancelled") {
        await cancelTasks(store, run, runEntry.versionstamp, reason).catch(() => {});
      }
      throw new UsageError(`Run ${runId} already ${run.status}: nothing to cancel`, "conflict");
    }
    const now = store.clock.now();
    const next: RunRecord = {
      ...run,
      status: "cancelled",
      endedAt: now,
      dueAt: null,
      error: { step: null, message: reason },
      ...(run.paused ? { paused: null } : {}),
    };
    // The run ends and loses its lease in one commit, checked against both, with its
    // running and retrying tasks marked when they fit (nearly always): a reader sees the
    // run active or cancelled, never between, and its worker is fenced out from then on.
    const children = await activeChildren(store, runId);
    const marks = splitWrites(await cancelWrites(store, next, reason));
    const op = store.kv.atomic().check(runEntry, leaseEntry).delete(keys.lease(runId))
      .delete(keys.bell(runId)).delete(keys.runPause(runId));
    op.set(keys.run(runId), next);
    moveDue(op, run, next);
    moveStatus(op, run, next);
    if (marks.length === 1) addWrites(op, marks[0]);
    // a cancelled child ends its parent's wait like any end of a child
    if (run.parent) {
      ring(store, op, run.parent.runId, run.parent.step, run.parent.item, {
        kind: "child",
        child: run.id,
        status: "cancelled",
        error: next.error,
        dueAt: now,
      });
    }
    const result = await commitAtomic(op);
    if (!result.ok) continue;
    // What did not fit, and what the worker wrote between the read above and the commit
    // (a step it started then), is marked now that nothing more of its lands. The run is
    // cancelled whatever happens here; a later cancel ends what this one could not.
    await cancelTasks(store, next, result.versionstamp, reason).catch(() => {});
    // Chunks its worker was writing when the lease went are of no use now.
    await reclaimRunBlobs(store, runId).catch(() => {});
    // Cancelling a parent cancels its children.
    for (const child of children) {
      await cancel(store, child, `Parent run ${runId} was cancelled`).catch(() => {});
    }
    return next;
  }
  throw new UsageError(`Run ${runId} kept changing while being cancelled: try again`, "conflict");
}

/** The writes that mark the running and retrying steps and items of a run cancelled. */
/** The child runs a run's waiting steps wait for. */
async function activeChildren(store: StoreParts, runId: string): Promise<string[]> {
  const children: string[] = [];
  for (const [name, record] of await getSteps(store.kv, runId)) {
    if (record.wait?.child) children.push(record.wait.child);
    if (record.items !== undefined && record.wait === undefined) {
      for (const item of (await getItems(store.kv, runId, name)).values()) {
        if (item.wait?.child) children.push(item.wait.child);
      }
    }
  }
  return children;
}

/** The writes that end a waiting task's wait: its event entries go with it (not its heads). */
function endWait(record: TaskRecord, runId: string): KvWrite[] {
  const wait = record.wait;
  if (!wait || wait.kind !== "event") return [];
  return waitEndWrites({
    runId,
    step: wait.step,
    item: wait.item,
    names: wait.events!,
    field: wait.field!,
    value: wait.value!,
  });
}

/** The writes that free the step limit slot a running task holds. */
function freeSlot(record: TaskRecord, now: number): KvWrite[] {
  if (record.status !== "running" || !record.slot) return [];
  const [scope, key, index] = record.slot;
  return [[keys.slot(...record.slot), null], ...slotFreedWrites(scope, key, index, now)];
}

async function cancelWrites(
  store: StoreParts,
  run: RunRecord,
  reason: string,
): Promise<KvWrite[][]> {
  const now = run.endedAt ?? store.clock.now();
  const writes: KvWrite[][] = [];
  for (const [name, record] of await getSteps(store.kv, run.id)) {
    if (record.items !== undefined) {
      for (const [index, item] of await getItems(store.kv, run.id, name)) {
        if (item.status === "running" || item.status === "retrying" || item.status === "waiting") {
          writes.push([
            [keys.item(run.id, name, index), cancelTask(item, now, reason)],
            ...endWait(item, run.id),
            ...freeSlot(item, now),
          ]);
        }
      }
    }
    if (
      record.status === "running" || record.status === "retrying" || record.status === "waiting"
    ) {
      writes.push([
        [keys.step(run.id, name), cancelTask(record, now, reason)],
        ...endWait(record, run.id),
        ...freeSlot(record, now),
      ]);
    }
  }
  return writes;
}

/**
 * Marks the running and retrying steps and items of a cancelled run, in as many commits
 * as KV's limits need (a fan-out may have thousands). Each commit checks the run record
 * as the commit before left it and writes it again unchanged, so a resume or rerun
 * started meanwhile (which does the same, see `requeue` in commands.ts) and this marking cannot
 * interleave their batches: once the other has committed, this one stops, and the
 * records are the other's to reset.
 */
async function cancelTasks(
  store: StoreParts,
  run: RunRecord,
  versionstamp: string,
  reason: string,
): Promise<void> {
  const writes = await cancelWrites(store, run, reason);
  if (writes.length === 0) return;
  let fence = { key: keys.run(run.id), versionstamp };
  for (const batch of splitWrites(writes)) {
    const op = store.kv.atomic().check(fence).set(keys.run(run.id), run);
    addWrites(op, batch);
    const result = await commitAtomic(op);
    if (!result.ok) return;
    fence = { key: keys.run(run.id), versionstamp: result.versionstamp };
  }
}
