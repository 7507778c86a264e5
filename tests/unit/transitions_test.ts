import assert from "node:assert/strict";
import { pipeline } from "../../lib/define/pipeline.ts";
import { step } from "../../lib/define/step.ts";
import type { ErrorInfo } from "../../lib/model/errors.ts";
import { UsageError } from "../../lib/model/errors.ts";
import { planRerun, planResume, type StepReset } from "../../lib/model/plans.ts";
import type { RunRecord, RunStatus, TaskRecord } from "../../lib/model/records.ts";
import {
  cancelTask,
  crashTask,
  failAttempt,
  idempotencyKey,
  isReady,
  MAX_CRASHES,
  pendingTask,
  releaseTask,
  skipTask,
  spentAttempts,
  startAttempt,
  succeedTask,
} from "../../lib/model/transitions.ts";

const T0 = Date.UTC(2026, 11, 4, 3, 0, 0);
const boom: ErrorInfo = { name: "Error", message: "boom", retryable: true };
const fatal: ErrorInfo = { name: "NonRetryableError", message: "bad input", retryable: false };

function task(over: Partial<TaskRecord> = {}): TaskRecord {
  return { ...pendingTask(), ...over };
}

Deno.test("pendingTask() is pending with no attempt, no times and no error", () => {
  assert.deepEqual(pendingTask(), {
    status: "pending",
    attempt: 0,
    generation: 0,
    startedAt: null,
    endedAt: null,
    nextAt: null,
    error: null,
  });
  assert.equal(pendingTask(3).generation, 3);
});

Deno.test("startAttempt() runs the next attempt from now, clearing end and retry time", () => {
  const retrying = task({
    status: "retrying",
    attempt: 2,
    endedAt: T0,
    nextAt: T0 + 5,
    error: boom,
  });
  assert.deepEqual(startAttempt(retrying, T0 + 10), {
    status: "running",
    attempt: 3,
    generation: 0,
    startedAt: T0 + 10,
    endedAt: null,
    nextAt: null,
    error: boom, // the last error stays visible until this attempt ends
  });
});

Deno.test("succeedTask() records the end and output and clears the error", () => {
  const running = task({ status: "running", attempt: 2, startedAt: T0, error: boom });
  const output = { inline: { total: 42 } };
  assert.deepEqual(succeedTask(running, T0 + 7, output), {
    status: "succeeded",
    attempt: 2,
    generation: 0,
    startedAt: T0,
    endedAt: T0 + 7,
    nextAt: null,
    error: null,
    output,
  });
  assert.equal("output" in succeedTask(running, T0 + 7), false);
});

Deno.test("failAttempt() retries a retryable error after the delay while attempts remain", () => {
  const running = task({ status: "running", attempt: 2, startedAt: T0 });
  assert.deepEqual(failAttempt(running, T0 + 100, boom, 3, 4000), {
    ...running,
    status: "retrying",
    endedAt: T0 + 100,
    nextAt: T0 + 4100,
    error: boom,
  });
});

Deno.test("failAttempt() fails the task on its last allowed attempt or on a non-retryable error", () => {
  const last = task({ status: "running", attempt: 3, startedAt: T0 });
  assert.deepEqual(failAttempt(last, T0 + 1, boom, 3, 4000), {
    ...last,
    status: "failed",
    endedAt: T0 + 1,
    nextAt: null,
    error: boom,
  });
  const first = task({ status: "running", attempt: 1 });
  assert.equal(failAttempt(first, T0, fatal, 10, 1000).status, "failed");
  assert.equal(failAttempt(first, T0, fatal, 10, 1000).nextAt, null);
});

Deno.test("failAttempt() does not count crashed or handed-back attempts against the policy", () => {
  const running = task({ status: "running", attempt: 3, crashes: 1, released: 1 });
  assert.equal(spentAttempts(running), 1);
  assert.equal(failAttempt(running, T0, boom, 2, 10).status, "retrying");
  assert.equal(failAttempt({ ...running, released: 0 }, T0, boom, 2, 10).status, "failed");
});

