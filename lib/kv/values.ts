/**
 * Step outputs as KV stores them: inline when small, otherwise as a blob of chunks (see
 * `blobs.ts`), written before the checkpoint that refers to it. What cannot be stored at
 * all is refused here, with a message that says what to return instead.
 *
 * @module
 */
import v8 from "node:v8";
import { NonRetryableError } from "../model/errors.ts";
import * as keys from "./keys.ts";
import { commitAtomic } from "./commit.ts";
import { INLINE_BYTES, INLINE_ESTIMATE } from "./limits.ts";
import type { Stored } from "../model/records.ts";
import { type BlobOwner, type CommitChunks, readBlob, writeBlob } from "./blobs.ts";
import type { Kv } from "./kv.ts";

/**
 * Stores a step's output, inline or as a blob pending for `owner` (see
 * {@linkcode writeBlob}).
 *
 * @throws {NonRetryableError} when the value cannot be serialized or is too large
 */
export async function encodeValue(
  kv: Kv,
  runId: string,
  value: unknown,
  owner: BlobOwner,
  commit: CommitChunks = commitAtomic,
): Promise<Stored> {
  return encodeSmall(kv, value) ?? await encodeMeasured(kv, runId, value, owner, commit);
}

/**
 * The rest of {@linkcode encodeValue}, for a value {@linkcode encodeSmall} found may be too
 * large to store inline unmeasured: measures it exactly, and stores it inline or as a blob.
 */
export async function encodeMeasured(
  kv: Kv,
  runId: string,
  value: unknown,
  owner: BlobOwner,
  commit: CommitChunks = commitAtomic,
): Promise<Stored> {
  const bytes = v8.serialize(value);
  // Stored as its compact copy: KV would write a view's whole underlying buffer, where
  // v8.serialize (and so this size) counts only the viewed bytes.
  if (bytes.byteLength < INLINE_BYTES) return { inline: v8.deserialize(bytes) };
  return { blob: await writeBlob(kv, runId, new Uint8Array(bytes), owner, commit) };
}

/**
 * The synchronous part of {@linkcode encodeValue}: a value stored inline without measuring
 * it exactly, or undefined when it may be too large for that (then `encodeValue` measures
 * it, and stores it inline or as a blob).
 *
 * @throws {NonRetryableError} when the value cannot be serialized
 */
export function encodeSmall(kv: Kv, value: unknown): Stored | undefined {
  // Numbers, booleans, null, undefined and short strings always serialize and are small:
  // no probe, no size estimate.
  const type = typeof value;
  if (
    value === null || type === "number" || type === "boolean" || type === "undefined" ||
    (type === "string" && 10 + 2 * (value as string).length < INLINE_ESTIMATE)
  ) {
    return { inline: value };
  }
  try {
    // Building (never committing) a mutation serializes the value, which rejects
    // functions, symbols and other values KV cannot store, with the offending value named.
    kv.atomic().set(keys.probe(), value);
  } catch (error) {
    throw new NonRetryableError(
      `Output is not serializable: ${error instanceof Error ? error.message : String(error)}` +
        " (return plain data: objects, arrays, strings, numbers, dates, Uint8Array)",
    );
  }
  if (estimateSize(value, INLINE_ESTIMATE) < INLINE_ESTIMATE) return { inline: value };
  return undefined;
}

/**
 * Bytes an inline output may add to a commit, for sizing group commits: an upper estimate
 * (strings at two bytes a character), capped at {@linkcode INLINE_BYTES}, the most an
 * inline output can be. Small values cost a few hundred nanoseconds to measure.
 */
export function inlineBytes(value: unknown): number {
  if (typeof value === "string") return Math.min(INLINE_BYTES, 10 + 2 * value.length);
  if (value === null || (typeof value !== "object" && typeof value !== "bigint")) return 16;
  return Math.min(INLINE_BYTES, estimateSize(value, INLINE_BYTES));
}

/** Reads back a value stored by {@linkcode encodeValue}. */
export async function decodeValue(kv: Kv, runId: string, stored: Stored): Promise<unknown> {
  if ("inline" in stored) return stored.inline;
  return v8.deserialize(await readBlob(kv, runId, stored.blob));
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
    // what KV stores of these is not enumerable: an error's message, stack and cause, and
    // a pattern's source
    else if (v instanceof Error) {
      seen.add(v);
      total += 2 * (v.name.length + v.message.length + (v.stack?.length ?? 0));
      stack.push(v.cause);
    } else if (v instanceof RegExp) total += 2 * v.source.length;
    // KV stores a view's whole buffer, not just the viewed bytes
    else if (ArrayBuffer.isView(v)) total += v.buffer.byteLength;
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
