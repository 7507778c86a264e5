import assert from "node:assert/strict";
import {
  type AnyStep,
  openEngine,
  type Pipeline,
  pipeline,
  type RunEvent,
  step,
  UsageError,
} from "../lib/mod.ts";
import { aborted, allDue } from "./_support/helpers.ts";

Deno.test("a 50-step chain runs inline, in order, one attempt per step", async () => {
  const order: number[] = [];
  const steps: AnyStep[] = [step("s0", () => {
    order.push(0);
    return 0;
  })];
  for (let i = 1; i < 50; i++) {
    const prev = steps[i - 1];
    steps.push(step(`s${i}`, { needs: { prev } }, ({ prev }) => {
      order.push(i);
      return (prev as number) + 1;
    }));
  }
  const chain = pipeline("chain", { steps: [...steps].reverse() });
  await using engine = await openEngine({ path: ":memory:", pipelines: [chain] });
  const run = await engine.store.createRun(chain);
  const started = performance.now();
  const ended = await engine.runToEnd(run.id);
  const elapsed = performance.now() - started;

  assert.equal(ended.status, "succeeded");
  assert.deepEqual(order, Array.from({ length: 50 }, (_, i) => i));
  assert.equal(await engine.store.getOutput(run.id, "s49"), 49);
  const attempts = await engine.store.getAttempts(run.id);
  assert.equal(attempts.length, 50);
  for (let i = 0; i < 50; i++) {
    const mine = attempts.filter((a) => a.step === `s${i}`);
    assert.equal(mine.length, 1, `s${i} has one attempt record`);
    assert.equal(mine[0].n, 1);
    assert.equal(mine[0].status, "succeeded");
  }
  // each step starts no earlier than the end of the step it needs
  const byStep = new Map(attempts.map((a) => [a.step, a]));
  for (let i = 1; i < 50; i++) {
    assert.ok(byStep.get(`s${i}`)!.startedAt >= byStep.get(`s${i - 1}`)!.endedAt);
  }
  // a queue hop costs up to 100 ms; 49 of them would take seconds
  assert.ok(elapsed < 1000, `50 inline steps took ${elapsed.toFixed(0)} ms`);
  const steps50 = await engine.store.getSteps(run.id);
  assert.equal(steps50.size, 50);
  assert.ok([...steps50.values()].every((s) => s.status === "succeeded" && s.attempt === 1));
});

Deno.test("independent branches run at the same time", async () => {
  let arrived = 0;
  let running = 0;
  let maxRunning = 0;
  let release!: () => void;
  const barrier = new Promise<void>((r) => (release = r));
  const branch = (name: string) =>
    step(name, { needs: { root }, timeout: "1s", retry: { attempts: 1 } }, async (
      { root },
      ctx,
    ) => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      if (++arrived === 2) release();
      // both branches must be inside their bodies at once for either to pass the barrier
      await Promise.race([barrier, aborted(ctx.signal)]);
      ctx.signal.throwIfAborted();
      running--;
      return `${name}:${root}`;
    });
  const root = step("root", () => "r");
  const left = branch("left");
  const right = branch("right");
  const join = step("join", { needs: { left, right } }, ({ left, right }) => [left, right]);
  const fork = pipeline("fork", { steps: [root, left, right, join] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [fork] });
  const run = await engine.store.createRun(fork);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "succeeded", JSON.stringify(ended.error));
  assert.equal(maxRunning, 2);
  assert.deepEqual(await engine.store.getOutput(run.id, "join"), ["left:r", "right:r"]);
});

Deno.test("a pipeline's concurrency bounds the steps of one run running at once", async () => {
  let running = 0;
  let maxRunning = 0;
  const work = (name: string) =>
    step(name, async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((r) => setTimeout(r, 15));
      running--;
      return name;
    });
  const wide = pipeline("wide", {
    steps: ["a", "b", "c", "d", "e", "f"].map(work),
    concurrency: 2,
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [wide] });
  const run = await engine.store.createRun(wide);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(maxRunning, 2);
});

Deno.test("a worker's maxSteps bounds steps running at once across runs", async () => {
  let running = 0;
  let maxRunning = 0;
  const work = (name: string) =>
    step(name, async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((r) => setTimeout(r, 10));
      running--;
      return name;
    });
  const wide = pipeline("wide", { steps: ["a", "b", "c", "d"].map(work) });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [wide],
    maxSteps: 3,
  });
  const runs = await Promise.all([1, 2, 3].map(() => engine.store.createRun(wide)));
  const ended = await Promise.all(runs.map((r) => engine.runToEnd(r.id)));
  assert.deepEqual(ended.map((r) => r.status), ["succeeded", "succeeded", "succeeded"]);
  assert.equal(maxRunning, 3);
});

