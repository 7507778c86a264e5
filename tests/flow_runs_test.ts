import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, pipeline, sleep, step, UsageError } from "../lib/mod.ts";
import { TestClock } from "../lib/testing/mod.ts";
import * as keys from "../lib/kv/keys.ts";
import type { RunRecord } from "../lib/model/records.ts";
import { aborted, deferred, delay, waitFor } from "./_support/helpers.ts";

const byCustomer = z.object({ customer: z.string() });

/** Counts a body's runs at once per key, and the most ever seen. */
function concurrency() {
  const now = new Map<string, number>();
  const most = new Map<string, number>();
  return {
    most,
    enter(key: string) {
      const n = (now.get(key) ?? 0) + 1;
      now.set(key, n);
      most.set(key, Math.max(most.get(key) ?? 0, n));
    },
    leave(key: string) {
      now.set(key, now.get(key)! - 1);
    },
  };
}

async function flowLeftovers(kv: Deno.Kv): Promise<{ slots: number; queued: number }> {
  let slots = 0, queued = 0;
  for await (const _ of kv.list({ prefix: keys.allSlotsPrefix() })) slots++;
  for await (const e of kv.list({ prefix: [keys.allSlotsPrefix()[0], "limit_queue"] })) {
    if (!keys.isLimitQueueMark(e.key)) queued++;
  }
  return { slots, queued };
}

async function allEnded(store: { getRun(id: string): Promise<RunRecord | null> }, ids: string[]) {
  const runs = await Promise.all(ids.map((id) => store.getRun(id)));
  return runs.every((r) => r?.status === "succeeded" || r?.status === "failed");
}

Deno.test("a run limit holds per key: at most max runs of each key are active at once", async () => {
  const seen = concurrency();
  const work = step("work", async (_inputs, ctx) => {
    const key = (ctx.run.params as { customer: string }).customer;
    seen.enter(key);
    await delay(30);
    seen.leave(key);
    return key;
  });
  const p = pipeline("limited", {
    params: byCustomer,
    limit: { key: (params) => params.customer, max: 2 },
    steps: [work],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], pollMs: 20 });
  engine.start();
  const ids: string[] = [];
  for (let i = 0; i < 12; i++) {
    const run = await engine.trigger("limited", {
      params: { customer: i % 2 ? "acme" : "globex" },
    });
    ids.push(run.id);
  }
  await waitFor("every run ended", () => allEnded(engine.store, ids), 10_000);
  for (const id of ids) assert.equal((await engine.store.requireRun(id)).status, "succeeded");
  assert.deepEqual(Object.fromEntries(seen.most), { acme: 2, globex: 2 });
  assert.deepEqual(await flowLeftovers(engine.store.kv), { slots: 0, queued: 0 });
});

Deno.test("runs held by a full limit start first come, first served, with the reason recorded", async () => {
  const order: number[] = [];
  const first = deferred();
  const work = step("work", async (_inputs, ctx) => {
    const n = (ctx.run.params as { n: number }).n;
    order.push(n);
    if (n === 0) await first.promise;
    return n;
  });
  const p = pipeline("one-at-a-time", {
    params: z.object({ n: z.number() }),
    limit: { key: () => "k", max: 1 },
    steps: [work],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], pollMs: 20 });
  engine.start();
  const ids: string[] = [];
  for (let n = 0; n < 5; n++) {
    ids.push((await engine.trigger("one-at-a-time", { params: { n } })).id);
    await delay(3);
  }
  await waitFor("the others held", async () => {
    const runs = await Promise.all(ids.slice(1).map((id) => engine.store.requireRun(id)));
    return runs.every((r) => r.held?.by === "limit");
  });
  const held = (await engine.store.requireRun(ids[1])).held!;
  assert.equal(held.key, "k");
  assert.equal(held.until, null);
  assert.match(held.reason, /1 of 1 slots of key 'k' taken/);
  assert.equal((await engine.store.requireRun(ids[1])).status, "queued");
  first.resolve();
  await waitFor("every run ended", () => allEnded(engine.store, ids), 10_000);
  assert.deepEqual(order, [0, 1, 2, 3, 4]);
  for (const id of ids) {
    const run = await engine.store.requireRun(id);
    assert.equal(run.status, "succeeded");
    assert.equal(run.held ?? null, null, "the claim cleared the hold");
  }
  assert.deepEqual(await flowLeftovers(engine.store.kv), { slots: 0, queued: 0 });
});

