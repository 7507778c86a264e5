import assert from "node:assert/strict";
import v8 from "node:v8";
import { type KvWrite, splitWrites } from "../../lib/kv/commit.ts";
import { keySize } from "../../lib/kv/keys.ts";
import { BATCH_BYTES, BATCH_KEY_BYTES, BATCH_MUTATIONS } from "../../lib/kv/limits.ts";

const write = (i: number, value: unknown = i): KvWrite => [["kvflow", "step", "r", i], value];

function groupsOf(size: number, count: number, value?: (i: number) => unknown): KvWrite[][] {
  return Array.from(
    { length: count },
    (_, g) =>
      Array.from({ length: size }, (_, j) => {
        const i = g * size + j;
        return write(i, value ? value(i) : i);
      }),
  );
}

function measure(batch: readonly KvWrite[]): { keyBytes: number; bytes: number } {
  let keyBytes = 0;
  let bytes = 0;
  for (const [key, value] of batch) {
    keyBytes += keySize(key);
    bytes += keySize(key) + (value === null ? 0 : v8.serialize(value).byteLength);
  }
  return { keyBytes, bytes };
}

Deno.test("splitWrites() of nothing is one empty batch", () => {
  assert.deepEqual(splitWrites([]), [[]]);
  assert.deepEqual(splitWrites([[], []]), [[]]);
});

Deno.test("splitWrites() keeps small groups in one batch, in order", () => {
  const groups = groupsOf(3, 5);
  assert.deepEqual(splitWrites(groups), [groups.flat()]);
});

Deno.test("splitWrites() starts a new batch at 900 mutations and never splits a group", () => {
  // 200 groups of 7: 128 groups (896 writes) fit in 900, the rest go to a second batch
  const groups = groupsOf(7, 200);
  const batches = splitWrites(groups);
  assert.deepEqual(batches.map((b) => b.length), [896, 504]);
  assert.deepEqual(batches.flat(), groups.flat());
  assert.ok(batches.every((b) => b.length <= BATCH_MUTATIONS));
});

Deno.test("splitWrites() fills a batch with exactly 900 single writes", () => {
  const batches = splitWrites(groupsOf(1, 1801));
  assert.deepEqual(batches.map((b) => b.length), [900, 900, 1]);
});

Deno.test("splitWrites() starts a new batch before 60,000 bytes of keys", () => {
  // each key: 8 + 6 + (2 + 1000) + 9 = 1025 bytes, so 58 keys fit in 60,000 (59,450)
  const key = (i: number): Deno.KvKey => ["kvflow", "step", "k".repeat(1000), i];
  assert.equal(keySize(key(0)), 1025);
  const groups = Array.from({ length: 120 }, (_, i) => [[key(i), null] as KvWrite]);
  const batches = splitWrites(groups);
  assert.deepEqual(batches.map((b) => b.length), [58, 58, 4]);
  for (const b of batches) assert.ok(measure(b).keyBytes <= BATCH_KEY_BYTES);
});

Deno.test("splitWrites() starts a new batch before 600,000 bytes of keys and values", () => {
  // each value serializes to 50,007 bytes: 11 writes fit in 600,000, 12 do not
  const value = new Uint8Array(50_000);
  const groups = groupsOf(1, 30, () => value);
  const batches = splitWrites(groups);
  assert.deepEqual(batches.map((b) => b.length), [11, 11, 8]);
  for (const b of batches) assert.ok(measure(b).bytes <= BATCH_BYTES);
});

Deno.test("splitWrites() gives a group larger than a batch a batch of its own, unsplit", () => {
  const small = groupsOf(2, 1);
  const huge = groupsOf(1000, 1)[0].map(([key], i) => [[...key, "huge"], i] as KvWrite);
  const after = groupsOf(2, 1);
  const batches = splitWrites([...small, huge, ...after]);
  assert.deepEqual(batches.map((b) => b.length), [2, 1000, 2]);
  assert.deepEqual(batches[1], huge);
});

Deno.test("splitWrites() packs a mix so that no batch breaks a budget and the order is kept", () => {
  const groups: KvWrite[][] = [];
  for (let g = 0; g < 400; g++) {
    const size = 1 + (g * 7) % 11;
    groups.push(
      Array.from({ length: size }, (_, j) =>
        [
          ["kvflow", "item", "r".repeat(g % 50), g, j],
          g % 5 === 0 ? null : "v".repeat((g * 131) % 4000),
        ] as KvWrite),
    );
  }
  const batches = splitWrites(groups);
  assert.ok(batches.length > 1);
  assert.deepEqual(batches.flat(), groups.flat());
  let g = 0;
  for (const batch of batches) {
    const m = measure(batch);
    assert.ok(batch.length <= BATCH_MUTATIONS && m.keyBytes <= BATCH_KEY_BYTES);
    assert.ok(m.bytes <= BATCH_BYTES);
    // every batch is a run of whole groups
    let n = 0;
    while (n < batch.length) n += groups[g++].length;
    assert.equal(n, batch.length);
  }
  assert.equal(g, groups.length);
});
