import assert from "node:assert/strict";
import { openEngine, pipeline, step, UsageError } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";
import type { RunRecord } from "../lib/model/records.ts";
import { aborted, deferred, dueTimes, waitFor } from "./_support/helpers.ts";

Deno.test("cancel() aborts a running step's signal and ends the run cancelled", async () => {
  const inside = deferred();
  let reason: unknown;
  let laterRan = false;
  let siblingRan = false;
  const slow = step("slow", async (_inputs, ctx) => {
    inside.resolve();
    await aborted(ctx.signal);
    reason = ctx.signal.reason;
    return "never stored";
  });
  const later = step("later", { needs: { slow } }, () => {
    laterRan = true;
    return 1;
  });
  const gate = step("gate", async () => {
    await inside.promise;
    await new Promise((r) => setTimeout(r, 100));
    return "open";
  });
  const sibling = step("sibling", { needs: { gate } }, () => {
    siblingRan = true;
    return 2;
  });
  const p = pipeline("cancellable", { steps: [slow, later, gate, sibling] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], leaseMs: 200 });
  const run = await engine.store.createRun(p);
  const ending = engine.runToEnd(run.id);
  await inside.promise;

  const cancelled = await engine.store.cancel(run.id, "Stopped by the on-call engineer");
  assert.equal(cancelled.status, "cancelled");
  const ended = await ending;
  assert.equal(ended.status, "cancelled");
  assert.deepEqual(ended.error, { step: null, message: "Stopped by the on-call engineer" });
  assert.ok(reason instanceof Error, "the running step saw its signal abort");
  assert.match((reason as Error).message, /cancelled/);

  // nothing is scheduled after the cancel, not even a step whose input finishes later
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(laterRan, false);
  assert.equal(siblingRan, false);
  const steps = await engine.store.getSteps(run.id);
  assert.equal(steps.get("slow")!.status, "failed");
  assert.equal(steps.get("slow")!.error?.name, "Cancelled");
  assert.ok(!steps.has("later") || steps.get("later")!.status === "pending");
  assert.ok(!steps.has("sibling") || steps.get("sibling")!.status === "pending");
  await assert.rejects(engine.store.getOutput(run.id, "slow"), { name: "UsageError" });
  assert.equal((await engine.store.requireRun(run.id)).status, "cancelled");
  assert.equal((await engine.store.getLease(run.id)).value, null);
});