Deno.test("isReady() is true for pending and for retrying once its time has come", () => {
  assert.equal(isReady(task(), T0), true);
  assert.equal(isReady(task({ status: "retrying", nextAt: T0 }), T0), true);
  assert.equal(isReady(task({ status: "retrying", nextAt: T0 + 1 }), T0), false);
  assert.equal(isReady(task({ status: "retrying", nextAt: null }), T0), true);
  for (const status of ["running", "succeeded", "failed", "skipped"] as const) {
    assert.equal(isReady(task({ status }), T0), false, status);
  }
});

Deno.test("skipTask() marks the task skipped, naming the step that did not succeed", () => {
  const skipped = skipTask(task(), T0, "pull-sales");
  assert.equal(skipped.status, "skipped");
  assert.equal(skipped.endedAt, T0);
  assert.equal(skipped.nextAt, null);
  assert.deepEqual(skipped.error, {
    name: "Skipped",
    message: "Skipped: 'pull-sales' did not succeed",
    retryable: true,
  });
});

Deno.test("cancelTask() fails the task with a retryable Cancelled error, so a resume runs it", () => {
  const cancelled = cancelTask(
    task({ status: "retrying", attempt: 1, nextAt: T0 + 9 }),
    T0,
    "stop",
  );
  assert.deepEqual(cancelled, {
    ...task({ attempt: 1 }),
    status: "failed",
    endedAt: T0,
    nextAt: null,
    error: { name: "Cancelled", message: "stop", retryable: true },
  });
});

Deno.test("crashTask() makes the task due at once and counts the crash, not an attempt", () => {
  const running = task({ status: "running", attempt: 2, startedAt: T0, crashes: 1 });
  const crashed = crashTask(running, T0 + 50);
  assert.equal(crashed.status, "retrying");
  assert.equal(crashed.nextAt, T0 + 50);
  assert.equal(crashed.endedAt, T0 + 50);
  assert.equal(crashed.attempt, 2);
  assert.equal(crashed.crashes, 2);
  assert.equal(crashed.error?.name, "WorkerLost");
  assert.equal(crashed.error?.retryable, true);
  assert.match(crashed.error!.message, /attempt 2 /);
  assert.equal(spentAttempts(crashed), 0);
});

Deno.test("crashTask() fails the task for good after MAX_CRASHES crashes in a row", () => {
  assert.equal(MAX_CRASHES, 10);
  const atCap = crashTask(task({ status: "running", attempt: 10, crashes: 9 }), T0);
  assert.equal(atCap.status, "retrying");
  assert.equal(atCap.crashes, 10);
  const over = crashTask(atCap, T0 + 1);
  assert.equal(over.status, "failed");
  assert.equal(over.crashes, 11);
  assert.equal(over.nextAt, null);
  assert.equal(over.error?.retryable, false);
  assert.match(over.error!.message, /stopped 11 times/);
});

Deno.test("releaseTask() hands the attempt back due now, counted neither as a crash nor as spent", () => {
  const running = task({ status: "running", attempt: 1, startedAt: T0, crashes: 3 });
  const released = releaseTask(releaseTask(running, T0 + 5), T0 + 6);
  assert.equal(released.status, "retrying");
  assert.equal(released.nextAt, T0 + 6);
  assert.equal(released.released, 2);
  assert.equal(released.crashes, 3);
  assert.equal(released.error?.name, "Interrupted");
  assert.equal(released.error?.retryable, true);
});

Deno.test("idempotencyKey() names run and step, adds the item from 0 and the generation from 1", () => {
  assert.equal(idempotencyKey("r1", "email", -1, 0), "r1:email");
  assert.equal(idempotencyKey("r1", "email", 0, 0), "r1:email:0");
  assert.equal(idempotencyKey("r1", "email", 12, 0), "r1:email:12");
  assert.equal(idempotencyKey("r1", "email", -1, 2), "r1:email:g2");
  assert.equal(idempotencyKey("r1", "email", 3, 1), "r1:email:3:g1");
});

