import assert from "node:assert/strict";
import { MinHeap } from "../../lib/engine/driver/min_heap.ts";

/** A small deterministic generator, so a failure can be replayed. */
function numbers(seed: number, n: number, max: number): number[] {
  const out: number[] = [];
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1_103_515_245 + 12_345) % 2 ** 31;
    out.push(x % max);
  }
  return out;
}

Deno.test("MinHeap pops entries in ascending order, duplicates included", () => {
  for (const seed of [1, 7, 42]) {
    const values = numbers(seed, 1000, 100);
    const heap = new MinHeap<number>((a, b) => a < b);
    for (const v of values) heap.push(v);
    assert.equal(heap.size, 1000);
    const out: number[] = [];
    while (heap.size > 0) out.push(heap.pop()!);
    assert.deepEqual(out, [...values].sort((a, b) => a - b));
  }
});

Deno.test("MinHeap orders by the given `before`, so it can be a max-heap or order records", () => {
  const max = new MinHeap<number>((a, b) => a > b);
  for (const v of [3, 9, 1, 7]) max.push(v);
  assert.deepEqual([max.pop(), max.pop(), max.pop(), max.pop()], [9, 7, 3, 1]);

  const retries = new MinHeap<{ at: number; item: number }>((a, b) => a.at < b.at);
  retries.push({ at: 300, item: 0 });
  retries.push({ at: 100, item: 1 });
  retries.push({ at: 200, item: 2 });
  assert.deepEqual(retries.pop(), { at: 100, item: 1 });
  assert.deepEqual(retries.peek(), { at: 200, item: 2 });
});

Deno.test("MinHeap.peek() shows the first entry without removing it", () => {
  const heap = new MinHeap<number>((a, b) => a < b);
  heap.push(5);
  heap.push(2);
  assert.equal(heap.peek(), 2);
  assert.equal(heap.size, 2);
  assert.equal(heap.pop(), 2);
  assert.equal(heap.peek(), 5);
});

Deno.test("MinHeap on empty: peek() and pop() give undefined, size stays 0", () => {
  const heap = new MinHeap<number>((a, b) => a < b);
  assert.equal(heap.peek(), undefined);
  assert.equal(heap.pop(), undefined);
  assert.equal(heap.size, 0);
  heap.push(1);
  assert.equal(heap.pop(), 1);
  assert.equal(heap.pop(), undefined);
  assert.equal(heap.size, 0);
});

Deno.test("MinHeap keeps order when pushes and pops interleave", () => {
  const heap = new MinHeap<number>((a, b) => a < b);
  const model: number[] = [];
  const ops = numbers(3, 2000, 1000);
  for (const [i, v] of ops.entries()) {
    if (i % 3 === 2) {
      model.sort((a, b) => a - b);
      assert.equal(heap.pop(), model.shift());
    } else {
      heap.push(v);
      model.push(v);
    }
    assert.equal(heap.size, model.length);
  }
});