Deno.test("cancel() of a queued run ends it before any step starts", async () => {
  let ran = false;
  const only = step("only", () => {
    ran = true;
    return 1;
  });
  const p = pipeline("queued-cancel", { steps: [only] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  await engine.store.cancel(run.id);
  assert.equal(await engine.worker.execute(run.id), "skipped");
  assert.equal((await engine.runToEnd(run.id)).status, "cancelled");
  assert.equal(ran, false);
});

Deno.test("cancel() of a finished run is a conflict", async () => {
  const only = step("only", () => 1);
  const p = pipeline("done-cancel", { steps: [only] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  await assert.rejects(
    engine.store.cancel(run.id),
    (e: unknown) =>
      e instanceof UsageError && e.code === "conflict" &&
      /already succeeded: nothing to cancel/.test(e.message),
  );
  assert.equal((await engine.store.requireRun(run.id)).status, "succeeded");
});

Deno.test("a cancelled run can be resumed and keeps its checkpoints", async () => {
  const inside = deferred();
  let firstCalls = 0;
  let blockCalls = 0;
  const first = step("first", () => ++firstCalls);
  const block = step("block", { needs: { first } }, async (_inputs, ctx) => {
    blockCalls++;
    if (blockCalls === 1) {
      inside.resolve();
      await aborted(ctx.signal);
      throw ctx.signal.reason;
    }
    return "done";
  });
  const p = pipeline("resume-cancelled", { steps: [first, block] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], leaseMs: 200 });
  const run = await engine.store.createRun(p);
  const ending = engine.runToEnd(run.id);
  await inside.promise;
  await engine.store.cancel(run.id);
  assert.equal((await ending).status, "cancelled");
  await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(firstCalls, 1);
  assert.equal(blockCalls, 2);
});

Deno.test("cancel() of a run waiting for a retry removes its wake-up", async () => {
  let calls = 0;
  const flaky = step("flaky", { retry: { attempts: 3, delay: "10s" } }, () => {
    calls++;
    throw new Error("down");
  });
  const p = pipeline("waiting-cancel", { steps: [flaky] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], holdMs: 10 });
  const run = await engine.store.createRun(p);
  assert.equal(await engine.worker.execute(run.id), "waiting");
  assert.equal((await dueTimes(engine.kv, run.id)).length, 1);
  const cancelled = await engine.store.cancel(run.id);
  assert.equal(cancelled.status, "cancelled");
  assert.equal(cancelled.dueAt, null);
  assert.deepEqual(await dueTimes(engine.kv, run.id), []);
  const record = (await engine.store.getSteps(run.id)).get("flaky")!;
  assert.equal(record.status, "failed");
  assert.equal(record.nextAt, null);
  assert.equal(calls, 1);
});

Deno.test("cancel() of a fan-out with 3,000 running and retrying items cancels every item and the run", async () => {
  const total = 3000;
  const list = step("list", () => Array.from({ length: total }, (_, i) => i));
  const work = step("work", {
    needs: { list },
    items: ({ list }) => list,
    concurrency: total,
    retry: { attempts: 3, delay: "1h" },
  }, async (index, ctx) => {
    // odd items wait an hour for their retry; even ones run until the cancel aborts them
    if (index % 2 === 1) throw new Error(`Item ${index} is not ready`);
    await aborted(ctx.signal);
    throw ctx.signal.reason;
  });
  const p = pipeline("wide-cancel", { steps: [list, work], concurrency: total });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    maxSteps: total,
    leaseMs: 500,
  });
  const run = await engine.store.createRun(p);
  const ending = engine.runToEnd(run.id);
  const open = async () => {
    const items = await engine.store.getItems(run.id, "work");
    const statuses = [...items.values()].map((r) => r.status);
    return statuses.filter((s) => s === "running" || s === "retrying").length;
  };
  await waitFor("every item running or retrying", async () => await open() === total, 20_000);

  const cancelled = await engine.store.cancel(run.id, "Stopped by the on-call engineer");
  assert.equal(cancelled.status, "cancelled");
  assert.equal((await ending).status, "cancelled");
  const items = await engine.store.getItems(run.id, "work");
  assert.equal(items.size, total);
  for (const [index, item] of items) {
    assert.equal(item.status, "failed", `item ${index}`);
    assert.equal(item.error?.name, "Cancelled", `item ${index}`);
    assert.equal(item.error?.message, "Stopped by the on-call engineer");
    assert.equal(item.nextAt, null, `item ${index}`);
  }
  const steps = await engine.store.getSteps(run.id);
  assert.equal(steps.get("list")!.status, "succeeded");
  assert.equal(steps.get("work")!.status, "failed");
  assert.equal(steps.get("work")!.error?.name, "Cancelled");
  const stored = await engine.store.requireRun(run.id);
  assert.equal(stored.status, "cancelled");
  assert.equal((await engine.store.getLease(run.id)).value, null);
  assert.deepEqual(await dueTimes(engine.kv, run.id), []);
  assert.deepEqual(
    (await engine.store.listRuns({ status: "cancelled" })).runs.map((r) => r.id),
    [run.id],
  );
});

Deno.test("cancel() of a run with 1,200 running steps, more than one KV commit takes, cancels each", async () => {
  const total = 1200;
  let started = 0;
  const steps = Array.from(
    { length: total },
    (_, i) =>
      step(`branch-${i}`, async (_inputs, ctx) => {
        started++;
        await aborted(ctx.signal);
        throw ctx.signal.reason;
      }),
  );
  const p = pipeline("many-cancel", { steps, concurrency: total });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    maxSteps: total,
    leaseMs: 500,
  });
  const run = await engine.store.createRun(p);
  const ending = engine.runToEnd(run.id);
  await waitFor("every step running", () => started === total, 20_000);

  assert.equal((await engine.store.cancel(run.id)).status, "cancelled");
  assert.equal((await ending).status, "cancelled");
  const records = await engine.store.getSteps(run.id);
  assert.equal(records.size, total);
  for (const [name, record] of records) {
    assert.equal(record.status, "failed", name);
    assert.equal(record.error?.name, "Cancelled", name);
  }
  assert.equal((await engine.store.getLease(run.id)).value, null);
});

