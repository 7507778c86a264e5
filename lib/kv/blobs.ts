/**
 * Blobs: bytes too large for one KV value (a large step output, an artifact), kept as
 * chunks under their own keys and referred to by a {@linkcode BlobRef}. A blob is written
 * before the checkpoint that refers to it, so a checkpoint never points at missing bytes.
 * A driver commits chunks through its own {@linkcode CommitChunks}, fenced by its lease
 * like its checkpoints.
 *
 * A blob's first chunk commit also writes a pending marker naming the blob's owner, and
 * the checkpoint that refers to the blob deletes it. A writer that dies, loses its lease
 * or finds the disk full in between leaves the marker behind, and
 * {@linkcode reclaimBlobs} later deletes the chunks nothing refers to.
 *
 * @module
 */
import { NonRetryableError } from "../model/errors.ts";
import * as keys from "./keys.ts";
import { commitAtomic } from "./commit.ts";
import {
  BATCH_KEY_BYTES,
  BATCH_MUTATIONS,
  CHUNK_BYTES,
  CHUNKS_PER_COMMIT,
  MAX_VALUE_BYTES,
} from "./limits.ts";
import type { BlobRef, TaskRecord } from "../model/records.ts";
import type { ArtifactMeta } from "../model/artifacts.ts";
import type { AtomicOperation, Kv, KvCommitError, KvCommitResult, KvKey } from "./kv.ts";

/**
 * What refers to a blob once it is checkpointed: a step's output (item -1), an item's
 * output, or an artifact.
 */
export type BlobOwner = { step: string; item: number } | { artifact: string };

/** The value of a {@linkcode keys.blobPending} marker: the blob's owner and its chunk count. */
export type PendingBlob = BlobOwner & { chunks: number };

/**
 * Commits one atomic operation of chunk writes; `ok: false` means the writer may no longer
 * write (its lease is gone). Default: {@linkcode commitAtomic}, unfenced.
 */
export type CommitChunks = (
  op: AtomicOperation,
) => Promise<KvCommitResult | KvCommitError>;

/**
 * Writes bytes as chunks under a new blob id, in as many commits as the limits need; the
 * first also writes the blob's pending marker for `owner`, which the commit that makes
 * `owner` refer to the blob must delete. When a commit fails, the chunks of earlier
 * commits and the marker are deleted as far as `commit` still allows; what it refuses is
 * left to {@linkcode reclaimBlobs}.
 *
 * @throws {NonRetryableError} when the bytes exceed {@linkcode MAX_VALUE_BYTES}
 * @throws {Error} when `commit` refuses a commit, or what it throws
 */
export async function writeBlob(
  kv: Kv,
  runId: string,
  bytes: Uint8Array,
  owner: BlobOwner,
  commit: CommitChunks = commitAtomic,
): Promise<BlobRef> {
  if (bytes.byteLength > MAX_VALUE_BYTES) {
    throw new NonRetryableError(
      `Value too large to store: ${bytes.byteLength} bytes (limit ${MAX_VALUE_BYTES})`,
    );
  }
  const id = crypto.randomUUID();
  const chunks = Math.max(1, Math.ceil(bytes.byteLength / CHUNK_BYTES));
  for (let first = 0; first < chunks; first += CHUNKS_PER_COMMIT) {
    const build = () => {
      const op = kv.atomic();
      if (first === 0) {
        op.set(keys.blobPending(runId, id), { ...owner, chunks } satisfies PendingBlob);
      }
      for (let i = first; i < Math.min(chunks, first + CHUNKS_PER_COMMIT); i++) {
        op.set(
          keys.blobChunk(runId, id, i),
          bytes.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES),
        );
      }
      return op;
    };
    let result: KvCommitResult | KvCommitError;
    try {
      result = await commit(build());
      // once more when refused: a fenced commit may have found its lease re-stamped by a
      // pause (same holder), and checks the new stamp now; a lost lease refuses it again
      if (!result.ok) result = await commit(build());
    } catch (error) {
      await dropBlob(kv, runId, id, first, commit);
      throw error;
    }
    if (!result.ok) {
      await dropBlob(kv, runId, id, first, commit);
      throw new Error(`Could not store chunks of blob ${id}: the write was refused`);
    }
  }
  return { id, size: bytes.byteLength, chunks };
}

