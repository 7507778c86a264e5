/** Fan-out bookkeeping: pure, no KV. */
import assert from "node:assert/strict";
import type { StepStatus, TaskRecord } from "../../lib/model/records.ts";
import { pendingTask } from "../../lib/model/transitions.ts";
import {
  fanOpen,
  fanOutputs,
  firstFailedItem,
  mostAttempts,
  newFan,
  nextItem,
  nextRetry,
  takeItem,
  trackItem,
} from "../../lib/engine/driver/fan_out.ts";

function record(status: StepStatus, nextAt: number | null = null, attempt = 1): TaskRecord {
  return { ...pendingTask(), status, nextAt, attempt };
}

Deno.test("fan-out: items start in order, then none is left", () => {
  const fan = newFan(["x", "y"]);
  fan.fresh.push(0, 1);
  assert.equal(nextItem(fan, 0), 0);
  takeItem(fan, 0);
  assert.equal(nextItem(fan, 0), 1);
  takeItem(fan, 0);
  assert.equal(nextItem(fan, 0), -1);
});

Deno.test("fan-out: a retry that is due goes before items not started yet", () => {
  const fan = newFan(["x", "y", "z"]);
  fan.fresh.push(2);
  trackItem(fan, 0, record("retrying", 100));
  trackItem(fan, 1, record("retrying", 50));
  assert.equal(nextItem(fan, 10), 2, "no retry is due at 10");
  assert.equal(nextItem(fan, 60), 1);
  takeItem(fan, 60);
  assert.equal(nextItem(fan, 200), 0);
});

Deno.test("fan-out: a retry entry is stale once its item moved on", () => {
  const fan = newFan(["x"]);
  trackItem(fan, 0, record("retrying", 100));
  trackItem(fan, 0, record("running"));
  assert.equal(nextRetry(fan), Infinity);
  assert.equal(fan.retries.size, 0);
});

Deno.test("fan-out: counters follow each item's status", () => {
  const fan = newFan(["x", "y"]);
  trackItem(fan, 0, record("running"));
  trackItem(fan, 1, record("running"));
  trackItem(fan, 0, record("succeeded"));
  trackItem(fan, 1, record("failed", null, 3));
  assert.equal(fan.counts.running, 0);
  assert.equal(fan.counts.succeeded, 1);
  assert.equal(fan.counts.failed, 1);
  assert.equal(fanOpen(fan), false);
  assert.deepEqual(firstFailedItem(fan)?.[0], 1);
  assert.equal(mostAttempts(fan), 3);
});

Deno.test("fan-out: outputs come in item order", () => {
  const fan = newFan(["x", "y"]);
  fan.outputs.set(1, "Y");
  fan.outputs.set(0, "X");
  assert.deepEqual(fanOutputs(fan), ["X", "Y"]);
});
