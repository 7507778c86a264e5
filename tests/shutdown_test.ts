import assert from "node:assert/strict";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import { MAX_CRASHES } from "../lib/model/transitions.ts";
import { deferred, dueTimes, sleep, tempKv } from "./_support/helpers.ts";

function twoSteps(state: { firstCalls: number; secondCalls: number; firstMs: number }) {
  const inside = deferred();
  const first = step("first", async (_inputs, ctx) => {
    state.firstCalls++;
    inside.resolve();
    await sleep(state.firstMs, ctx.signal);
    ctx.signal.throwIfAborted();
    return `first #${ctx.attempt}`;
  });
  const second = step("second", { needs: { first } }, ({ first }) => {
    state.secondCalls++;
    return `after ${first}`;
  });
  return { p: pipeline("shutdown", { steps: [first, second] }), inside: inside.promise };
}

Deno.test("stop() lets a running step finish within the grace period and hands the run back", async () => {
  await using file = await tempKv();
  const state = { firstCalls: 0, secondCalls: 0, firstMs: 40 };
  const { p, inside } = twoSteps(state);
  let runId: string;
  {
    await using engine = await openEngine({ path: file.path, pipelines: [p], queues: false });
    runId = (await engine.store.createRun(p)).id;
    const executing = engine.worker.execute(runId);
    await inside;
    await engine.worker.stop(1000);
    assert.equal(await executing, "released");
    const run = await engine.store.requireRun(runId);
    assert.equal(run.status, "queued");
    assert.equal((await engine.store.getLease(runId)).value, null);
    assert.deepEqual(await dueTimes(engine.kv, runId), [run.dueAt]);
    const steps = await engine.store.getSteps(runId);
    assert.equal(steps.get("first")!.status, "succeeded", "the finished step was checkpointed");
    assert.ok(!steps.has("second") || steps.get("second")!.status === "pending");
  }
  await using next = await openEngine({ path: file.path, pipelines: [p], queues: false });
  const ended = await next.runToEnd(runId);
  assert.equal(ended.status, "succeeded");
  assert.equal(ended.takeovers, 0, "a released run is claimed, not taken over");
  assert.deepEqual(state, { firstCalls: 1, secondCalls: 1, firstMs: 40 });
  assert.equal(await next.store.getOutput(runId, "second"), "after first #1");
});

Deno.test("stop() aborts a step that outlasts the grace period; it runs again elsewhere", async () => {
  await using file = await tempKv();
  const state = { firstCalls: 0, secondCalls: 0, firstMs: 10_000 };
  const { p, inside } = twoSteps(state);
  let runId: string;
  {
    await using engine = await openEngine({ path: file.path, pipelines: [p], queues: false });
    runId = (await engine.store.createRun(p)).id;
    const executing = engine.worker.execute(runId);
    await inside;
    await engine.worker.stop(30);
    assert.equal(await executing, "released");
    assert.equal((await engine.store.requireRun(runId)).status, "queued");
  }
  state.firstMs = 5;
  await using next = await openEngine({ path: file.path, pipelines: [p], queues: false });
  assert.equal((await next.runToEnd(runId)).status, "succeeded");
  assert.equal(state.firstCalls, 2);
  const attempts = (await next.store.getAttempts(runId)).filter((a) => a.step === "first");
  assert.deepEqual(attempts.map((a) => [a.n, a.status]), [[1, "interrupted"], [2, "succeeded"]]);
  assert.equal(attempts[0].error?.name, "Interrupted");
  assert.equal(await next.store.getOutput(runId, "first"), "first #2");
  const first = (await next.store.getSteps(runId)).get("first")!;
  assert.equal(first.crashes, undefined, "a graceful hand-back is not a crash");
  assert.equal(first.released, 1);
});

Deno.test("steps handed back by 12 graceful stops in a row neither count as crashes nor spend retries", async () => {
  await using file = await tempKv();
  let calls = 0;
  let finish = false;
  const inside = { current: deferred() };
  const long = step("long", { retry: { attempts: 1 } }, async (_inputs, ctx) => {
    calls++;
    inside.current.resolve();
    if (!finish) await sleep(60_000, ctx.signal);
    ctx.signal.throwIfAborted();
    return `done on attempt ${ctx.attempt}`;
  });
  const p = pipeline("rolling", { steps: [long] });
  const restarts = MAX_CRASHES + 2;
  let runId = "";
  for (let i = 1; i <= restarts; i++) {
    inside.current = deferred();
    await using engine = await openEngine({ path: file.path, pipelines: [p], queues: false });
    runId ||= (await engine.store.createRun(p)).id;
    const executing = engine.worker.execute(runId);
    await inside.current.promise;
    await engine.worker.stop(10);
    assert.equal(await executing, "released");
    const record = (await engine.store.getSteps(runId)).get("long")!;
    assert.equal(record.status, "retrying", `after stop ${i}`);
    assert.equal(record.crashes, undefined, `after stop ${i}`);
    assert.equal(record.released, i);
    assert.equal((await engine.store.requireRun(runId)).status, "queued");
  }
  finish = true;
  await using last = await openEngine({ path: file.path, pipelines: [p], queues: false });
  const ended = await last.runToEnd(runId);
  assert.equal(ended.status, "succeeded", ended.error?.message ?? "");
  assert.equal(calls, restarts + 1);
  assert.equal(await last.store.getOutput(runId, "long"), `done on attempt ${restarts + 1}`);
  const attempts = await last.store.getAttempts(runId);
  assert.deepEqual(attempts.map((a) => a.status), [
    ...Array(restarts).fill("interrupted"),
    "succeeded",
  ]);
});

