import assert from "node:assert/strict";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import takeover, { calls, hooks } from "./fixtures/takeover_pipeline.ts";
import type { Command } from "./fixtures/engine_worker.ts";
import { allDue, deferred, delay, tempKv, waitFor } from "./_support/helpers.ts";

const LEASE_MS = 200;

interface Reply {
  type: "ready" | "started" | "ended" | "error";
  key?: string;
  attempt?: number;
  status?: string;
  message?: string;
  calls?: Record<string, number>;
}

/** A second engine in another thread; disposing it terminates the thread. */
async function engineThread() {
  const worker = new Worker(new URL("./fixtures/engine_worker.ts", import.meta.url), {
    type: "module",
  });
  const replies: Reply[] = [];
  const waiters: [Reply["type"], (r: Reply) => void][] = [];
  worker.onmessage = (event: MessageEvent<Reply>) => {
    replies.push(event.data);
    for (const [i, [type, resolve]] of waiters.entries()) {
      if (type === event.data.type || event.data.type === "error") {
        waiters.splice(i, 1);
        resolve(event.data);
        break;
      }
    }
  };
  const next = (type: Reply["type"]) => {
    const found = replies.find((r) => r.type === type || r.type === "error");
    if (found) {
      replies.splice(replies.indexOf(found), 1);
      return Promise.resolve(found);
    }
    return new Promise<Reply>((resolve) => waiters.push([type, resolve]));
  };
  assert.equal((await next("ready")).type, "ready");
  return {
    send: (command: Command) => worker.postMessage(command),
    next,
    terminate: () => worker.terminate(),
    [Symbol.dispose]: () => worker.terminate(),
  };
}

function resetHooks(): void {
  hooks.thread = "main";
  hooks.firstAttempt = undefined;
  for (const name of Object.keys(calls)) delete calls[name];
}

Deno.test("a run whose worker died is taken over after its lease: the step runs again with attempt 2 and the same idempotency key", async () => {
  resetHooks();
  await using file = await tempKv();
  using other = await engineThread();
  await using engine = await openEngine({
    path: file.path,
    pipelines: [takeover],
    leaseMs: LEASE_MS,
    queues: false,
    onAlert: () => {},
  });
  const run = await engine.store.createRun(takeover);
  other.send({ cmd: "hang", path: file.path, runId: run.id, leaseMs: LEASE_MS });
  const started = await other.next("started");
  assert.equal(started.attempt, 1);
  const lease = (await engine.store.getLease(run.id)).value!;
  assert.notEqual(lease.owner, engine.worker.id);

  other.terminate(); // the worker dies in the middle of `charge`
  const killedAt = Date.now();
  // while the dead worker's lease is valid, nobody takes the run
  assert.equal(await engine.worker.execute(run.id), "skipped");

  const ended = await engine.runToEnd(run.id, { followMs: 10 });
  assert.equal(ended.status, "succeeded");
  assert.equal(ended.takeovers, 1);
  assert.ok(Date.now() - killedAt < LEASE_MS + 500, "taken over soon after the lease ran out");
  const output = await engine.store.getOutput(run.id, "charge");
  assert.deepEqual(output, { amount: 1250, attempt: 2, key: started.key, by: "main" });
  assert.equal(started.key, `${run.id}:charge`);
  assert.equal(await engine.store.getOutput(run.id, "receipt"), "receipt by main on attempt 2");
  // the checkpointed step before it ran only in the dead worker
  assert.deepEqual(calls, { charge: 1, receipt: 1 });
  const attempts = (await engine.store.getAttempts(run.id)).filter((a) => a.step === "charge");
  assert.deepEqual(attempts.map((a) => [a.n, a.status]), [[1, "crashed"], [2, "succeeded"]]);
  assert.equal(attempts[0].error?.name, "WorkerLost");
  assert.deepEqual(await allDue(engine.kv), []);
  resetHooks();
});

