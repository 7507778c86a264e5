import assert from "node:assert/strict";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";
import { allDue, deferred, dueTimes, tempKv, waitFor } from "./_support/helpers.ts";

const RETRY_MS = 300;

function laterRetryPipeline(calls: number[]) {
  const flaky = step("flaky", {
    retry: { attempts: 3, delay: RETRY_MS, jitter: 0 },
  }, (_inputs, ctx) => {
    calls.push(ctx.attempt);
    if (ctx.attempt === 1) throw new Error("source not ready");
    return `ok on attempt ${ctx.attempt}`;
  });
  return pipeline("later", { steps: [flaky] });
}

Deno.test("a retry due after holdMs leaves the run waiting with a due entry and no lease", async () => {
  const calls: number[] = [];
  const p = laterRetryPipeline(calls);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], holdMs: 20 });
  const run = await engine.store.createRun(p);
  assert.equal(await engine.worker.execute(run.id), "waiting");
  const waiting = await engine.store.requireRun(run.id);
  const record = (await engine.store.getSteps(run.id)).get("flaky")!;
  assert.equal(waiting.status, "waiting");
  assert.equal(record.status, "retrying");
  assert.equal(record.nextAt, record.endedAt! + RETRY_MS);
  assert.equal(waiting.dueAt, record.nextAt);
  assert.deepEqual(await dueTimes(engine.kv, run.id), [record.nextAt]);
  assert.ok((await engine.kv.get(keys.due(record.nextAt!, run.id))).value);
  assert.equal((await engine.store.getLease(run.id)).value, null);
  // not due yet: nobody may claim it
  assert.equal(await engine.worker.execute(run.id), "skipped");
  assert.deepEqual(calls, [1]);
});

Deno.test("a waiting retry happens on time in a new engine after a restart", async () => {
  await using file = await tempKv();
  const calls: number[] = [];
  const p = laterRetryPipeline(calls);
  let runId: string;
  {
    await using first = await openEngine({ path: file.path, pipelines: [p], holdMs: 20 });
    runId = (await first.store.createRun(p)).id;
    assert.equal(await first.worker.execute(runId), "waiting");
  }
  await using second = await openEngine({ path: file.path, pipelines: [p], holdMs: 20 });
  const ended = await second.runToEnd(runId);
  assert.equal(ended.status, "succeeded");
  assert.deepEqual(calls, [1, 2]);
  const [one, two] = await second.store.getAttempts(runId);
  const late = two.startedAt - (one.endedAt + RETRY_MS);
  assert.ok(late >= 0, `retry ran ${-late} ms early`);
  assert.ok(late < 150, `retry ran ${late} ms late`);
  assert.equal(await second.store.getOutput(runId, "flaky"), "ok on attempt 2");
  assert.deepEqual(await allDue(second.kv), []);
});

Deno.test("a started worker picks up a due retry by its sweep alone", async () => {
  await using file = await tempKv();
  const calls: number[] = [];
  const p = laterRetryPipeline(calls);
  let runId: string;
  {
    await using first = await openEngine({ path: file.path, pipelines: [p], holdMs: 20 });
    runId = (await first.store.createRun(p)).id;
    assert.equal(await first.worker.execute(runId), "waiting");
  }
  // no queues (as on Deno Deploy) and nobody calls runToEnd: only the sweep can wake it
  await using second = await openEngine({
    path: file.path,
    pipelines: [p],
    queues: false,
    pollMs: 20,
  });
  second.worker.start();
  await waitFor(
    "the sweep to finish the run",
    async () => (await second.store.requireRun(runId)).status === "succeeded",
  );
  assert.deepEqual(calls, [1, 2]);
  const [one, two] = await second.store.getAttempts(runId);
  assert.ok(two.startedAt >= one.endedAt + RETRY_MS, "the sweep did not run it early");
});

Deno.test("a queue hint wakes a waiting run when no sweep is due", async () => {
  const calls: number[] = [];
  const p = laterRetryPipeline(calls);
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    holdMs: 20,
    pollMs: 60_000,
  });
  const run = await engine.store.createRun(p);
  assert.equal(await engine.worker.execute(run.id), "waiting");
  // the first sweep runs at once and finds nothing due; the next is a minute away
  engine.worker.start();
  await waitFor(
    "the queue hint to finish the run",
    async () => (await engine.store.requireRun(run.id)).status === "succeeded",
  );
  assert.deepEqual(calls, [1, 2]);
});

Deno.test("a started worker runs a new run from the due-index without a queue", async () => {
  const done = deferred<string>();
  const hello = step("hello", (_inputs, ctx) => {
    done.resolve(ctx.run.id);
    return "world";
  });
  const p = pipeline("swept", { steps: [hello] });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    queues: false,
    pollMs: 20,
  });
  const run = await engine.store.createRun(p);
  engine.worker.start();
  assert.equal(await done.promise, run.id);
  await waitFor(
    "the run to succeed",
    async () => (await engine.store.requireRun(run.id)).status === "succeeded",
  );
});

Deno.test("the due-index always holds the run's next wake-up, and nothing once it ends", async () => {
  const inside = deferred();
  const proceed = deferred();
  const work = step("work", async () => {
    inside.resolve();
    await proceed.promise;
    return 1;
  });
  const p = pipeline("wakeups", { steps: [work] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], leaseMs: 10_000 });
  const run = await engine.store.createRun(p);
  // a new run is due now
  assert.equal(run.dueAt, run.createdAt);
  assert.deepEqual(await dueTimes(engine.kv, run.id), [run.createdAt]);

  const ending = engine.runToEnd(run.id);
  await inside.promise;
  // while running: one entry, at the lease deadline, so a dead worker's run is found
  const lease = (await engine.store.getLease(run.id)).value!;
  const running = await engine.store.requireRun(run.id);
  assert.equal(running.status, "running");
  assert.equal(running.dueAt, lease.deadline);
  assert.deepEqual(await dueTimes(engine.kv, run.id), [lease.deadline]);
  assert.ok(lease.deadline > Date.now() + 5000);
  assert.equal(lease.owner, engine.worker.id);
  proceed.resolve();

  assert.equal((await ending).status, "succeeded");
  const ended = await engine.store.requireRun(run.id);
  assert.equal(ended.dueAt, null);
  assert.deepEqual(await allDue(engine.kv), []);
  assert.equal((await engine.store.getLease(run.id)).value, null);
});

Deno.test("a failed run leaves no due entry and no lease; resume adds one due now", async () => {
  const fail = step("fail", { retry: { attempts: 1 } }, () => {
    throw new Error("no");
  });
  const p = pipeline("failing", { steps: [fail] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.deepEqual(await allDue(engine.kv), []);
  assert.equal((await engine.store.getLease(run.id)).value, null);
  const before = Date.now();
  const resumed = await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal(resumed.status, "queued");
  assert.ok(resumed.dueAt! >= before && resumed.dueAt! <= Date.now());
  assert.deepEqual(await dueTimes(engine.kv, run.id), [resumed.dueAt]);
});
