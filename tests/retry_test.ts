import assert from "node:assert/strict";
import { NonRetryableError, openEngine, pipeline, step } from "../lib/mod.ts";
import { resolveRetry, retryDelay } from "../lib/define/retry.ts";
import { aborted, deferred, sleep, tempKv } from "./_support/helpers.ts";

Deno.test("retryDelay() doubles per attempt, takes jitter off, and caps at maxDelay", () => {
  const retry = resolveRetry({ delay: "100ms", maxDelay: "1s", jitter: 0 });
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((n) => retryDelay(retry, n, 0.5)),
    [100, 200, 400, 800, 1000, 1000],
  );
  const jittery = resolveRetry({ delay: "1s", maxDelay: "5m", jitter: 0.2 });
  assert.equal(retryDelay(jittery, 1, 0), 1000, "no jitter taken at random 0");
  assert.equal(retryDelay(jittery, 1, 0.5), 900);
  assert.equal(retryDelay(jittery, 1, 0.999999), 800, "at most 20% off");
  assert.equal(retryDelay(jittery, 3, 0.5), 3600);
  // the cap applies before the jitter, so capped delays still spread
  const capped = resolveRetry({ delay: "1s", maxDelay: "2s", jitter: 0.5 });
  assert.equal(retryDelay(capped, 10, 0), 2000);
  assert.equal(retryDelay(capped, 10, 0.5), 1500);
  // a fixed backoff keeps the first delay
  const fixed = resolveRetry({ delay: "250ms", backoff: "fixed", jitter: 0 });
  assert.deepEqual([1, 2, 7].map((n) => retryDelay(fixed, n)), [250, 250, 250]);
  // huge attempt numbers neither overflow nor exceed the cap
  assert.equal(retryDelay(retry, 1000, 0), 1000);
  for (let i = 0; i < 200; i++) {
    const d = retryDelay(jittery, 2);
    assert.ok(d >= 1600 && d <= 2000, `jittered delay ${d} within [1600, 2000]`);
  }
});

Deno.test("resolveRetry() fills fields from the pipeline's defaults", () => {
  const base = resolveRetry({ attempts: 7, delay: "3s", jitter: 0 });
  assert.deepEqual(resolveRetry({ delay: 50 }, base), {
    attempts: 7,
    delayMs: 50,
    backoff: "exponential",
    maxDelayMs: 300_000,
    jitter: 0,
  });
  assert.deepEqual(resolveRetry(undefined), {
    attempts: 3,
    delayMs: 1000,
    backoff: "exponential",
    maxDelayMs: 300_000,
    jitter: 0.2,
  });
});

