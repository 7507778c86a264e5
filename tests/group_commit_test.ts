import assert from "node:assert/strict";
import { type CommitBatch, GroupCommitter } from "../lib/kv/commit.ts";

function batch(key: string, value: number, leaseStamp: string | null): CommitBatch {
  return {
    checks: 1,
    mutations: 1,
    bytes: 64,
    apply: (op) =>
      op.check({ key: ["lease", key], versionstamp: leaseStamp }).set(["v", key], value),
  };
}

Deno.test("checkpoints submitted together share one KV commit", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const committer = new GroupCommitter(kv);
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => committer.commit(batch(`r${i}`, i, null))),
    );
    assert.ok(results.every((r) => r.ok));
    for (let i = 0; i < 20; i++) assert.equal((await kv.get(["v", `r${i}`])).value, i);
    // the first goes alone (nothing in flight), the 19 that queued behind it share one
    assert.equal(committer.stats.commits, 2);
    assert.equal(committer.stats.grouped, 1);
  } finally {
    kv.close();
  }
});

Deno.test("a fenced batch in a group fails alone; the others still commit", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    await kv.set(["lease", "taken"], "another worker");
    const committer = new GroupCommitter(kv);
    const results = await Promise.all([
      committer.commit(batch("a", 1, null)),
      committer.commit(batch("b", 2, null)),
      committer.commit(batch("taken", 3, null)), // its lease changed: the check fails
      committer.commit(batch("c", 4, null)),
    ]);
    assert.deepEqual(results.map((r) => r.ok), [true, true, false, true]);
    assert.equal((await kv.get(["v", "taken"])).value, null);
    assert.equal((await kv.get(["v", "c"])).value, 4);
    assert.equal(committer.stats.fallbacks, 1);
  } finally {
    kv.close();
  }
});

Deno.test("a group never exceeds the commit limits it was given", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const committer = new GroupCommitter(kv, { checks: 3 });
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => committer.commit(batch(`k${i}`, i, null))),
    );
    assert.ok(results.every((r) => r.ok));
    // 1 alone, then 9 queued in groups of at most 3 checks
    assert.equal(committer.stats.commits, 4);
  } finally {
    kv.close();
  }
});

Deno.test("with several commits allowed in flight (remote KV), groups of at most 10 checks go out together", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    let most = 0;
    let now = 0;
    const counted = new Proxy(kv, {
      get(target, prop) {
        if (prop !== "atomic") return Reflect.get(target, prop, target).bind(target);
        return () => {
          const op = target.atomic();
          const commit = op.commit.bind(op);
          op.commit = async () => {
            most = Math.max(most, ++now);
            await new Promise((r) => setTimeout(r, 10));
            try {
              return await commit();
            } finally {
              now--;
            }
          };
          return op;
        };
      },
    });
    const remote = new GroupCommitter(counted, { checks: 10, inFlight: 3 });
    const results = await Promise.all(
      Array.from({ length: 41 }, (_, i) => remote.commit(batch(`r${i}`, i, null))),
    );
    assert.ok(results.every((r) => r.ok));
    for (let i = 0; i < 41; i++) assert.equal((await kv.get(["v", `r${i}`])).value, i);
    assert.equal(most, 3, "three commits in flight at once, no more");
    // 3 alone at first, then the 38 queued behind them in groups of at most 10 checks
    // (10, 10, 10 go out together as the first three end, then the last 8)
    assert.equal(remote.stats.commits, 3 + 4);
  } finally {
    kv.close();
  }
});

/** A batch like `batch`, with a check that every such batch makes alike, shared. */
function pausedBatch(key: string, value: number): CommitBatch {
  return { ...batch(key, value, null), shared: [{ key: ["pause"], versionstamp: null }] };
}

Deno.test("a check that many batches make alike is sent and counted once per grouped commit", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    let most = 0;
    const counted = new Proxy(kv, {
      get(target, prop) {
        if (prop !== "atomic") return Reflect.get(target, prop, target).bind(target);
        return () => {
          const op = target.atomic();
          let checks = 0;
          const check = op.check.bind(op);
          op.check = (...c) => {
            checks += c.length;
            return check(...c);
          };
          const commit = op.commit.bind(op);
          op.commit = () => {
            most = Math.max(most, checks);
            return commit();
          };
          return op;
        };
      },
    });
    const committer = new GroupCommitter(counted, { checks: 10 });
    const results = await Promise.all(
      Array.from({ length: 28 }, (_, i) => committer.commit(pausedBatch(`r${i}`, i))),
    );
    assert.ok(results.every((r) => r.ok));
    for (let i = 0; i < 28; i++) assert.equal((await kv.get(["v", `r${i}`])).value, i);
    assert.equal(most, 10, "9 own checks and the shared one, never more than the limit");
    // the first alone (2 checks), then 27 queued behind it, 9 a group
    assert.equal(committer.stats.commits, 1 + 3);
  } finally {
    kv.close();
  }
});

Deno.test("a shared check still holds: once it fails, no batch that shares it commits, alone or grouped", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    await kv.set(["pause"], true);
    const committer = new GroupCommitter(kv);
    const results = await Promise.all([
      committer.commit(pausedBatch("a", 1)),
      committer.commit(pausedBatch("b", 2)),
      committer.commit(pausedBatch("c", 3)),
      committer.commit(batch("d", 4, null)), // checks no pause: commits
    ]);
    assert.deepEqual(results.map((r) => r.ok), [false, false, false, true]);
    for (const k of ["a", "b", "c"]) assert.equal((await kv.get(["v", k])).value, null);
    assert.equal((await kv.get(["v", "d"])).value, 4);
    assert.equal(committer.stats.fallbacks, 1);
    // with grouping off, each batch committed at once checks it too
    const off = new GroupCommitter(kv, { group: false });
    assert.equal((await off.commit(pausedBatch("e", 5))).ok, false);
  } finally {
    kv.close();
  }
});