/** Deletes the first `written` chunks and the marker of a blob that could not be written whole. */
async function dropBlob(
  kv: Kv,
  runId: string,
  id: string,
  written: number,
  commit: CommitChunks,
): Promise<void> {
  if (written === 0) return;
  try {
    if (await deleteChunks(kv, runId, id, written, commit)) {
      await commit(kv.atomic().delete(keys.blobPending(runId, id)));
    }
  } catch {
    // A full disk refuses this too: the marker stays, and a later sweep reclaims the chunks.
  }
}

/**
 * Deletes chunks 0 to `count - 1` of a blob (those never written cost nothing), in commits
 * within KV's limits.
 *
 * @returns false when `commit` refused one: the rest of the chunks are left in place
 */
async function deleteChunks(
  kv: Kv,
  runId: string,
  id: string,
  count: number,
  commit: CommitChunks,
): Promise<boolean> {
  let op = kv.atomic();
  let deletes = 0;
  let keyBytes = 0;
  for (let i = 0; i < count; i++) {
    const key = keys.blobChunk(runId, id, i);
    const size = keys.keySize(key);
    if (deletes === BATCH_MUTATIONS || keyBytes + size > BATCH_KEY_BYTES) {
      if (!(await commit(op)).ok) return false;
      op = kv.atomic();
      deletes = 0;
      keyBytes = 0;
    }
    op.delete(key);
    deletes++;
    keyBytes += size;
  }
  return deletes === 0 || (await commit(op)).ok;
}

/**
 * Reclaims a run's pending blobs: deletes the chunks of each blob its marker's owner does
 * not refer to, then the marker (a marker whose blob is referred to, because the commit
 * that referred to it was cut short before deleting it, is just deleted).
 *
 * Call it only where no writer can still make an owner refer to a pending blob: right
 * after a claim, fenced by the new lease (earlier holders are fenced out), or on an ended
 * run, fenced by its unchanged record. `commit` adds that fence; once it refuses a
 * commit, the sweep stops and leaves the rest to a later one.
 *
 * @returns how many blobs' chunks it deleted
 * @throws what `commit` throws
 */
export async function reclaimBlobs(
  kv: Kv,
  runId: string,
  commit: CommitChunks,
): Promise<number> {
  let reclaimed = 0;
  for await (const marker of kv.list<PendingBlob>({ prefix: keys.blobPendingPrefix(runId) })) {
    const id = marker.key[marker.key.length - 1] as string;
    const owner = await kv.get(ownerKey(runId, marker.value));
    if (!refersTo(owner.value, marker.value, id)) {
      if (!(await deleteChunks(kv, runId, id, marker.value.chunks, commit))) return reclaimed;
      reclaimed++;
    }
    const op = kv.atomic().check(marker, owner).delete(marker.key);
    if (!(await commit(op)).ok) return reclaimed;
  }
  return reclaimed;
}

/** The key of the record that refers to a blob of `owner` once it is checkpointed. */
function ownerKey(runId: string, owner: BlobOwner): KvKey {
  if ("artifact" in owner) return keys.artifact(runId, owner.artifact);
  return owner.item < 0 ? keys.step(runId, owner.step) : keys.item(runId, owner.step, owner.item);
}

/** Whether a stored owner record (a task record or artifact metadata) refers to blob `id`. */
function refersTo(record: unknown, owner: BlobOwner, id: string): boolean {
  if (record === null) return false;
  if ("artifact" in owner) return (record as ArtifactMeta).blob?.id === id;
  const output = (record as TaskRecord).output;
  return output !== undefined && "blob" in output && output.blob.id === id;
}

/**
 * Reads a blob's bytes back.
 *
 * @throws {Error} when chunks are missing
 */
export async function readBlob(kv: Kv, runId: string, ref: BlobRef): Promise<Uint8Array> {
  const out = new Uint8Array(ref.size);
  let offset = 0;
  let count = 0;
  for await (const entry of kv.list<Uint8Array>({ prefix: keys.blobPrefix(runId, ref.id) })) {
    out.set(entry.value, offset);
    offset += entry.value.byteLength;
    count++;
  }
  if (count !== ref.chunks || offset !== ref.size) {
    throw new Error(
      `Blob ${ref.id} of run ${runId} is incomplete: ${count}/${ref.chunks} chunks, ${offset}/${ref.size} bytes`,
    );
  }
  return out;
}
