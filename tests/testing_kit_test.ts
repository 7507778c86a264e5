import assert from "node:assert/strict";
import { pipeline, step } from "../lib/mod.ts";
import { TestClock, testPipeline } from "../lib/testing/mod.ts";

function mailPipeline(sent: string[]) {
  const managers = step("managers", () => ["ada", "bo", "cy"]);
  const send = step("send", {
    needs: { managers },
    items: ({ managers }) => managers,
    retry: { attempts: 4, delay: "5m", backoff: "exponential", maxDelay: "1h" },
  }, (manager, ctx) => {
    sent.push(`${manager}:${ctx.attempt}`);
    return `${manager} <- ${ctx.idempotencyKey}`;
  });
  const report = step("report", { needs: { send } }, ({ send }) => send.length);
  return pipeline("mail", { steps: [managers, send, report] });
}

Deno.test("the test kit runs retries with minute-long backoffs in milliseconds on its clock", async () => {
  const sent: string[] = [];
  await using t = await testPipeline(mailPipeline(sent), { clock: "2026-11-02T03:00:00Z" });
  t.fail("send", { item: 1, times: 2, error: "SMTP 421: try again later" });
  const started = performance.now();
  const run = await t.run({ date: "2026-11-01" });
  assert.ok(performance.now() - started < 2000, "no real waiting for 5 and 10 minute backoffs");
  assert.equal(run.status, "succeeded");
  assert.equal(run.record.logicalDate, "2026-11-01");
  // item 1 failed twice (5 min, then 10 min of backoff on the clock), then passed
  const item1 = run.attempts("send").filter((a) => a.item === 1);
  assert.deepEqual(item1.map((a) => a.status), ["failed", "failed", "succeeded"]);
  assert.equal(item1[0].error?.message, "SMTP 421: try again later");
  // 5 then 10 minutes of backoff, less at most 20% jitter each
  assert.ok(t.clock.now() >= Date.parse("2026-11-02T03:00:00Z") + 12 * 60_000);
  assert.deepEqual(await run.output("report"), 3);
  assert.ok(!sent.includes("bo:1") && sent.includes("bo:3"), "injected failures skip the body");
});

Deno.test("the test kit tells a retry-then-fail-then-resume story with one alert", async () => {
  const sent: string[] = [];
  await using t = await testPipeline(mailPipeline(sent));
  t.fail("send", { item: 2 }); // the mail server refuses cy's mail on every attempt
  const failed = await t.run();
  assert.equal(failed.status, "failed");
  assert.equal(failed.steps.get("report")?.status, "skipped");
  assert.equal(failed.attempts("send").filter((a) => a.item === 2).length, 4);
  assert.equal(failed.alerts.length, 1);
  assert.equal(failed.alerts[0].step, "send");

  t.heal();
  const resumed = await t.resume(failed.id);
  assert.equal(resumed.status, "succeeded");
  // only cy's mail ran again; ada and bo were checkpointed
  assert.deepEqual(sent.filter((s) => s.startsWith("ada")), ["ada:1"]);
  assert.deepEqual(sent.filter((s) => s.startsWith("cy")), ["cy:1"]);
  assert.equal(resumed.alerts.length, 1);
});

Deno.test("a non-retryable injected failure fails the step at its first attempt", async () => {
  await using t = await testPipeline(mailPipeline([]));
  t.fail("managers", { nonRetryable: true, error: "Directory service returned 403" });
  const run = await t.run();
  assert.equal(run.status, "failed");
  assert.equal(run.attempts("managers").length, 1);
  assert.equal(run.steps.get("managers")?.error?.name, "NonRetryableError");
});

Deno.test("a manual test clock moves only when advanced, firing wake-ups in order", () => {
  const clock = new TestClock(0, { auto: false });
  const fired: string[] = [];
  clock.after(300, () => fired.push(`b@${clock.now()}`));
  clock.after(100, () => fired.push(`a@${clock.now()}`));
  clock.advance(50);
  assert.deepEqual(fired, []);
  clock.advance(500);
  assert.deepEqual(fired, ["a@100", "b@300"]);
  assert.equal(clock.now(), 550);
  assert.throws(() => new TestClock("not a date"), TypeError);
});

Deno.test("fail() refuses a step the pipeline does not have", async () => {
  await using t = await testPipeline(mailPipeline([]));
  assert.throws(() => t.fail("sned"), /has no step 'sned'/);
});
