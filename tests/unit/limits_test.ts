import assert from "node:assert/strict";
import v8 from "node:v8";
import * as keys from "../../lib/kv/keys.ts";
import { keySize } from "../../lib/kv/keys.ts";
import {
  BATCH_BYTES,
  BATCH_KEY_BYTES,
  BATCH_MUTATIONS,
  CHUNK_BYTES,
  CHUNKS_PER_COMMIT,
  KV_COMMIT_BYTES,
  KV_COMMIT_KEY_BYTES,
  KV_COMMIT_MUTATIONS,
  KV_KEY_BYTES,
  KV_VALUE_BYTES,
  MAX_RUN_RECORD_BYTES,
  MAX_VALUE_BYTES,
} from "../../lib/kv/limits.ts";

/** A string whose structured-serialized size is exactly `bytes`. */
function valueOf(bytes: number): string {
  let n = bytes;
  while (v8.serialize("v".repeat(n)).byteLength > bytes) n--;
  const s = "v".repeat(n);
  assert.equal(v8.serialize(s).byteLength, bytes);
  return s;
}

async function withKv(fn: (kv: Deno.Kv) => Promise<void>): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  try {
    await fn(kv);
  } finally {
    kv.close();
  }
}

Deno.test("KV's limits are as limits.ts states them: 2 KiB a key, 64 KiB a value, 1,000 mutations", async () => {
  assert.equal(KV_KEY_BYTES, 2048);
  assert.equal(KV_VALUE_BYTES, 64 * 1024);
  await withKv(async (kv) => {
    await kv.set(["v"], valueOf(KV_VALUE_BYTES));
    await assert.rejects(() => kv.set(["v"], valueOf(KV_VALUE_BYTES + 1)), /too large/);
    const full = kv.atomic();
    for (let i = 0; i < KV_COMMIT_MUTATIONS; i++) full.set(["m", i], i);
    assert.equal((await full.commit()).ok, true);
    const over = kv.atomic();
    for (let i = 0; i <= KV_COMMIT_MUTATIONS; i++) over.set(["m", i], i);
    await assert.rejects(() => over.commit(), /Too many mutations/);
  });
});

Deno.test("KV refuses a commit over 80 KiB of keys or 800 KiB in all, as limits.ts states", async () => {
  await withKv(async (kv) => {
    // 40 keys of 2,000 bytes fit in 80 KiB (81,920); 41 do not
    const key = (i: number) => ["k", i, "x".repeat(2000 - 3 - 9 - 2)];
    assert.equal(keySize(key(0)), 2000);
    const keysOnly = (n: number) => {
      const op = kv.atomic();
      for (let i = 0; i < n; i++) op.set(key(i), 0);
      return op.commit();
    };
    assert.equal((await keysOnly(Math.floor(KV_COMMIT_KEY_BYTES / 2000))).ok, true);
    await assert.rejects(() => keysOnly(Math.floor(KV_COMMIT_KEY_BYTES / 2000) + 1), /key size/);
    // 12 full values fit in 800 KiB (819,200); 13 do not
    const big = valueOf(KV_VALUE_BYTES - 20);
    const values = (n: number) => {
      const op = kv.atomic();
      for (let i = 0; i < n; i++) op.set(["b", i], big);
      return op.commit();
    };
    assert.equal((await values(Math.floor(KV_COMMIT_BYTES / KV_VALUE_BYTES))).ok, true);
    await assert.rejects(
      () => values(Math.floor(KV_COMMIT_BYTES / KV_VALUE_BYTES) + 1),
      /too large/,
    );
  });
});

