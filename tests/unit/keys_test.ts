import assert from "node:assert/strict";
import * as keys from "../../lib/kv/keys.ts";
import { keySize } from "../../lib/kv/keys.ts";
import { KV_KEY_BYTES } from "../../lib/kv/limits.ts";

/** A string part's size worked out from its UTF-8 bytes: type byte, bytes, NUL escapes, end. */
function stringPart(s: string): number {
  const bytes = new TextEncoder().encode(s);
  return 1 + bytes.length + bytes.filter((b) => b === 0).length + 1;
}

Deno.test("keySize() counts a string part as a type byte, its UTF-8 bytes and a terminator", () => {
  assert.equal(keySize(["kvflow"]), 8);
  assert.equal(keySize([""]), 2);
  assert.equal(keySize(["é"]), 4); // 2 bytes in UTF-8
  assert.equal(keySize(["€"]), 5); // 3 bytes in UTF-8
  assert.equal(keySize(["a\0b"]), 6); // the NUL is escaped to two bytes
  for (const s of ["run", "Zürich-Straße", "日本語のパイプライン", "\0\0", "mixed é € \0 x"]) {
    assert.equal(keySize([s]), stringPart(s), s);
  }
});

Deno.test("keySize() counts a number part as 9 bytes, whatever its value", () => {
  for (const n of [0, -1, 1.5, Date.UTC(2026, 0, 1), Number.MAX_SAFE_INTEGER]) {
    assert.equal(keySize([n]), 9, String(n));
  }
  assert.equal(keySize(keys.due(Date.UTC(2026, 0, 1), "r")), 8 + 5 + 9 + 3);
  assert.equal(keySize(keys.attempt("r", "s", -1, 3)), 8 + 9 + 3 + 3 + 9 + 9);
});

Deno.test("keySize() agrees with KV: a key it counts at 2,048 bytes is stored, one at 2,049 refused", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    for (const unit of ["a", "é", "€", "\0"]) {
      // the longest repetition keySize allows, and one more
      let n = 0;
      while (keySize(["kvflow", 7, unit.repeat(n + 1)]) <= KV_KEY_BYTES) n++;
      const fits = ["kvflow", 7, unit.repeat(n)];
      const over = ["kvflow", 7, unit.repeat(n + 1)];
      await kv.set(fits, 1);
      await assert.rejects(() => kv.set(over, 1), /key too large/i, JSON.stringify(unit));
    }
    // exactly at the limit: 8 + 9 + (2 + 2029)
    const exact = ["kvflow", 7, "a".repeat(2029)];
    assert.equal(keySize(exact), KV_KEY_BYTES);
    await kv.set(exact, 1);
  } finally {
    kv.close();
  }
});

Deno.test("keySize() counts a character outside the BMP as its four UTF-8 bytes", async () => {
  assert.equal(keySize(["😀"]), 2 + new TextEncoder().encode("😀").byteLength);
  // a lone surrogate counts as three bytes, as its replacement character takes
  assert.equal(keySize(["\ud800"]), 2 + 3);
  const kv = await Deno.openKv(":memory:");
  try {
    const base = ["kvflow", 7];
    const room = KV_KEY_BYTES - keySize([...base, ""]);
    const exact = [...base, "😀".repeat(Math.floor(room / 4)) + "a".repeat(room % 4)];
    assert.equal(keySize(exact), KV_KEY_BYTES);
    await kv.set(exact, 1);
    await assert.rejects(() => kv.set([...base, exact[2] + "a"], 1), /key too large/i);
  } finally {
    kv.close();
  }
});

Deno.test("keySize() never under-counts: any key it counts within 2,048 bytes is one KV stores", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    // characters outside the BMP (4 bytes in UTF-8) included
    for (const unit of ["😀", "a😀", "€\0"]) {
      let n = 0;
      while (keySize(["kvflow", unit.repeat(n + 1)]) <= KV_KEY_BYTES) n++;
      await kv.set(["kvflow", unit.repeat(n)], 1);
    }
  } finally {
    kv.close();
  }
});

Deno.test('every key kvflow builds starts with "kvflow"', () => {
  // keySize measures a key, taskOf and isLimitQueueMark read one: none builds one
  const builders = Object.entries(keys).filter(([name, f]) =>
    typeof f === "function" && name !== "keySize" && name !== "taskOf" &&
    name !== "isLimitQueueMark"
  ) as [string, (...args: unknown[]) => Deno.KvKey][];
  assert.ok(builders.length >= 40, `only ${builders.length} key builders found`);
  for (const [name, build] of builders) {
    const args = Array.from({ length: build.length }, (_, i) => (i % 2 ? 1 : "x"));
    const built = build(...args) as Deno.KvKey | { start: Deno.KvKey; end: Deno.KvKey };
    // a range builder gives the two ends of its range
    const ends = "start" in built ? [built.start, built.end] : [built as Deno.KvKey];
    for (const key of ends) {
      assert.equal(key[0], "kvflow", name);
      assert.ok(key.length >= 2, name);
    }
  }
});

