/**
 * Small helpers shared by the in-process tests: temporary KV files, polling, and reads
 * of the raw KV layout a test checks against.
 *
 * @module
 */
import * as keys from "../../lib/kv/keys.ts";
import assert from "node:assert/strict";
import { moveDue, moveStatus } from "../../lib/kv/indexes.ts";
import type { Kv } from "../../lib/kv/kv.ts";
import type { HeldState, RunRecord } from "../../lib/model/records.ts";

/** A temporary directory holding a KV file; removed when disposed. */
export interface TempKv extends AsyncDisposable {
  /** Path of the KV file inside the directory. */
  path: string;
}

/** Creates a temporary directory for a KV file shared by several engines. */
export async function tempKv(): Promise<TempKv> {
  const dir = await Deno.makeTempDir({ prefix: "kvflow-test-" });
  return {
    path: `${dir}/kvflow.kv`,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Waits until `check` returns true, polling every 10 ms, or fails after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 2000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await delay(10);
  }
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The times of every due-index entry of a run. */
export async function dueTimes(kv: Deno.Kv, runId: string): Promise<number[]> {
  const out: number[] = [];
  for await (const e of kv.list<string>({ prefix: keys.duePrefix() })) {
    if (e.key[3] === runId) out.push(e.key[2] as number);
  }
  return out;
}

/** Every due-index entry, of any run. */
export async function allDue(kv: Deno.Kv): Promise<Deno.KvKey[]> {
  const out: Deno.KvKey[] = [];
  for await (const e of kv.list({ prefix: keys.duePrefix() })) out.push(e.key);
  return out;
}

/** A promise with its resolve function outside. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Resolves once `signal` aborts. */
export function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) =>
    signal.addEventListener("abort", () => resolve(), { once: true })
  );
}

/** Resolves after `ms`, or at once when `signal` aborts (clearing its timer). */
export { sleep } from "../../lib/model/clock.ts";

/** What the blob keys of a KV database hold, against what its records refer to. */
export interface BlobAudit {
  /** `runId/blobId` of every blob with at least one chunk in KV. */
  stored: Set<string>;
  /** `runId/blobId` of every blob a step, item or artifact record refers to. */
  referenced: Set<string>;
  /** Stored blobs that nothing refers to. */
  unreferenced: string[];
  /** Referenced blobs without a chunk in KV (there must be none). */
  missing: string[];
  /** Pending-blob markers left (`runId/blobId`). */
  pending: string[];
}

/**
 * Audits every blob in KV, of every run: which are stored, which a step output, item
 * output or artifact refers to, and which pending markers are left.
 */
export async function auditBlobs(kv: Deno.Kv): Promise<BlobAudit> {
  // Prefixes over every run: each layout's run-level prefix without its run id.
  const all = (prefix: Deno.KvKey) => prefix.slice(0, -1);
  const referenced = new Set<string>();
  const refer = (runId: unknown, value: unknown) => {
    if (value && typeof value === "object" && "blob" in value) {
      referenced.add(`${String(runId)}/${(value.blob as { id: string }).id}`);
    }
  };
  for (const prefix of [keys.stepPrefix(""), keys.itemRunPrefix("")]) {
    for await (const e of kv.list<{ output?: unknown }>({ prefix: all(prefix) })) {
      refer(e.key[2], e.value.output);
    }
  }
  for await (const e of kv.list({ prefix: all(keys.artifactPrefix("")) })) refer(e.key[2], e.value);
  const pending: string[] = [];
  for await (const e of kv.list({ prefix: all(keys.blobPendingPrefix("")) })) {
    pending.push(`${String(e.key[2])}/${String(e.key[3])}`);
  }
  // Only the keys matter: read one chunk a blob, then skip past the rest of its chunks.
  const stored = new Set<string>();
  const blobs = all(all(keys.blobPrefix("", "")));
  let start: Deno.KvKey | undefined;
  while (true) {
    const next = await kv.list(start ? { prefix: blobs, start } : { prefix: blobs }, { limit: 1 })
      .next();
    if (next.done) break;
    const [, , runId, id] = next.value.key as [string, string, string, string];
    stored.add(`${runId}/${id}`);
    start = [...keys.blobPrefix(runId, id), Infinity];
  }
  return {
    stored,
    referenced,
    unreferenced: [...stored].filter((b) => !referenced.has(b)),
    missing: [...referenced].filter((b) => !stored.has(b)),
    pending,
  };
}

/**
 * Holds a queued run back as the claim would (flow control), to test how a hold is shown:
 * one commit, checked, indexes moved.
 */
export async function hold(kv: Kv, runId: string, held: HeldState): Promise<RunRecord> {
  const entry = await kv.get<RunRecord>(keys.run(runId));
  const before = entry.value!;
  const after: RunRecord = { ...before, held, dueAt: held.until ?? before.dueAt };
  const op = kv.atomic().check(entry).set(keys.run(runId), after);
  moveDue(op, before, after);
  moveStatus(op, before, after);
  assert.ok((await op.commit()).ok, "the hold was committed");
  return after;
}

/** Asserts that no limit slot is held in `kv`, by any run or step. */
export async function noSlots(kv: Kv): Promise<void> {
  const left = [];
  for await (const e of kv.list({ prefix: keys.allSlotsPrefix() })) left.push(e.key);
  assert.deepEqual(left, [], "no slot is left held");
}