Deno.test("a stop after the run was cancelled writes nothing: the hand-back is fenced by the lease", async () => {
  await using file = await tempKv();
  const state = { firstCalls: 0, secondCalls: 0, firstMs: 60_000 };
  const { p, inside } = twoSteps(state);
  // A long lease: the worker does not look at its lease again before the stop.
  await using engine = await openEngine({
    path: file.path,
    pipelines: [p],
    queues: false,
    leaseMs: 60_000,
  });
  const runId = (await engine.store.createRun(p)).id;
  const executing = engine.worker.execute(runId);
  await inside;
  await engine.store.cancel(runId, "Stopped by hand");
  await engine.worker.stop(10);
  assert.equal(await executing, "lost");
  assert.equal((await engine.store.requireRun(runId)).status, "cancelled");
  const first = (await engine.store.getSteps(runId)).get("first")!;
  assert.equal(first.status, "failed");
  assert.equal(first.error?.name, "Cancelled");
  assert.equal(first.released, undefined);
  assert.deepEqual(await engine.store.getAttempts(runId), []);
  assert.equal((await engine.store.getLease(runId)).value, null);
  assert.deepEqual(await dueTimes(engine.kv, runId), []);
});

Deno.test("interrupt() fails the run resumably and records the attempt as interrupted", async () => {
  await using file = await tempKv();
  const state = { firstCalls: 0, secondCalls: 0, firstMs: 10_000 };
  const { p, inside } = twoSteps(state);
  const alerts: unknown[] = [];
  let runId: string;
  {
    await using engine = await openEngine({
      path: file.path,
      pipelines: [p],
      onAlert: (a) => alerts.push(a),
    });
    runId = (await engine.store.createRun(p)).id;
    const executing = engine.worker.execute(runId);
    await inside;
    await engine.worker.interrupt("Ctrl-C");
    assert.equal(await executing, "interrupted");
    const failed = await engine.store.requireRun(runId);
    assert.equal(failed.status, "failed");
    assert.deepEqual(failed.error, { step: null, message: "Ctrl-C" });
    assert.equal((await engine.store.getLease(runId)).value, null);
    assert.deepEqual(await dueTimes(engine.kv, runId), []);
    const [attempt] = await engine.store.getAttempts(runId);
    assert.equal(attempt.status, "interrupted");
    assert.equal(attempt.error?.message, "Ctrl-C");
    assert.equal((await engine.store.getSteps(runId)).get("first")!.status, "failed");
    assert.deepEqual(alerts, [], "an interrupt by a person is not an alert");
  }
  state.firstMs = 5;
  await using next = await openEngine({ path: file.path, pipelines: [p] });
  await next.store.resume(await next.store.requireRun(runId), p);
  assert.equal((await next.runToEnd(runId)).status, "succeeded");
  assert.equal(state.firstCalls, 2);
  assert.equal(state.secondCalls, 1);
});

Deno.test("a stop that comes while a step's start is being committed keeps its body from starting", async () => {
  await using file = await tempKv();
  const calls = { a: 0, b: 0 };
  const a = step("a", () => ++calls.a);
  const b = step("b", { needs: { a } }, () => ++calls.b);
  const p = pipeline("stop-at-start", { steps: [a, b] });
  let stopping: Promise<void> | undefined;
  const first = await openEngine({
    path: file.path,
    pipelines: [p],
    queues: false,
    // Events of a commit are emitted once it is durable, before the steps it started run:
    // B's start marker is stored, its body not begun, when the worker is told to stop.
    onEvent: (e) => {
      if (e.type === "task" && e.step === "b" && e.status === "running") {
        stopping ??= first.worker.stop(5000);
      }
    },
  });
  const run = await first.store.createRun(p);
  await first.worker.execute(run.id);
  await stopping;
  await first.close();
  assert.deepEqual(calls, { a: 1, b: 0 }, "b started after the stop");

  await using second = await openEngine({ path: file.path, pipelines: [p], queues: false });
  const handedBack = (await second.store.getSteps(run.id)).get("b")!;
  assert.equal(handedBack.status, "retrying");
  assert.equal(handedBack.released, 1);
  assert.equal((await second.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(calls, { a: 1, b: 1 });
  const attempts = (await second.store.getAttempts(run.id)).filter((x) => x.step === "b");
  assert.deepEqual(attempts.map((x) => `${x.n}:${x.status}`), ["1:interrupted", "2:succeeded"]);
});