Deno.test("kvflow's budgets stay under KV's limits, with chunks fitting values and batches", () => {
  assert.ok(BATCH_MUTATIONS < KV_COMMIT_MUTATIONS);
  assert.ok(BATCH_KEY_BYTES < KV_COMMIT_KEY_BYTES);
  assert.ok(BATCH_BYTES < KV_COMMIT_BYTES);
  assert.ok(CHUNK_BYTES < KV_VALUE_BYTES);
  assert.ok(v8.serialize(new Uint8Array(CHUNK_BYTES)).byteLength <= KV_VALUE_BYTES);
  // a blob's chunks are committed on their own, with only its pending marker beside them
  assert.ok(CHUNK_BYTES * CHUNKS_PER_COMMIT + KV_VALUE_BYTES <= KV_COMMIT_BYTES);
  assert.ok(MAX_RUN_RECORD_BYTES < KV_VALUE_BYTES);
  assert.ok(MAX_VALUE_BYTES / CHUNK_BYTES < 2 ** 32, "a chunk index fits a key part");
});

Deno.test("a batch at every budget plus a 64 KiB run record and its index moves is one commit KV accepts", async () => {
  const pipeline = "p".repeat(100); // the longest pipeline name
  const runId = "r".repeat(200); // the longest run id
  const at = Date.UTC(2026, 11, 4);
  // 900 writes that use the whole key and byte budgets
  // ["kvflow", "item", id, "s", i] takes 8 + 6 + (2 + id) + 3 + 9 bytes
  const idLength = Math.floor(BATCH_KEY_BYTES / BATCH_MUTATIONS) - 28;
  const taskKey = (i: number) => ["kvflow", "item", runId.slice(0, idLength), "s", i];
  const perKey = keySize(taskKey(0));
  assert.ok(perKey * BATCH_MUTATIONS <= BATCH_KEY_BYTES);
  const taskValue = valueOf(Math.floor(BATCH_BYTES / BATCH_MUTATIONS) - perKey);
  const batchBytes = BATCH_MUTATIONS * (perKey + v8.serialize(taskValue).byteLength);
  assert.ok(batchBytes <= BATCH_BYTES && batchBytes > BATCH_BYTES - BATCH_MUTATIONS);

  await withKv(async (kv) => {
    const leaseEntry = await kv.get(keys.lease(runId));
    const op = kv.atomic().check(leaseEntry);
    for (let i = 0; i < BATCH_MUTATIONS; i++) op.set(taskKey(i), taskValue);
    // the run record at KV's value limit, and every index a status change moves
    op.set(keys.run(runId), valueOf(KV_VALUE_BYTES));
    op.delete(keys.runsByStatus("running", at, runId));
    op.set(keys.runsByStatus("failed", at, runId), 1);
    op.delete(keys.runsByPipelineStatus(pipeline, "running", at, runId));
    op.set(keys.runsByPipelineStatus(pipeline, "failed", at, runId), 1);
    op.sum(keys.runCount(pipeline, "running"), 0xffffffffffffffffn);
    op.sum(keys.runCount(pipeline, "failed"), 1n);
    op.delete(keys.due(at, runId));
    op.delete(keys.lease(runId));
    op.delete(keys.activeRun(pipeline, runId));
    op.set(keys.alert(runId, 1), valueOf(2000));
    op.set(keys.alertOutbox(runId, 1), at);
    op.enqueue({ kvflow: "run", runId }, { delay: 1000 });
    assert.equal((await op.commit()).ok, true);
  });
});

Deno.test("a commit of CHUNKS_PER_COMMIT full chunks and a blob's pending marker is one KV accepts", async () => {
  const runId = "r".repeat(200);
  const blobId = crypto.randomUUID();
  await withKv(async (kv) => {
    const op = kv.atomic();
    op.set(keys.blobPending(runId, blobId), { step: "s".repeat(100), item: -1, chunks: 99 });
    for (let i = 0; i < CHUNKS_PER_COMMIT; i++) {
      op.set(keys.blobChunk(runId, blobId, i), new Uint8Array(CHUNK_BYTES).fill(i));
    }
    assert.equal((await op.commit()).ok, true);
    const last = await kv.get<Uint8Array>(keys.blobChunk(runId, blobId, CHUNKS_PER_COMMIT - 1));
    assert.equal(last.value?.byteLength, CHUNK_BYTES);
  });
});
