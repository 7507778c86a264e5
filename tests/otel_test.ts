/**
 * OpenTelemetry traces of runs, exported by Deno's built-in exporter from real CLI
 * processes to a real OTLP receiver on loopback (`http/json`): the span tree of one run,
 * its trace id as stored with the run, and the same trace continued after a SIGKILL.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FIXTURE_CLI, poll, runIdOf, Sandbox } from "./_support/harness.ts";
import { OtlpReceiver, type ReceivedSpan } from "./_support/otlp.ts";

function one(spans: ReceivedSpan[], name: string): ReceivedSpan {
  const found = spans.filter((s) => s.name === name);
  assert.equal(found.length, 1, `${found.length} spans named '${name}'`);
  return found[0];
}

Deno.test("a run's trace: run, session, attempts, retry, wait, fan-out items and failure in one tree, its id stored with the run", async () => {
  await using box = await Sandbox.create();
  await using receiver = new OtlpReceiver();
  const env = { ...receiver.env(), ECHO_URL: `${receiver.url}/echo` };
  const run = await box.cli(["run", "tests/fixtures/traced.ts"], { env });
  assert.equal(run.code, 1, run.stdout + run.stderr);
  const id = runIdOf(run.stdout);
  const stored = (await box.run(id)).trace;
  assert.ok(stored, "no trace stored with the run");
  assert.match(stored.traceId, /^[0-9a-f]{32}$/);
  assert.equal((await box.status(id)).trace?.traceId, stored.traceId);

  await receiver.waitForSpan("the session's span", (s) => s.name === "session traced");
  const spans = receiver.spansOf(id);
  for (const span of spans) assert.equal(span.traceId, stored.traceId, span.name);

  const root = one(spans, "run traced");
  assert.equal(root.spanId, stored.spanId);
  assert.equal(root.attributes["kvflow.pipeline"], "traced");
  assert.equal(root.attributes["kvflow.trigger"], "cli");
  assert.match(String(root.attributes["kvflow.logical_date"]), /^\d{4}-\d{2}-\d{2}$/);

  const session = one(spans, "session traced");
  assert.equal(session.parentSpanId, root.spanId);
  assert.equal(session.attributes["kvflow.outcome"], "failed");
  assert.equal(session.status, 2);

  const underSession = (name: string) => {
    const span = one(spans, name);
    assert.equal(span.parentSpanId, session.spanId, `${name} is not under the session`);
    return span;
  };

  const call = underSession("step call");
  assert.equal(call.attributes["kvflow.step"], "call");
  assert.equal(call.attributes["kvflow.attempt"], 1);
  assert.equal(call.attributes["kvflow.outcome"], "succeeded");
  // the step's own fetch nests under its attempt, made by Deno itself
  const fetchSpan = receiver.spans.find((s) =>
    s.scope === "deno" && s.parentSpanId === call.spanId &&
    String(s.attributes["url.full"]).endsWith("/echo")
  );
  assert.ok(fetchSpan, "the step's fetch is not under its attempt span");
  assert.equal(fetchSpan.traceId, stored.traceId);

  const flaky = spans.filter((s) => s.name === "step flaky")
    .sort((a, b) =>
      Number(a.attributes["kvflow.attempt"]) - Number(b.attributes["kvflow.attempt"])
    );
  assert.deepEqual(
    flaky.map((s) => [s.attributes["kvflow.attempt"], s.attributes["kvflow.outcome"], s.status]),
    [[1, "retrying", 2], [2, "succeeded", 0]],
  );
  for (const span of flaky) assert.equal(span.parentSpanId, session.spanId);
  const exception = flaky[0].events.find((e) => e.name === "exception");
  assert.equal(exception?.attributes["exception.message"], "Upstream not ready (fails once)");
  const retry = underSession("retry flaky");
  assert.equal(retry.attributes["kvflow.attempt"], 1);
  assert.ok(
    retry.start >= flaky[0].end - 1 && retry.end <= flaky[1].start + 1,
    "retry not between",
  );
  assert.ok(retry.end - retry.start >= 40, `retry span of ${retry.end - retry.start} ms`);

  const nap = underSession("wait nap");
  assert.equal(nap.attributes["kvflow.wait"], "sleep");
  assert.equal(nap.attributes["kvflow.outcome"], "succeeded");
  assert.ok(nap.end - nap.start >= 90, `sleep span of ${nap.end - nap.start} ms`);

  for (const item of [0, 1]) {
    const span = underSession(`step each[${item}]`);
    assert.equal(span.attributes["kvflow.item"], item);
    assert.equal(span.attributes["kvflow.outcome"], "succeeded");
  }
  const broken = underSession("step each[2]");
  assert.equal(broken.attributes["kvflow.item"], 2);
  assert.equal(broken.attributes["kvflow.outcome"], "failed");
  assert.equal(broken.status, 2);
  assert.equal(
    broken.events.find((e) => e.name === "exception")?.attributes["exception.message"],
    "Item 2 is broken",
  );

  // ctx.log goes out as a log record in the attempt's span
  const logged = await poll(
    "the log record",
    10_000,
    () => receiver.logs.find((l) => l.body.includes("calling the echo service")),
  );
  assert.equal(logged.traceId, stored.traceId);
  assert.equal(logged.spanId, call.spanId);
});

Deno.test("a run taken over after SIGKILL continues the same trace", async () => {
  await using box = await Sandbox.create();
  await using receiver = new OtlpReceiver();
  const env = { ...receiver.env(), GATED: "s3", KVFLOW_LEASE_MS: "60000" };
  const first = box.spawn(["run", "tests/fixtures/five.ts"], { env });
  await box.waitForLedger("s3 started", (l) => l.step === "s3");
  // the first process's finished attempts are exported before it dies
  await receiver.waitForSpan("step s2", (s) => s.name === "step s2");
  first.kill("SIGKILL");
  const id = runIdOf((await first.exit()).stdout);
  const stored = (await box.run(id)).trace!;
  assert.ok(stored);

  await box.openGate("s3");
  const resumed = await box.cli(["resume", id], { env });
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  assert.deepEqual((await box.run(id)).trace, stored, "the stored trace changed");

  const session = await receiver.waitForSpan(
    "the resumed session",
    (s) => s.name === "session five-steps" && s.attributes["kvflow.run_id"] === id,
  );
  assert.equal(session.traceId, stored.traceId);
  assert.equal(session.parentSpanId, stored.spanId);
  assert.equal(session.attributes["kvflow.takeovers"], 1);
  assert.equal(session.attributes["kvflow.outcome"], "succeeded");
  const spans = receiver.spansOf(id);
  for (const span of spans) assert.equal(span.traceId, stored.traceId, span.name);
  const s2 = one(spans, "step s2");
  assert.notEqual(s2.parentSpanId, session.spanId, "s2 ran in the first session");
  const s3 = one(spans, "step s3");
  assert.equal(s3.parentSpanId, session.spanId);
  assert.equal(s3.attributes["kvflow.attempt"], 2);
  one(spans, "step s5");
});

Deno.test("a child run's trace nests under its parent's session, in the parent's trace", async () => {
  await using box = await Sandbox.create();
  await using receiver = new OtlpReceiver();
  const run = await box.cli(["run", "fan-parent", "--param", "items=2"], {
    entry: FIXTURE_CLI,
    env: receiver.env(),
  });
  assert.equal(run.code, 0, run.stdout + run.stderr);
  const id = runIdOf(run.stdout);
  const stored = (await box.run(id)).trace!;
  await receiver.waitForSpan(
    "the parent's last session",
    (s) => s.name === "session fan-parent" && s.attributes["kvflow.outcome"] === "succeeded",
  );
  const sessions = receiver.spansOf(id).filter((s) => s.name === "session fan-parent");
  const children = await box.runsOf("fan-child");
  assert.equal(children.length, 2);
  for (const child of children) {
    assert.equal(child.trace?.traceId, stored.traceId, "the child has a trace of its own");
    const root = one(receiver.spansOf(child.id), "run fan-child");
    assert.equal(root.spanId, child.trace!.spanId);
    assert.equal(root.attributes["kvflow.parent_run_id"], id);
    assert.ok(sessions.some((s) => s.spanId === root.parentSpanId), "not under a parent session");
    const item = child.parent!.item;
    const wait = one(receiver.spansOf(id), `wait children[${item}]`);
    assert.equal(wait.attributes["kvflow.wait"], "child");
    assert.equal(wait.attributes["kvflow.outcome"], "succeeded");
  }
});