Deno.test("cancel() of 1,000 running items with the longest reason the API takes splits its commits by bytes too", async () => {
  const total = 1000;
  // 500 characters outside Latin-1: two bytes each in every one of the 1,000 records
  const reason = "€".repeat(500);
  const work = step("work", {
    items: () => Array.from({ length: total }, (_, i) => i),
    concurrency: total,
  }, async (_index, ctx) => {
    await aborted(ctx.signal);
    throw ctx.signal.reason;
  });
  const p = pipeline("wordy-cancel", { steps: [work], concurrency: total });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    maxSteps: total,
    leaseMs: 500,
  });
  const run = await engine.store.createRun(p);
  const ending = engine.runToEnd(run.id);
  await waitFor("every item running", async () => {
    const items = await engine.store.getItems(run.id, "work");
    return [...items.values()].filter((r) => r.status === "running").length === total;
  }, 20_000);
  assert.equal((await engine.store.cancel(run.id, reason)).status, "cancelled");
  assert.equal((await ending).status, "cancelled");
  const items = await engine.store.getItems(run.id, "work");
  assert.equal(items.size, total);
  for (const [index, item] of items) {
    assert.equal(item.status, "failed", `item ${index}`);
    assert.equal(item.error?.message, reason, `item ${index}`);
  }
});

/** An in-memory engine driving a run whose one step, `slow`, runs until it is aborted. */
async function runInSlowStep(name: string) {
  const inside = deferred();
  const slow = step("slow", async (_inputs, ctx) => {
    inside.resolve();
    await aborted(ctx.signal);
    throw ctx.signal.reason;
  });
  const p = pipeline(name, { steps: [slow] });
  const engine = await openEngine({ path: ":memory:", pipelines: [p], leaseMs: 300 });
  const run = await engine.store.createRun(p);
  const ending = engine.runToEnd(run.id);
  await inside.promise;
  return { engine, run, ending };
}

Deno.test("cancel() of a small run ends the run and marks its running step in one commit", async () => {
  const { engine, run, ending } = await runInSlowStep("one-commit-cancel");
  await using _ = engine;
  await engine.store.cancel(run.id, "Not today");
  assert.equal((await ending).status, "cancelled");
  const stepEntry = await engine.kv.get<{ status: string }>(keys.step(run.id, "slow"));
  assert.equal(stepEntry.value?.status, "failed");
  // The run's entry in the status index is written only by the commit that ends the run.
  // One commit: KV gave both the same versionstamp, so no reader saw one without the other.
  const indexed = await Array.fromAsync(
    engine.kv.list({ prefix: keys.runsByStatusPrefix("cancelled") }),
  );
  assert.equal(indexed.length, 1);
  assert.equal(indexed[0].key.at(-1), run.id);
  assert.equal(stepEntry.versionstamp, indexed[0].versionstamp);
});

Deno.test("a cancel that stopped after ending the run leaves its open tasks to the next cancel", async () => {
  const { engine, run, ending } = await runInSlowStep("half-cancel");
  await using _ = engine;
  // What a cancel too large for one commit leaves when its process dies after the first:
  // the run cancelled and its lease gone, the step still marked running.
  const entry = await engine.kv.get<RunRecord>(keys.run(run.id));
  const ended = { ...entry.value!, status: "cancelled" as const, endedAt: Date.now() };
  const op = engine.kv.atomic().check(entry).set(keys.run(run.id), ended);
  assert.ok((await op.delete(keys.lease(run.id)).commit()).ok);
  assert.equal((await engine.store.getSteps(run.id)).get("slow")?.status, "running");
  await ending;

  await assert.rejects(
    engine.store.cancel(run.id, "Again"),
    (e: unknown) => e instanceof UsageError && /already cancelled/.test(e.message),
  );
  const slowRecord = (await engine.store.getSteps(run.id)).get("slow")!;
  assert.equal(slowRecord.status, "failed");
  assert.equal(slowRecord.error?.name, "Cancelled");
});