Deno.test("a prefix is the start of the keys it lists", () => {
  const pairs: [Deno.KvKey, Deno.KvKey][] = [
    [keys.duePrefix(), keys.due(5, "r")],
    [keys.leasePrefix(), keys.lease("r")],
    [keys.stepPrefix("r"), keys.step("r", "s")],
    [keys.itemPrefix("r", "s"), keys.item("r", "s", 0)],
    [keys.itemRunPrefix("r"), keys.item("r", "s", 0)],
    [keys.attemptPrefix("r"), keys.attempt("r", "s", -1, 1)],
    [keys.blobPrefix("r", "b"), keys.blobChunk("r", "b", 0)],
    [keys.runsByTimePrefix(), keys.runsByTime(5, "r")],
    [keys.runsByPipelinePrefix("p"), keys.runsByPipeline("p", 5, "r")],
    [keys.runsByStatusPrefix("failed"), keys.runsByStatus("failed", 5, "r")],
    [
      keys.runsByPipelineStatusPrefix("p", "failed"),
      keys.runsByPipelineStatus("p", "failed", 5, "r"),
    ],
    [keys.alertPrefix("r"), keys.alert("r", 1)],
    [keys.alertOutboxPrefix(), keys.alertOutbox("r", 1)],
    [keys.activeRunPrefix("p"), keys.activeRun("p", "r")],
    [keys.limitQueuePrefix("s", "k"), keys.limitQueue("s", "k", 5, "r")],
    [keys.limitQueuePrefix("s", "k"), keys.limitQueueMark("s", "k")],
  ];
  for (const [prefix, key] of pairs) {
    assert.deepEqual(key.slice(0, prefix.length), prefix, String(key));
    assert.ok(key.length > prefix.length);
  }
});

Deno.test("taskOf() reads step, item and attempt keys back, and nothing else", () => {
  assert.deepEqual(keys.taskOf(keys.step("r", "email")), {
    step: "email",
    item: -1,
    attempt: false,
  });
  assert.deepEqual(keys.taskOf(keys.item("r", "email", 3)), {
    step: "email",
    item: 3,
    attempt: false,
  });
  assert.deepEqual(keys.taskOf(keys.attempt("r", "email", 3, 2)), {
    step: "email",
    item: 3,
    attempt: true,
  });
  assert.equal(keys.taskOf(keys.run("r")), null);
  assert.equal(keys.taskOf(keys.due(1, "r")), null);
  assert.equal(keys.taskOf(["other", "step", "r", "email"]), null);
});

Deno.test("KV lists the due-index by time, then run id, with times of any magnitude", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const entries: [number, string][] = [
      [10_000, "a"],
      [999, "z"],
      [1000, "b"],
      [1000, "a"],
      [Date.UTC(2026, 11, 4), "c"],
      [0, "m"],
    ];
    for (const [at, id] of entries) await kv.set(keys.due(at, id), id);
    const listed = [];
    for await (const e of kv.list({ prefix: keys.duePrefix() })) listed.push(e.key.slice(2));
    assert.deepEqual(listed, [
      [0, "m"],
      [999, "z"],
      [1000, "a"],
      [1000, "b"],
      [10_000, "a"],
      [Date.UTC(2026, 11, 4), "c"],
    ]);
  } finally {
    kv.close();
  }
});

Deno.test("run ids that start with their UTC creation time list in creation order", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const ids = [
      "20261204-230000-zzzzzz",
      "20251231-235959-aaaaaa",
      "20261204-225959-mmmmmm",
      "20260101-000000-bbbbbb",
    ];
    for (const id of ids) await kv.set(keys.run(id), id);
    const listed = [];
    for await (const e of kv.list<string>({ prefix: ["kvflow", "run"] })) listed.push(e.value);
    assert.deepEqual(listed, [
      "20251231-235959-aaaaaa",
      "20260101-000000-bbbbbb",
      "20261204-225959-mmmmmm",
      "20261204-230000-zzzzzz",
    ]);
    const newestFirst = [];
    for await (const e of kv.list<string>({ prefix: ["kvflow", "run"] }, { reverse: true })) {
      newestFirst.push(e.value);
    }
    assert.deepEqual(newestFirst, [...listed].reverse());
  } finally {
    kv.close();
  }
});

Deno.test("a limit key's mark is told apart from its queued runs, and is listed before them", async () => {
  assert.ok(keys.isLimitQueueMark(keys.limitQueueMark("s", "k")));
  assert.ok(!keys.isLimitQueueMark(keys.limitQueue("s", "k", 5, "r")));
  assert.ok(!keys.isLimitQueueMark(keys.limitQueuePrefix("s", "k")));
  const kv = await Deno.openKv(":memory:");
  try {
    // the earliest rank a run can have, and the mark written after it
    await kv.set(keys.limitQueue("s", "k", -Number.MAX_SAFE_INTEGER, "r"), "r");
    await kv.set(keys.limitQueueMark("s", "k"), 1);
    const listed: Deno.KvKey[] = [];
    for await (const e of kv.list({ prefix: keys.limitQueuePrefix("s", "k") })) listed.push(e.key);
    assert.deepEqual(listed, [
      keys.limitQueueMark("s", "k"),
      keys.limitQueue("s", "k", -Number.MAX_SAFE_INTEGER, "r"),
    ]);
  } finally {
    kv.close();
  }
});
