import assert from "node:assert/strict";
import { resolveRetry, retryDelay } from "../../lib/define/retry.ts";
import type { ResolvedRetry } from "../../lib/define/retry.ts";

const policy = (over: Partial<ResolvedRetry> = {}): ResolvedRetry => ({
  attempts: 5,
  delayMs: 1000,
  backoff: "exponential",
  maxDelayMs: 60_000,
  jitter: 0,
  ...over,
});

Deno.test("resolveRetry() with no policy gives 3 attempts, 1 s doubling, a 5 min cap and 20 % jitter", () => {
  assert.deepEqual(resolveRetry(undefined), {
    attempts: 3,
    delayMs: 1000,
    backoff: "exponential",
    maxDelayMs: 5 * 60 * 1000,
    jitter: 0.2,
  });
});

Deno.test("resolveRetry() takes each field given and fills the rest from the base", () => {
  const base = policy({ attempts: 7, jitter: 0.5 });
  assert.deepEqual(resolveRetry({ delay: "2s", backoff: "fixed" }, base), {
    attempts: 7,
    delayMs: 2000,
    backoff: "fixed",
    maxDelayMs: 60_000,
    jitter: 0.5,
  });
  assert.deepEqual(resolveRetry({ attempts: 1, maxDelay: "1h", jitter: 0 }, base), {
    attempts: 1,
    delayMs: 1000,
    backoff: "exponential",
    maxDelayMs: 3_600_000,
    jitter: 0,
  });
});

Deno.test("resolveRetry() accepts the bounds: 1 and 1000 attempts, jitter 0 and 1", () => {
  assert.equal(resolveRetry({ attempts: 1 }).attempts, 1);
  assert.equal(resolveRetry({ attempts: 1000 }).attempts, 1000);
  assert.equal(resolveRetry({ jitter: 0 }).jitter, 0);
  assert.equal(resolveRetry({ jitter: 1 }).jitter, 1);
});

Deno.test("resolveRetry() refuses attempts, backoff and jitter out of range, naming the owner", () => {
  for (const attempts of [0, 1001, 1.5, -1, NaN]) {
    assert.throws(
      () => resolveRetry({ attempts }, undefined, "step 'pull'"),
      (e: unknown) =>
        e instanceof RangeError && e.message.includes("step 'pull'") &&
        e.message.includes("attempts"),
      `attempts ${attempts}`,
    );
  }
  assert.throws(
    () => resolveRetry({ backoff: "linear" as "fixed" }),
    (e: unknown) => e instanceof RangeError && e.message.includes('"linear"'),
  );
  for (const jitter of [-0.1, 1.01, NaN]) {
    assert.throws(
      () => resolveRetry({ jitter }),
      (e: unknown) => e instanceof RangeError && e.message.includes("jitter"),
      `jitter ${jitter}`,
    );
  }
});

Deno.test("resolveRetry() refuses a delay that is not a duration with a TypeError", () => {
  assert.throws(() => resolveRetry({ delay: "soon" as "1s" }), TypeError);
  assert.throws(() => resolveRetry({ maxDelay: -5 }), TypeError);
});

Deno.test("retryDelay() doubles per attempt up to maxDelay", () => {
  const retry = policy({ delayMs: 1000, maxDelayMs: 10_000 });
  const delays = [1, 2, 3, 4, 5, 6].map((n) => retryDelay(retry, n, 0));
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 10_000, 10_000]);
});

Deno.test("retryDelay() with fixed backoff waits the same delay after every attempt", () => {
  const retry = policy({ backoff: "fixed", delayMs: 750 });
  assert.deepEqual([1, 2, 10, 500].map((n) => retryDelay(retry, n, 0)), [750, 750, 750, 750]);
});

Deno.test("retryDelay() caps a fixed delay larger than maxDelay too", () => {
  assert.equal(
    retryDelay(policy({ backoff: "fixed", delayMs: 9000, maxDelayMs: 4000 }), 1, 0),
    4000,
  );
});

Deno.test("retryDelay() stays finite and at the cap for a huge attempt number", () => {
  const retry = policy({ delayMs: 1000, maxDelayMs: 300_000 });
  assert.equal(retryDelay(retry, 1000, 0), 300_000);
  assert.equal(retryDelay(retry, Number.MAX_SAFE_INTEGER, 0), 300_000);
  assert.equal(retryDelay(policy({ delayMs: 0 }), 1000, 0), 0);
});

Deno.test("retryDelay() takes off jitter × random of the capped delay, rounded to a ms", () => {
  const retry = policy({ delayMs: 1000, maxDelayMs: 6000, jitter: 0.2 });
  assert.equal(retryDelay(retry, 1, 0), 1000);
  assert.equal(retryDelay(retry, 1, 0.5), 900); // 1000 × (1 − 0.2 × 0.5)
  assert.equal(retryDelay(retry, 3, 0.25), 3800); // 4000 × 0.95
  assert.equal(retryDelay(retry, 9, 0.5), 5400); // capped at 6000, × 0.9
  assert.equal(retryDelay(policy({ delayMs: 1001, jitter: 0.5 }), 1, 0.999), 501); // 1001 × 0.5005 = 501.0005
});

Deno.test("retryDelay() with jitter j stays within ((1 − j) × delay, delay] for any random in [0, 1)", () => {
  for (const jitter of [0.2, 0.5, 1]) {
    const retry = policy({ delayMs: 2000, maxDelayMs: 50_000, jitter });
    for (let attempt = 1; attempt <= 8; attempt++) {
      const capped = Math.min(50_000, 2000 * 2 ** (attempt - 1));
      for (let i = 0; i < 200; i++) {
        const random = i / 200;
        const delay = retryDelay(retry, attempt, random);
        assert.ok(delay <= capped, `${delay} > ${capped}`);
        assert.ok(delay >= Math.round(capped * (1 - jitter)), `${delay} too small`);
      }
    }
  }
});

Deno.test("retryDelay() uses Math.random() when no random is given, within the jitter bounds", () => {
  const retry = policy({ delayMs: 10_000, jitter: 0.3 });
  const seen = new Set<number>();
  for (let i = 0; i < 50; i++) {
    const delay = retryDelay(retry, 1);
    assert.ok(delay >= 7000 && delay <= 10_000, String(delay));
    seen.add(delay);
  }
  assert.ok(seen.size > 1, "jitter spreads the delays");
});