Deno.test("a failing step is retried with exponential backoff until it succeeds", async () => {
  const calls: number[] = [];
  const flaky = step("flaky", {
    retry: { attempts: 4, delay: "20ms", jitter: 0 },
  }, (_inputs, ctx) => {
    calls.push(ctx.attempt);
    if (ctx.attempt < 3) throw new Error(`attempt ${ctx.attempt} failed`);
    return "finally";
  });
  const p = pipeline("retry", { steps: [flaky] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(calls, [1, 2, 3]);
  const attempts = await engine.store.getAttempts(run.id);
  assert.deepEqual(attempts.map((a) => [a.n, a.status]), [
    [1, "failed"],
    [2, "failed"],
    [3, "succeeded"],
  ]);
  assert.equal(attempts[0].error?.message, "attempt 1 failed");
  const gap1 = attempts[1].startedAt - attempts[0].endedAt;
  const gap2 = attempts[2].startedAt - attempts[1].endedAt;
  assert.ok(gap1 >= 20 && gap1 < 20 + 150, `first retry after ${gap1} ms (want 20)`);
  assert.ok(gap2 >= 40 && gap2 < 40 + 150, `second retry after ${gap2} ms (want 40)`);
  const record = (await engine.store.getSteps(run.id)).get("flaky")!;
  assert.equal(record.attempt, 3);
  assert.equal(record.error, null);
  assert.equal(await engine.store.getOutput(run.id, "flaky"), "finally");
});

Deno.test("pipeline defaults set the retry policy of steps that give none", async () => {
  let calls = 0;
  const always = step("always", () => {
    calls++;
    throw new Error("down");
  });
  const p = pipeline("defaults", {
    steps: [always],
    defaults: { retry: { attempts: 2, delay: "5ms" } },
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.equal(calls, 2);
});

Deno.test("NonRetryableError fails a step at its first attempt", async () => {
  let calls = 0;
  const refuse = step("refuse", { retry: { attempts: 5, delay: "10ms" } }, () => {
    calls++;
    throw new NonRetryableError("Accounting API refused the entry: HTTP 422");
  });
  const p = pipeline("non-retryable", { steps: [refuse] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.equal(calls, 1);
  const record = (await engine.store.getSteps(run.id)).get("refuse")!;
  assert.equal(record.status, "failed");
  assert.equal(record.attempt, 1);
  assert.equal(record.error?.name, "NonRetryableError");
  assert.equal(record.error?.retryable, false);
  assert.deepEqual(ended.error, {
    step: "refuse",
    message: "Accounting API refused the entry: HTTP 422",
  });
});

Deno.test("thrown non-Error values are recorded readably", async () => {
  const throwsString = step("throws-string", { retry: { attempts: 1 } }, () => {
    throw "disk full";
  });
  const throwsObject = step("throws-object", { retry: { attempts: 1 } }, () => {
    throw { code: 42, reason: "quota" };
  });
  const throwsNull = step("throws-null", { retry: { attempts: 1 } }, () => {
    throw null;
  });
  const p = pipeline("non-errors", { steps: [throwsString, throwsObject, throwsNull] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  const steps = await engine.store.getSteps(run.id);
  assert.deepEqual(steps.get("throws-string")!.error, {
    name: "string",
    message: 'Non-Error value thrown: "disk full"',
    retryable: true,
  });
  assert.deepEqual(steps.get("throws-object")!.error, {
    name: "object",
    message: 'Non-Error value thrown: {"code":42,"reason":"quota"}',
    retryable: true,
  });
  assert.equal(steps.get("throws-null")!.error?.name, "null");
  assert.equal(steps.get("throws-null")!.error?.message, "Non-Error value thrown: null");
  const attempts = await engine.store.getAttempts(run.id);
  assert.equal(attempts.length, 3);
  assert.ok(attempts.every((a) => a.status === "failed" && a.error?.message));
});

Deno.test("a timeout aborts ctx.signal and counts as a failed attempt", async () => {
  const reasons: unknown[] = [];
  const slow = step("slow", {
    timeout: "40ms",
    retry: { attempts: 2, delay: "5ms" },
  }, async (_inputs, ctx) => {
    await aborted(ctx.signal);
    reasons.push(ctx.signal.reason);
    // a body that ignores the abort still cannot hold the step
    await new Promise((r) => setTimeout(r, 30));
    return "too late";
  });
  const p = pipeline("timeout", { steps: [slow] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.equal(reasons.length, 2);
  assert.ok(reasons.every((r) => r instanceof Error && r.name === "TimeoutError"));
  const attempts = await engine.store.getAttempts(run.id);
  assert.deepEqual(attempts.map((a) => [a.n, a.status, a.error?.name]), [
    [1, "failed", "TimeoutError"],
    [2, "failed", "TimeoutError"],
  ]);
  assert.match(attempts[0].error!.message, /Step 'slow' timed out after 40 ms/);
  for (const a of attempts) {
    const took = a.endedAt - a.startedAt;
    assert.ok(took >= 35 && took < 200, `attempt ${a.n} took ${took} ms for a 40 ms timeout`);
  }
  await assert.rejects(engine.store.getOutput(run.id, "slow"), { name: "UsageError" });
  // let the bodies that ignored their abort finish before the test ends
  await new Promise((r) => setTimeout(r, 40));
});

Deno.test("graceful hand-backs do not grow the backoff: the first real failure waits the first delay", async () => {
  await using file = await tempKv();
  let fail = false;
  let inside = deferred();
  const s = step("s", {
    retry: { attempts: 3, delay: "1h", backoff: "exponential", maxDelay: "1000h", jitter: 0 },
  }, async (_inputs, ctx) => {
    inside.resolve();
    if (fail) throw new Error("the service said no");
    await sleep(60_000, ctx.signal);
    ctx.signal.throwIfAborted();
  });
  const p = pipeline("backoff-after-stops", { steps: [s] });
  let id = "";
  // six rolling restarts, each a graceful stop while the step runs
  for (let i = 0; i < 6; i++) {
    inside = deferred();
    await using engine = await openEngine({ path: file.path, pipelines: [p], queues: false });
    id ||= (await engine.store.createRun(p)).id;
    const executing = engine.worker.execute(id);
    await inside.promise;
    await engine.worker.stop(5);
    await executing;
  }
  fail = true;
  await using engine = await openEngine({ path: file.path, pipelines: [p], queues: false });
  await engine.worker.execute(id);
  const record = (await engine.store.getSteps(id)).get("s")!;
  assert.equal(record.status, "retrying");
  assert.equal(record.released, 6);
  assert.equal(record.attempt, 7);
  assert.equal(record.nextAt! - record.endedAt!, 3_600_000, "the delay of a first failure");
});