Deno.test("a started worker's sweep finds a dead worker's run at its lease deadline", async () => {
  resetHooks();
  await using file = await tempKv();
  using other = await engineThread();
  await using engine = await openEngine({
    path: file.path,
    pipelines: [takeover],
    leaseMs: LEASE_MS,
    queues: false,
    pollMs: 20,
    onAlert: () => {},
  });
  const run = await engine.store.createRun(takeover);
  other.send({ cmd: "hang", path: file.path, runId: run.id, leaseMs: LEASE_MS });
  const started = await other.next("started");
  other.terminate();
  // nobody calls runToEnd: the sweep sees the due entry at the dead lease's deadline
  engine.worker.start();
  await waitFor(
    "the sweep to take the run over and finish it",
    async () => (await engine.store.requireRun(run.id)).status === "succeeded",
  );
  const output = await engine.store.getOutput(run.id, "charge") as Record<string, unknown>;
  assert.equal(output.attempt, 2);
  assert.equal(output.key, started.key);
  assert.equal((await engine.store.requireRun(run.id)).takeovers, 1);
  resetHooks();
});

Deno.test("fencing: a paused worker that lost its lease writes nothing when it wakes", async () => {
  resetHooks();
  await using file = await tempKv();
  using other = await engineThread();
  await using engine = await openEngine({
    path: file.path,
    pipelines: [takeover],
    leaseMs: LEASE_MS,
    queues: false,
    onAlert: () => {},
  });
  const run = await engine.store.createRun(takeover);
  const done = new SharedArrayBuffer(4);
  let pause: string | undefined;
  let firstKey: string | undefined;
  hooks.firstAttempt = (ctx) => {
    firstKey = ctx.idempotencyKey;
    other.send({ cmd: "runToEnd", path: file.path, runId: run.id, leaseMs: LEASE_MS, done });
    // this thread stops dead, like a process under SIGSTOP or a long GC pause: no lease
    // renewal, no timers; the other thread takes the run over and finishes it meanwhile
    pause = Atomics.wait(new Int32Array(done), 0, 0, 5000);
  };

  const outcome = await engine.worker.execute(run.id);
  assert.equal(pause, "ok", "the other engine finished the run while this one was paused");
  assert.equal(outcome, "lost");
  const reply = await other.next("ended");
  assert.equal(reply.status, "succeeded");

  const ended = await engine.store.requireRun(run.id);
  assert.equal(ended.status, "succeeded");
  assert.equal(ended.takeovers, 1);
  // the paused worker's result (by: "main", attempt 1) never reached KV
  assert.deepEqual(await engine.store.getOutput(run.id, "charge"), {
    amount: 1250,
    attempt: 2,
    key: firstKey,
    by: "worker",
  });
  assert.equal(await engine.store.getOutput(run.id, "receipt"), "receipt by worker on attempt 2");
  const attempts = (await engine.store.getAttempts(run.id)).filter((a) => a.step === "charge");
  assert.deepEqual(attempts.map((a) => [a.n, a.status]), [[1, "crashed"], [2, "succeeded"]]);
  assert.deepEqual(reply.calls, { charge: 1, receipt: 1 }, "prepare was not run again");
  assert.deepEqual(calls, { prepare: 1, charge: 1 });
  assert.equal((await engine.store.getLease(run.id)).value, null);
  assert.deepEqual(await allDue(engine.kv), []);
  // a later look at the run by the paused worker changes nothing
  assert.equal(await engine.worker.execute(run.id), "skipped");
  resetHooks();
});