// extract → transform → load, and report on its own
const extract = step("extract", () => 1);
const transform = step("transform", { needs: { extract } }, ({ extract }) => extract + 1);
const load = step("load", { needs: { transform } }, ({ transform }) => transform);
const report = step("report", () => "ok");
const etl = pipeline("etl", { steps: [load, report, transform, extract] });

function runOf(status: RunStatus, over: Partial<RunRecord> = {}): RunRecord {
  return {
    id: "20261204-030000-abcdef",
    pipeline: "etl",
    version: etl.version,
    graph: null,
    params: {},
    logicalDate: "2026-12-03",
    trigger: "cli",
    status,
    createdAt: T0,
    startedAt: T0,
    endedAt: T0 + 1,
    dueAt: null,
    error: null,
    failures: 1,
    takeovers: 0,
    ...over,
  };
}

const byStep = (resets: StepReset[]) => Object.fromEntries(resets.map((r) => [r.step, r]));

Deno.test("planResume() resets failed and skipped steps, keeps checkpointed ones, adds missing ones", () => {
  const steps = new Map<string, TaskRecord>([
    ["extract", task({ status: "succeeded", attempt: 1 })],
    ["transform", task({ status: "failed", attempt: 3, base: 2, generation: 1, error: boom })],
    ["load", task({ status: "skipped" })],
  ]);
  assert.deepEqual(byStep(planResume(runOf("failed"), etl, steps, false)), {
    transform: {
      step: "transform",
      record: { ...pendingTask(1), base: 5 },
      items: "failed",
    },
    load: { step: "load", record: { ...pendingTask(), base: 0 }, items: "failed" },
    report: { step: "report", record: pendingTask(), items: "none" },
  });
});

Deno.test("planResume() keeps a fan-out step's item count when it resets the step", () => {
  const steps = new Map([["transform", task({ status: "failed", attempt: 1, items: 4 })]]);
  const reset = byStep(planResume(runOf("failed"), etl, steps, false)).transform;
  assert.equal(reset.record.items, 4);
  assert.equal(reset.record.status, "pending");
});

Deno.test("planResume() refuses a succeeded run, and a changed graph unless forced", () => {
  assert.throws(
    () => planResume(runOf("succeeded"), etl, new Map(), false),
    (e: unknown) => e instanceof UsageError && e.code === "conflict",
  );
  const old = runOf("failed", { version: "v0", graph: { extract: [], load: ["extract"] } });
  assert.throws(
    () => planResume(old, etl, new Map(), false),
    (e: unknown) =>
      e instanceof UsageError && e.code === "version_changed" && /--force/.test(e.message),
  );
  assert.equal(planResume(old, etl, new Map(), true).length, 4);
});

Deno.test("planRerun() resets the step and everything downstream with a new generation", () => {
  const done = (over: Partial<TaskRecord> = {}) =>
    task({ status: "succeeded", attempt: 1, ...over });
  const steps = new Map<string, TaskRecord>([
    ["extract", done()],
    ["transform", done({ attempt: 2, base: 1, generation: 1 })],
    ["load", done()],
    ["report", task({ status: "failed", attempt: 3 })],
  ]);
  assert.deepEqual(byStep(planRerun(runOf("failed"), etl, steps, "transform", false)), {
    transform: { step: "transform", record: { ...pendingTask(2), base: 3 }, items: "all" },
    load: { step: "load", record: { ...pendingTask(1), base: 1 }, items: "all" },
    report: { step: "report", record: { ...pendingTask(), base: 3 }, items: "failed" },
  });
});

Deno.test("planRerun() refuses an active run and an unknown step", () => {
  for (const status of ["queued", "running", "waiting"] as const) {
    assert.throws(
      () => planRerun(runOf(status), etl, new Map(), "extract", false),
      (e: unknown) => e instanceof UsageError && e.code === "conflict",
      status,
    );
  }
  assert.throws(
    () => planRerun(runOf("succeeded"), etl, new Map(), "nope", false),
    (e: unknown) =>
      e instanceof UsageError && e.code === "not_found" &&
      e.message.includes("extract, transform, load, report"),
  );
});
