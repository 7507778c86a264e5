/**
 * Storing values that may exceed KV's 64 KiB value limit: step outputs are kept inline
 * when small and split into chunks under their own keys when large; artifacts are always
 * chunks. A chunked value is written before the checkpoint that refers to it, so a
 * checkpoint never points at missing bytes. A driver commits chunks through its own
 * {@linkcode CommitChunks}, fenced by its lease like its checkpoints.
 *
 * @module
 */
import v8 from "node:v8";
import { NonRetryableError } from "./errors.ts";
import * as keys from "./keys.ts";
import { commitAtomic } from "./atomic.ts";
import type { BlobRef, Stored } from "./run_state.ts";

/** Bytes per chunk: under the 64 KiB value limit with room for the encoding. */
export const CHUNK_BYTES = 60_000;
/** Chunks per commit: under the 800 KiB commit limit. */
const CHUNKS_PER_COMMIT = 12;
/** Estimated size under which a value is stored inline without measuring it exactly. */
const INLINE_ESTIMATE = 24_000;
/** Exact serialized size under which a value is stored inline. */
const INLINE_BYTES = 48_000;
/** Largest value kvflow stores, inline or chunked. */
export const MAX_VALUE_BYTES = 256 * 1024 * 1024;

/**
 * Commits one atomic operation of chunk writes; `ok: false` means the writer may no longer
 * write (its lease is gone). Default: {@linkcode commitAtomic}, unfenced.
 */
export type CommitChunks = (
  op: Deno.AtomicOperation,
) => Promise<Deno.KvCommitResult | Deno.KvCommitError>;

/**
 * Stores a step's output, inline or as a blob.
 *
 * @throws {NonRetryableError} when the value cannot be serialized or is too large
 */
export async function encodeValue(
  kv: Deno.Kv,
  runId: string,
  value: unknown,
  commit: CommitChunks = commitAtomic,
): Promise<Stored> {
  try {
    // Building (never committing) a mutation serializes the value, which rejects
    // functions, symbols and other values KV cannot store, with the offending value named.
    kv.atomic().set(["kvflow", "probe"], value);
  } catch (error) {
    throw new NonRetryableError(
      `Output is not serializable: ${error instanceof Error ? error.message : String(error)}` +
        " (return plain data: objects, arrays, strings, numbers, dates, Uint8Array)",
    );
  }
  if (estimateSize(value, INLINE_ESTIMATE) < INLINE_ESTIMATE) return { inline: value };
  const bytes = v8.serialize(value);
  if (bytes.byteLength < INLINE_BYTES) return { inline: value };
  return { blob: await writeBlob(kv, runId, new Uint8Array(bytes), commit) };
}

/** Reads back a value stored by {@linkcode encodeValue}. */
export async function decodeValue(kv: Deno.Kv, runId: string, stored: Stored): Promise<unknown> {
  if ("inline" in stored) return stored.inline;
  return v8.deserialize(await readBlob(kv, runId, stored.blob));
}

/**
 * Writes bytes as chunks under a new blob id, in as many commits as the limits need.
 * When a commit fails, the chunks of earlier commits are deleted (as far as `commit`
 * still allows), so no partial blob is left behind.
 *
 * @throws {NonRetryableError} when the bytes exceed {@linkcode MAX_VALUE_BYTES}
 * @throws {Error} when `commit` refuses a commit, or what it throws
 */
export async function writeBlob(
  kv: Deno.Kv,
  runId: string,
  bytes: Uint8Array,
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
    const op = kv.atomic();
    for (let i = first; i < Math.min(chunks, first + CHUNKS_PER_COMMIT); i++) {
      op.set(keys.blobChunk(runId, id, i), bytes.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES));
    }
    let result: Deno.KvCommitResult | Deno.KvCommitError;
    try {
      result = await commit(op);
    } catch (error) {
      await dropChunks(kv, runId, id, first, commit);
      throw error;
    }
    if (!result.ok) {
      await dropChunks(kv, runId, id, first, commit);
      throw new Error(`Could not store chunks of blob ${id}: the write was refused`);
    }
  }
  return { id, size: bytes.byteLength, chunks };
}

/** Deletes the first `count` chunks of a blob that could not be written whole; best effort. */
async function dropChunks(
  kv: Deno.Kv,
  runId: string,
  id: string,
  count: number,
  commit: CommitChunks,
): Promise<void> {
  for (let first = 0; first < count; first += CHUNKS_PER_COMMIT) {
    const op = kv.atomic();
    for (let i = first; i < Math.min(count, first + CHUNKS_PER_COMMIT); i++) {
      op.delete(keys.blobChunk(runId, id, i));
    }
    // A full disk or a lost lease may refuse this too: the chunks then stay unreferenced.
    if (!(await commit(op).catch(() => ({ ok: false }))).ok) return;
  }
}

/**
 * Reads a blob's bytes back.
 *
 * @throws {Error} when chunks are missing
 */
export async function readBlob(kv: Deno.Kv, runId: string, ref: BlobRef): Promise<Uint8Array> {
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

/**
 * A quick upper estimate of a value's serialized size that stops once it passes `limit`.
 * Strings count two bytes a character, so the estimate is never below the real size.
 */
function estimateSize(value: unknown, limit: number): number {
  let total = 0;
  const stack: unknown[] = [value];
  const seen = new Set<object>();
  while (stack.length > 0 && total < limit) {
    const v = stack.pop();
    total += 10;
    if (typeof v === "string") total += v.length * 2;
    else if (typeof v === "bigint") total += v.toString(16).length;
    else if (v === null || typeof v !== "object" || v instanceof Date) continue;
    else if (seen.has(v)) continue;
    else if (ArrayBuffer.isView(v)) total += v.byteLength;
    else if (v instanceof ArrayBuffer) total += v.byteLength;
    else if (v instanceof Map) {
      seen.add(v);
      for (const [k, x] of v) stack.push(k, x);
    } else if (v instanceof Set) {
      seen.add(v);
      for (const x of v) stack.push(x);
    } else {
      seen.add(v);
      for (const k in v) {
        total += k.length * 2;
        stack.push((v as Record<string, unknown>)[k]);
      }
    }
  }
  return total;
}
