/**
 * Putting an ended run back in the queue: resume (failed and skipped steps run again)
 * and rerun (a step and its dependents run again). Step resets take as many commits as
 * KV's limits need, each fenced on the run record; the run is queued by the last one.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { UsageError } from "../model/errors.ts";
import { planRerun, planResume, recordedGraph, type StepReset } from "../model/plans.ts";
import { type RunRecord, type TaskRecord, TERMINAL } from "../model/records.ts";
import { resetTask } from "../model/transitions.ts";
import * as keys from "../kv/keys.ts";
import { moveDue, moveStatus } from "../kv/indexes.ts";
import type { PendingBlob } from "../kv/blobs.ts";
import { addWrites, commitAtomic, splitWrites } from "../kv/commit.ts";
import { reclaimRunBlobs } from "./commands.ts";
import { getItems, getSteps } from "./queries.ts";
import type { StoreParts } from "./parts.ts";
import type { AtomicOperation, KvKey } from "../kv/kv.ts";

/**
 * Puts a failed or cancelled run back in the queue: failed and skipped steps return to
 * pending with their attempts reset, checkpointed outputs stay. An active run is left
 * as it is (a worker, or the caller, continues it).
 *
 * @throws {UsageError} on a succeeded run, or a changed graph without `force`
 */
export async function resume(
  store: StoreParts,
  run: RunRecord,
  pipeline: Pipeline<unknown>,
  force = false,
): Promise<RunRecord> {
  if (!TERMINAL.has(run.status)) return run;
  const steps = await getSteps(store.kv, run.id);
  return await requeue(store, run, pipeline, planResume(run, pipeline, steps, force), steps);
}

/**
 * Reruns a finished run from one step: that step and its dependents run again with new
 * idempotency keys; other checkpoints are reused.
 *
 * @throws {UsageError} on an active run, an unknown step or a changed graph without `force`
 */
export async function rerun(
  store: StoreParts,
  run: RunRecord,
  pipeline: Pipeline<unknown>,
  from: string,
  force = false,
): Promise<RunRecord> {
  const steps = await getSteps(store.kv, run.id);
  return await requeue(store, run, pipeline, planRerun(run, pipeline, steps, from, force), steps);
}

async function requeue(
  store: StoreParts,
  run: RunRecord,
  pipeline: Pipeline<unknown>,
  resets: StepReset[],
  steps: ReadonlyMap<string, TaskRecord>,
): Promise<RunRecord> {
  // Blobs left over from before are reclaimed while the run is still ended.
  await reclaimRunBlobs(store, run.id);
  const now = store.clock.now();
  const next: RunRecord = {
    ...run,
    version: pipeline.version,
    graph: recordedGraph(pipeline),
    status: "queued",
    endedAt: null,
    error: null,
    dueAt: now,
    // its limit slot went with its end: it takes one again when claimed
    ...(run.slot != null ? { slot: null } : {}),
    ...(run.held ? { held: null } : {}),
  };
  // Groups of writes that go in one commit: a reset that drops an output stored as a blob
  // comes with the blob's pending marker, so the next claim reclaims it.
  const writes: [KvKey, unknown][][] = [];
  for (const reset of resets) {
    const owner = { step: reset.step, item: -1 };
    writes.push(resetWrites(run.id, owner, steps.get(reset.step), reset.record));
    if (reset.items === "none") continue;
    for (const [index, item] of await getItems(store.kv, run.id, reset.step)) {
      // Items go back to pending but keep their attempt count, so their history grows.
      if (reset.items === "all" || item.status !== "succeeded") {
        writes.push(resetWrites(
          run.id,
          { step: reset.step, item: index },
          item,
          resetTask(item, reset.items === "all" ? reset.record.generation : item.generation),
        ));
      }
    }
  }
  // The run record, its indexes and due entry go in the last commit, so the run is
  // queued only once every step reset is stored.
  const runEntry = await store.kv.get<RunRecord>(keys.run(run.id));
  if (!runEntry.value || runEntry.value.status !== run.status) {
    throw new UsageError(`Run ${run.id} changed while being requeued: try again`, "conflict");
  }
  // Thousands of fan-out items take several commits, each within KV's limits on
  // mutations and on key bytes (80 KiB: long names make long item keys). Each commit
  // checks the run record as the commit before left it and, until the last, writes it
  // again unchanged, so a cancel still marking this run's tasks (see `cancel.ts`) and this
  // requeue cannot interleave their batches: whichever commits second stops.
  const batches = splitWrites(writes);
  let fence: { key: KvKey; versionstamp: string | null } = runEntry;
  for (const [i, batch] of batches.entries()) {
    const op = store.kv.atomic().check(fence);
    addWrites(op, batch);
    if (i === batches.length - 1) finishRequeue(store, op, run, next);
    else op.set(keys.run(run.id), runEntry.value);
    const result = await commitAtomic(op);
    if (!result.ok) {
      throw new UsageError(`Run ${run.id} changed while being requeued: try again`, "conflict");
    }
    fence = { key: keys.run(run.id), versionstamp: result.versionstamp };
  }
  return next;
}

function finishRequeue(
  store: StoreParts,
  op: AtomicOperation,
  run: RunRecord,
  next: RunRecord,
): void {
  op.set(keys.run(run.id), next);
  moveDue(op, run, next);
  moveStatus(op, run, next);
  store.wake(op, run.id, 0);
}

/**
 * The writes that reset the record of `owner` (a step, or an item) from `before` to
 * `after`: when that drops an output stored as a blob, the blob's pending marker first.
 */
function resetWrites(
  runId: string,
  owner: { step: string; item: number },
  before: TaskRecord | undefined,
  after: TaskRecord,
): [KvKey, unknown][] {
  const key = owner.item < 0
    ? keys.step(runId, owner.step)
    : keys.item(runId, owner.step, owner.item);
  const output = before?.output;
  if (!output || !("blob" in output) || after.output === output) return [[key, after]];
  const marker: PendingBlob = { ...owner, chunks: output.blob.chunks };
  return [[keys.blobPending(runId, output.blob.id), marker], [key, after]];
}