Deno.test("a long queue under a limit drains: 25 runs of one key, 2 at a time, each freed slot wakes the next in order", async () => {
  const order: number[] = [];
  const gate = deferred();
  const seen = concurrency();
  const work = step("work", async (_inputs, ctx) => {
    const n = (ctx.run.params as { n: number }).n;
    seen.enter("k");
    order.push(n);
    if (n < 2) await gate.promise;
    await delay(2);
    seen.leave("k");
    return n;
  });
  const p = pipeline("long-queue", {
    params: z.object({ n: z.number() }),
    limit: { key: () => "k", max: 2 },
    steps: [work],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], pollMs: 20 });
  engine.start();
  const ids: string[] = [];
  for (let n = 0; n < 25; n++) {
    ids.push((await engine.trigger("long-queue", { params: { n } })).id);
    await delay(2);
  }
  // more runs wait in the key's queue than KV reads in one getMany
  await waitFor("23 runs held", async () => {
    const runs = await Promise.all(ids.slice(2).map((id) => engine.store.requireRun(id)));
    return runs.every((r) => r.held?.by === "limit");
  });
  gate.resolve();
  await waitFor("every run ended", () => allEnded(engine.store, ids), 20_000);
  for (const id of ids) assert.equal((await engine.store.requireRun(id)).status, "succeeded");
  // first come, first served: two freed slots may start two queued runs in either order,
  // but no run starts before one queued two places ahead of it
  assert.deepEqual([...order].sort((a, b) => a - b), Array.from({ length: 25 }, (_, i) => i));
  order.forEach((n, i) => assert.ok(n <= i + 1, `run ${n} started ${i}th: ${order.join(",")}`));
  assert.equal(seen.most.get("k"), 2);
  assert.deepEqual(await flowLeftovers(engine.store.kv), { slots: 0, queued: 0 });
});

Deno.test("cancel of a running run frees its slot and the next run starts; cancel of a held run leaves the queue", async () => {
  const started: string[] = [];
  const work = step("work", async (_inputs, ctx) => {
    started.push(ctx.run.id);
    if ((ctx.run.params as { block: boolean }).block) await aborted(ctx.signal);
    return 1;
  });
  const p = pipeline("cancel-frees", {
    params: z.object({ block: z.boolean() }),
    limit: { max: 1 },
    steps: [work],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], pollMs: 20 });
  engine.start();
  const a = await engine.trigger("cancel-frees", { params: { block: true } });
  await waitFor("a started", () => started.includes(a.id));
  const b = await engine.trigger("cancel-frees", { params: { block: false } });
  const c = await engine.trigger("cancel-frees", { params: { block: false } });
  await waitFor(
    "b and c held",
    async () =>
      (await engine.store.requireRun(b.id)).held?.by === "limit" &&
      (await engine.store.requireRun(c.id)).held?.by === "limit",
  );
  await engine.store.cancel(c.id, "not needed");
  assert.deepEqual(await flowLeftovers(engine.store.kv), { slots: 1, queued: 1 });
  await engine.store.cancel(a.id, "stop it");
  await waitFor(
    "b succeeded",
    async () => (await engine.store.requireRun(b.id)).status === "succeeded",
  );
  assert.deepEqual(started, [a.id, b.id]);
  assert.deepEqual(await flowLeftovers(engine.store.kv), { slots: 0, queued: 0 });
});

Deno.test("a failed run frees its slot, and resume() takes one again", async () => {
  const release = deferred();
  let failOnce = true;
  const work = step("work", { retry: { attempts: 1 } }, async (_inputs, ctx) => {
    const role = (ctx.run.params as { role: string }).role;
    if (role === "flaky" && failOnce) {
      failOnce = false;
      throw new Error("flaky");
    }
    if (role === "blocker") await release.promise;
    return role;
  });
  const p = pipeline("fail-frees", {
    params: z.object({ role: z.string() }),
    limit: { max: 1 },
    steps: [work],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], pollMs: 20 });
  engine.start();
  const flaky = await engine.trigger("fail-frees", { params: { role: "flaky" } });
  await waitFor(
    "flaky failed",
    async () => (await engine.store.requireRun(flaky.id)).status === "failed",
  );
  const blocker = await engine.trigger("fail-frees", { params: { role: "blocker" } });
  await waitFor(
    "blocker running",
    async () => (await engine.store.requireRun(blocker.id)).status === "running",
  );
  const resumed = await engine.store.resume(await engine.store.requireRun(flaky.id), p);
  assert.equal(resumed.slot ?? null, null, "a resumed run holds no slot");
  await waitFor(
    "resumed run held",
    async () => (await engine.store.requireRun(flaky.id)).held?.by === "limit",
  );
  release.resolve();
  await waitFor(
    "both succeeded",
    async () =>
      (await engine.store.requireRun(flaky.id)).status === "succeeded" &&
      (await engine.store.requireRun(blocker.id)).status === "succeeded",
  );
  assert.deepEqual(await flowLeftovers(engine.store.kv), { slots: 0, queued: 0 });
});

Deno.test("a sleeping run keeps its slot: the next run waits for its end", async () => {
  const order: string[] = [];
  const before = step("before", (_inputs, ctx) => {
    order.push(`${(ctx.run.params as { name: string }).name} start`);
    return 1;
  });
  const nap = sleep("nap", { needs: { before }, for: "300ms" });
  const after = step("after", { needs: { nap } }, (_inputs, ctx) => {
    order.push(`${(ctx.run.params as { name: string }).name} end`);
    return 2;
  });
  const p = pipeline("sleepy", {
    params: z.object({ name: z.string() }),
    limit: { max: 1 },
    steps: [before, nap, after],
  });
  // a sleep within holdMs would keep the run in process: park it instead
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    pollMs: 20,
    holdMs: 0,
  });
  engine.start();
  const a = await engine.trigger("sleepy", { params: { name: "a" } });
  await waitFor(
    "a sleeping",
    async () => (await engine.store.requireRun(a.id)).status === "waiting",
  );
  const b = await engine.trigger("sleepy", { params: { name: "b" } });
  await waitFor("b held", async () => (await engine.store.requireRun(b.id)).held?.by === "limit");
  assert.equal((await engine.store.requireRun(a.id)).slot, 0);
  await waitFor("both ended", () => allEnded(engine.store, [a.id, b.id]), 5000);
  assert.deepEqual(order, ["a start", "a end", "b start", "b end"]);
});