Deno.test("racing workers and duplicate hints run each step body exactly once", async () => {
  await using file = await tempKv();
  const runs: Record<string, number> = {};
  const body = (name: string) => async () => {
    runs[name] = (runs[name] ?? 0) + 1;
    await delay(15);
    return name;
  };
  const a = step("a", body("a"));
  const b = step("b", { needs: { a } }, body("b"));
  const c = step("c", { needs: { a } }, body("c"));
  const d = step("d", { needs: { b, c } }, body("d"));
  const p = pipeline("racy", { steps: [a, b, c, d] });
  const options = { path: file.path, pipelines: [p], leaseMs: LEASE_MS, queues: false };
  await using one = await openEngine(options);
  await using two = await openEngine(options);
  const run = await one.store.createRun(p);

  for (let i = 0; i < 20; i++) {
    one.worker.wake(run.id);
    two.worker.wake(run.id);
  }
  const results = await Promise.all([
    one.worker.execute(run.id),
    two.worker.execute(run.id),
    one.worker.execute(run.id),
    two.worker.execute(run.id),
  ]);
  // the wakes already hold the run in each worker, or lost the claim
  assert.ok(results.every((r) => r === "busy" || r === "skipped"), results.join());
  const ended = await Promise.all([one.runToEnd(run.id), two.runToEnd(run.id)]);
  assert.deepEqual(ended.map((r) => r.status), ["succeeded", "succeeded"]);
  assert.deepEqual(runs, { a: 1, b: 1, c: 1, d: 1 });
  const attempts = await one.store.getAttempts(run.id);
  assert.deepEqual(attempts.map((x) => [x.step, x.n]), [["a", 1], ["b", 1], ["c", 1], ["d", 1]]);
  assert.equal(ended[0].takeovers, 0);
  // more hints after the end change nothing
  one.worker.wake(run.id);
  two.worker.wake(run.id);
  await waitFor(
    "the late hints to be handled",
    () => one.worker.activeRuns + two.worker.activeRuns === 0,
  );
  assert.equal(await two.worker.execute(run.id), "skipped");
  assert.deepEqual(runs, { a: 1, b: 1, c: 1, d: 1 });
});

Deno.test("two workers executing many runs at once never run a step twice", async () => {
  await using file = await tempKv();
  const runs = new Map<string, number>();
  const work = step("work", async (_inputs, ctx) => {
    runs.set(ctx.run.id, (runs.get(ctx.run.id) ?? 0) + 1);
    await delay(5);
    return ctx.run.id;
  });
  const p = pipeline("many", { steps: [work] });
  const options = { path: file.path, pipelines: [p], leaseMs: LEASE_MS, queues: false };
  await using one = await openEngine(options);
  await using two = await openEngine(options);
  const ids = [];
  for (let i = 0; i < 20; i++) ids.push((await one.store.createRun(p)).id);
  await Promise.all(ids.flatMap((id) => [one.worker.execute(id), two.worker.execute(id)]));
  const ended = await Promise.all(ids.map((id) => one.runToEnd(id)));
  assert.ok(ended.every((r) => r.status === "succeeded"));
  assert.ok(ended.every((r) => r.takeovers === 0), "no healthy worker lost a run");
  assert.equal(runs.size, 20);
  assert.ok([...runs.values()].every((n) => n === 1), JSON.stringify([...runs]));
});

Deno.test("a live worker keeps its lease by renewing it while a step outlasts the lease", async () => {
  const inside = deferred();
  const slow = step("slow", async () => {
    inside.resolve();
    await delay(LEASE_MS * 3);
    return "done";
  });
  const p = pipeline("renewing", { steps: [slow] });
  await using file = await tempKv();
  const options = { path: file.path, pipelines: [p], leaseMs: LEASE_MS, queues: false };
  await using one = await openEngine(options);
  await using two = await openEngine(options);
  const run = await one.store.createRun(p);
  const executing = one.worker.execute(run.id);
  await inside.promise;
  const deadline = Date.now() + LEASE_MS * 2.5;
  const seen: string[] = [];
  while (Date.now() < deadline) {
    seen.push(await two.worker.execute(run.id));
    await delay(25);
  }
  assert.ok(seen.every((r) => r === "skipped"), seen.join());
  assert.equal(await executing, "succeeded");
  const ended = await one.store.requireRun(run.id);
  assert.equal(ended.takeovers, 0);
  assert.equal((await one.store.getAttempts(run.id)).length, 1);
});