Deno.test("a step's context carries the run, the step, and stores its log lines", async () => {
  let seen: Record<string, unknown> = {};
  const inspect = step("inspect", (_inputs, ctx) => {
    seen = {
      run: { ...ctx.run },
      step: ctx.step,
      attempt: ctx.attempt,
      key: ctx.idempotencyKey,
      aborted: ctx.signal.aborted,
    };
    ctx.log.info("loaded", { rows: 3 });
    ctx.log.warn("slow source");
    return "ok";
  });
  const p = pipeline("ctx", { steps: [inspect] });
  const events: RunEvent[] = [];
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    onEvent: (e) => events.push(e),
  });
  const run = await engine.store.createRun(p, { logicalDate: "2024-03-01", trigger: "http" });
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(seen, {
    run: {
      id: run.id,
      pipeline: "ctx",
      params: {},
      logicalDate: "2024-03-01",
      tick: null,
      trigger: "http",
    },
    step: "inspect",
    attempt: 1,
    key: `${run.id}:inspect`,
    aborted: false,
  });
  const [attempt] = await engine.store.getAttempts(run.id);
  assert.deepEqual(
    attempt.logs.map((l) => [l.level, l.message, l.fields]),
    [["info", "loaded", { rows: 3 }], ["warn", "slow source", undefined]],
  );
  const runStatuses = events.filter((e) => e.type === "run").map((e) =>
    (e as { run: { status: string } }).run.status
  );
  assert.equal(runStatuses.at(-1), "succeeded");
  assert.ok(
    events.some((e) => e.type === "task" && e.step === "inspect" && e.status === "succeeded"),
  );
  assert.deepEqual(await allDue(engine.kv), []);
});

Deno.test("log lines a step writes can never make its checkpoint fail", async () => {
  let calls = 0;
  const chatty = step("chatty", (_inputs, ctx) => {
    calls++;
    const fields: Record<string, unknown> = { rows: 3, id: 12n };
    ctx.log.info("kept", fields);
    fields.rows = 4; // a later change does not alter the stored line
    ctx.log.info("with a function", { callback: () => 1 });
    ctx.log.info("huge", { rows: "x".repeat(100_000) });
    ctx.log.info("\u6f22".repeat(5000));
    for (let i = 0; i < 600; i++) ctx.log.debug(`line ${i} ${"\u6f22".repeat(1000)}`);
    return "done";
  });
  const p = pipeline("chatty", { steps: [chatty] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], leaseMs: 300 });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "succeeded");
  assert.equal(ended.takeovers, 0);
  assert.equal(calls, 1);
  const [attempt] = await engine.store.getAttempts(run.id);
  assert.equal(attempt.status, "succeeded");
  assert.deepEqual(attempt.logs[0].fields, { rows: 3, id: 12n });
  assert.match(String(attempt.logs[1].fields?.note), /fields not stored: .*could not be cloned/);
  assert.match(String(attempt.logs[2].fields?.note), /fields not stored: \d+ bytes/);
  assert.equal(attempt.logs.at(-1)!.message, "(log limit reached: later lines dropped)");
});

Deno.test("a worker drives at most maxRuns runs at once and turns the rest away", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const wait = step("wait", async () => {
    await gate;
    return 1;
  });
  const p = pipeline("bounded", { steps: [wait] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], maxRuns: 1 });
  const first = await engine.store.createRun(p);
  const second = await engine.store.createRun(p);
  const executing = engine.worker.execute(first.id);
  assert.equal(await engine.worker.execute(second.id), "full");
  assert.equal(await engine.worker.execute(first.id), "busy");
  assert.equal((await engine.store.requireRun(second.id)).status, "queued");
  release();
  assert.equal(await executing, "succeeded");
  assert.equal((await engine.runToEnd(second.id)).status, "succeeded");
});

Deno.test("a pipeline with thousands of steps runs; its graph is too large to record, so a change is reported plainly", async () => {
  const steps = Array.from({ length: 4500 }, (_, i) => step(`step-${i}`, () => i));
  const big = pipeline("big", { steps, concurrency: 64 }) as Pipeline<unknown>;
  await using engine = await openEngine({ path: ":memory:", pipelines: [big], onAlert: () => {} });
  const run = await engine.store.createRun(big);
  assert.equal(run.graph, null);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "succeeded");
  const changed = pipeline("big", { steps: steps.slice(1) }) as Pipeline<unknown>;
  await assert.rejects(
    () => engine.store.rerun(ended, changed, "step-1"),
    (error: Error) => error instanceof UsageError && /too large to record/.test(error.message),
  );
});