Deno.test("a run throttle lets at most max runs start per period; the rest wait and all end", async () => {
  const work = step("work", () => 1);
  const p = pipeline("throttled", {
    throttle: { max: 2, per: "200ms" },
    steps: [work],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], pollMs: 20 });
  engine.start();
  const ids: string[] = [];
  for (let i = 0; i < 7; i++) ids.push((await engine.trigger("throttled")).id);
  await waitFor("a run held by the throttle", async () => {
    const runs = await Promise.all(ids.map((id) => engine.store.requireRun(id)));
    return runs.some((r) => r.held?.by === "throttle" && r.held.until !== null);
  });
  await waitFor("every run ended", () => allEnded(engine.store, ids), 10_000);
  const starts = (await Promise.all(ids.map((id) => engine.store.requireRun(id))))
    .map((r) => {
      assert.equal(r.status, "succeeded");
      return r.startedAt!;
    }).sort((x, y) => x - y);
  for (const from of starts) {
    const inWindow = starts.filter((t) => t >= from && t < from + 200).length;
    assert.ok(inWindow <= 2, `${inWindow} starts within 200 ms of ${from}`);
  }
});

Deno.test("a throttle counts a run's first start: a paused run goes on at once when unpaused", async () => {
  const gate = deferred();
  const first = step("first", async () => {
    await gate.promise;
    return 1;
  });
  const second = step("second", { needs: { first } }, ({ first }) => first + 1);
  const p = pipeline("throttled-once", {
    throttle: { max: 1, per: "1m" },
    steps: [first, second],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], pollMs: 20 });
  engine.start();
  const run = await engine.trigger("throttled-once");
  await waitFor("the first step running", async () => {
    return (await engine.store.getSteps(run.id)).get("first")?.status === "running";
  });
  await engine.pause(run.id);
  gate.resolve();
  await waitFor("the run paused", async () => (await engine.getRun(run.id))?.status === "paused");
  await engine.unpause(run.id);
  // the throttle's one start a minute was this run's own: it is not held for it again
  await waitFor("the run succeeded", async () => {
    const now = await engine.getRun(run.id);
    assert.notEqual(now?.held?.by, "throttle", "held by its own start");
    return now?.status === "succeeded";
  }, 3_000);
});

Deno.test("a saturated worker claims higher priority first, and a long-waiting run overtakes", async () => {
  const clock = new TestClock(Date.UTC(2026, 0, 5, 9), { auto: false });
  const order: string[] = [];
  const work = step("work", (_inputs, ctx) => {
    order.push((ctx.run.params as { name: string }).name);
    return 1;
  });
  const p = pipeline("prioritised", { params: z.object({ name: z.string() }), steps: [work] });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    clock,
    maxRuns: 1,
  });
  const drain = async (n: number) => {
    for (let i = 0; i < n; i++) {
      await engine.worker.sweep();
      await engine.worker.idle();
    }
  };
  // a newer run of priority 5 goes before an older run of priority 0
  await engine.store.createRun(p, { params: { name: "low" } });
  clock.advance(60_000);
  await engine.store.createRun(p, { params: { name: "high" }, priority: 5 });
  await drain(2);
  assert.deepEqual(order, ["high", "low"]);
  // one that waited longer than the priority's credit (5 minutes) goes first
  order.length = 0;
  await engine.store.createRun(p, { params: { name: "old" } });
  clock.advance(6 * 60_000);
  await engine.store.createRun(p, { params: { name: "urgent" }, priority: 5 });
  await drain(2);
  assert.deepEqual(order, ["old", "urgent"]);
});

Deno.test("a limit key function that throws or returns a bad value refuses the run, naming the pipeline", async () => {
  const work = step("work", () => 1);
  const throws = pipeline("key-throws", {
    params: byCustomer,
    limit: {
      key: () => {
        throw new Error("no tenant");
      },
      max: 1,
    },
    steps: [work],
  });
  const bad = pipeline("key-bad", {
    params: byCustomer,
    limit: { key: () => "", max: 1 },
    steps: [work],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [throws, bad] });
  for (const p of [throws, bad]) {
    const error = await engine.store.createRun(p, { params: { customer: "a" } }).then(
      () => null,
      (e) => e,
    );
    assert.ok(error instanceof UsageError, String(error));
    assert.match(error.message, new RegExp(`limit key of pipeline '${p.name}'`));
  }
  assert.equal((await engine.listRuns({})).runs.length, 0, "nothing stored");
});
