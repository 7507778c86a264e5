/**
 * Sleeps, event waits and child runs, through the test kit (in-memory KV, a test clock):
 * what each outputs, how they park and wake, the events they take and refuse, their
 * timeouts, event triggers, children, and the input refused when a module loads.
 */
import assert from "node:assert/strict";
import { z } from "zod";
import {
  invoke,
  NonRetryableError,
  openEngine,
  pipeline,
  sleep,
  step,
  UsageError,
  waitFor,
  zonedTime,
} from "../lib/mod.ts";
import { testPipeline } from "../lib/testing/mod.ts";
import * as keys from "../lib/kv/keys.ts";

const START = "2026-11-02T03:00:00Z";

/** Every key under a prefix of kvflow's layout. */
async function keysUnder(kv: Deno.Kv, ...prefix: string[]): Promise<Deno.KvKey[]> {
  const found: Deno.KvKey[] = [];
  for await (const e of kv.list({ prefix: ["kvflow", ...prefix] })) found.push(e.key);
  return found;
}

// ---- a gate: approval or rejection of the logical date --------------------------------

const prepare = step("prepare", () => ({ total: 42 }));
const approval = waitFor("approval", {
  needs: { prepare },
  events: {
    "t.approved": z.object({ date: z.string(), by: z.string() }),
    "t.rejected": z.object({ date: z.string(), reason: z.string() }),
  },
  match: { field: "date", equals: (_inputs, run) => run.logicalDate },
  timeout: "2d",
});
const post = step("post", { needs: { approval, prepare } }, ({ approval, prepare }) => {
  if (approval.event === "t.rejected") {
    throw new NonRetryableError(`Rejected: ${approval.data.reason}`);
  }
  if (approval.event === "t.approved") return `posted ${prepare.total} (by ${approval.data.by})`;
  return "no event";
});
const gate = pipeline("gate", { steps: [prepare, approval, post] });

Deno.test("a wait parks the run with no lease; the matching event ends it and its output is the event", async () => {
  await using t = await testPipeline(gate, { clock: START });
  const started = await t.start({ date: "2026-11-01" });
  assert.equal(started.status, "waiting");
  assert.equal(started.steps.get("approval")?.status, "waiting");
  const wait = started.record.waitingFor!;
  assert.deepEqual(
    [wait.kind, wait.events, wait.field, wait.value],
    ["event", ["t.approved", "t.rejected"], "date", "2026-11-01"],
  );
  assert.equal(wait.until - wait.since, 2 * 86_400_000);
  assert.equal(started.record.dueAt, wait.until);
  assert.deepEqual(await keysUnder(t.engine.kv, "lease"), []);
  assert.equal(t.engine.worker.activeRuns, 0);
  // another date's event matches nothing
  const other = await t.send("t.approved", { date: "2026-10-31", by: "ann" });
  assert.deepEqual(other.woke, []);
  const sent = await t.send("t.approved", { date: "2026-11-01", by: "finance" }, { id: "ok-1" });
  assert.deepEqual(sent.woke, [{ runId: started.id, step: "approval", item: -1 }]);
  const run = await t.finish(started.id);
  assert.equal(run.status, "succeeded");
  assert.equal(await run.output("post"), "posted 42 (by finance)");
  const output = await run.output("approval") as Record<string, unknown>;
  assert.deepEqual(output, {
    event: "t.approved",
    data: { date: "2026-11-01", by: "finance" },
    id: "ok-1",
    at: Date.parse(START),
  });
  // nothing of the wait is left behind
  assert.deepEqual(await keysUnder(t.engine.kv, "wait"), []);
  assert.deepEqual(await keysUnder(t.engine.kv, "inbox"), []);
  assert.deepEqual(await keysUnder(t.engine.kv, "due"), []);
});

Deno.test("the first of several events wins: a rejection fails the next step with its reason, a later approval changes nothing", async () => {
  await using t = await testPipeline(gate, { clock: START });
  const started = await t.start({ date: "2026-11-01" });
  await t.send("t.rejected", { date: "2026-11-01", reason: "numbers look off" });
  const late = await t.send("t.approved", { date: "2026-11-01", by: "bo" });
  assert.deepEqual(late.woke, []);
  const run = await t.finish(started.id);
  assert.equal(run.status, "failed");
  assert.equal(run.steps.get("post")?.error?.message, "Rejected: numbers look off");
  assert.equal((await run.output("approval") as { event: string }).event, "t.rejected");
});

Deno.test("resuming after a rejection waits for a new event: the one it took is not taken again", async () => {
  await using t = await testPipeline(gate, { clock: START });
  const started = await t.start({ date: "2026-11-01" });
  await t.send("t.rejected", { date: "2026-11-01", reason: "no" });
  assert.equal((await t.finish(started.id)).status, "failed");
  // rerun from the wait: it waits again, and the rejection stays behind it
  t.clock.advance(1000);
  await t.engine.store.rerun(await t.engine.store.requireRun(started.id), gate, "approval");
  const waiting = await t.finish(started.id).catch(() => null);
  assert.ok(waiting);
  // a test clock jumps to the timeout: the run fails for lack of a new event
  assert.equal(waiting.status, "failed");
  assert.match(
    waiting.steps.get("approval")?.error?.message ?? "",
    /No t\.approved or t\.rejected event with date = "2026-11-01" arrived/,
  );
});

Deno.test("an event sent before the wait starts is not missed; one sent before the run was created counts only within a window", async () => {
  const nap = sleep("nap", { for: "1h" });
  const wait = waitFor("wait", {
    needs: { nap },
    events: { "t.go": null },
    match: { field: "key", equals: (_i, run) => String(run.params.key) },
    timeout: "1d",
  });
  const windowed = waitFor("windowed", {
    needs: { nap },
    events: { "t.early": null },
    timeout: "1d",
    window: "2h",
  });
  const early = pipeline("early", {
    params: z.object({ key: z.string() }),
    steps: [nap, wait, windowed],
  });
  await using t = await testPipeline(early, { clock: START });
  await t.send("t.early", { n: 1 }, { id: "before-the-run" });
  t.clock.advance(1000);
  const started = await t.start({ params: { key: "k1" } });
  assert.equal(started.record.waitingFor?.kind, "sleep");
  // sent while the run sleeps, before its wait starts: stored, woke nobody
  const sent = await t.send("t.go", { key: "k1" }, { id: "go-1" });
  assert.deepEqual(sent.woke, []);
  await t.advance("1h");
  const run = await t.inspect(started.id);
  assert.equal(run.status, "succeeded");
  assert.equal((await run.output("wait") as { id: string }).id, "go-1");
  assert.equal((await run.output("windowed") as { id: string }).id, "before-the-run");
  // the event page says which run each event woke
  const event = await t.engine.getEvent("go-1");
  assert.deepEqual(event?.effects.map((e) => [e.kind, e.runId, e.step]), [
    ["woke", started.id, "wait"],
  ]);
});

Deno.test("an event whose payload fails the wait's schema is recorded as not matching, and the wait goes on", async () => {
  await using t = await testPipeline(gate, { clock: START });
  const started = await t.start({ date: "2026-11-01" });
  await t.send("t.approved", { date: "2026-11-01", by: 7 }, { id: "bad" });
  const still = await t.inspect(started.id);
  assert.equal(still.status, "waiting");
  assert.equal(still.steps.get("approval")?.status, "waiting");
  const bad = await t.engine.getEvent("bad");
  // it reached the wait, which refused it: the effect says so, with why
  assert.deepEqual(bad?.effects.map((e) => [e.kind, e.runId]), [["mismatch", started.id]]);
  assert.match(bad!.effects[0].message!, /by: .*string/i);
  await t.send("t.approved", { date: "2026-11-01", by: "ann" }, { id: "good" });
  const run = await t.finish(started.id);
  assert.equal(run.status, "succeeded");
  assert.equal((await run.output("approval") as { id: string }).id, "good");
});

Deno.test("a timeout fails the step, skips what depends on it without failing the run, or continues with a value", async () => {
  const makes = (onTimeout: "fail" | "skip" | { value: string }) => {
    const w = waitFor("w", { events: { "t.never": null }, timeout: "3h", onTimeout });
    const after = step("after", { needs: { w } }, ({ w }) => `after ${w.event ?? w.data}`);
    return pipeline("timeouts", { steps: [w, after] });
  };
  {
    await using t = await testPipeline(makes("fail"), { clock: START });
    const started = await t.start();
    await t.advance("2h");
    assert.equal((await t.inspect(started.id)).status, "waiting");
    await t.advance("1h");
    const run = await t.inspect(started.id);
    assert.equal(run.status, "failed");
    assert.equal(run.steps.get("w")?.error?.name, "TimedOut");
    assert.equal(run.steps.get("after")?.status, "skipped");
  }
  {
    await using t = await testPipeline(makes("skip"), { clock: START });
    const run = await t.finish((await t.start()).id);
    assert.equal(run.status, "succeeded");
    assert.deepEqual(
      [run.steps.get("w")?.status, run.steps.get("w")?.timedOut],
      ["skipped", true],
    );
    assert.deepEqual(
      [run.steps.get("after")?.status, run.steps.get("after")?.timedOut],
      ["skipped", true],
    );
  }
  {
    await using t = await testPipeline(makes({ value: "fallback" }), { clock: START });
    const run = await t.finish((await t.start()).id);
    assert.equal(run.status, "succeeded");
    assert.equal(await run.output("after"), "after fallback");
    assert.equal((await run.output("w") as { reason: string }).reason, "timeout");
  }
});

Deno.test("a sleep ends at its time, for a duration or until a time computed from the run", async () => {
  const nap = sleep("nap", { for: "90m" });
  const morning = sleep("morning", {
    needs: { nap },
    until: (_inputs, run) => zonedTime(run.logicalDate, "06:00", "Europe/Berlin", 1),
  });
  const done = step(
    "done",
    { needs: { morning } },
    ({ morning }) => new Date(morning.until).toISOString(),
  );
  const p = pipeline("sleeper", { steps: [nap, morning, done] });
  await using t = await testPipeline(p, { clock: START });
  const started = await t.start({ date: "2026-11-01" });
  assert.equal(started.record.waitingFor?.kind, "sleep");
  assert.equal(started.record.dueAt, Date.parse(START) + 90 * 60_000);
  await t.advance("89m");
  assert.equal((await t.inspect(started.id)).steps.get("nap")?.status, "waiting");
  await t.advance("1m");
  const after = await t.inspect(started.id);
  assert.equal(after.steps.get("nap")?.status, "succeeded");
  // 06:00 on 2 November in Berlin (winter time, UTC+1) is 05:00 UTC
  assert.equal(after.record.dueAt, Date.parse("2026-11-02T05:00:00Z"));
  const run = await t.finish(started.id);
  assert.equal(await run.output("done"), "2026-11-02T05:00:00.000Z");
});

Deno.test("zonedTime follows the zone's daylight saving time", () => {
  assert.equal(
    zonedTime("2026-07-01", "06:00", "Europe/Berlin"),
    Date.parse("2026-07-01T04:00:00Z"),
  );
  assert.equal(
    zonedTime("2026-03-28", "06:00", "Europe/Berlin", 1),
    Date.parse("2026-03-29T04:00:00Z"),
  );
  assert.throws(() => zonedTime("2026-07-01", "6am", "Europe/Berlin"), TypeError);
  assert.throws(() => zonedTime("2026-07-01", "06:00", "Mars/Olympus"), /unknown time zone/);
});

// ---- event triggers ---------------------------------------------------------------------

const refund = step("refund", (_inputs, ctx) => `refund ${ctx.run.params.order}`);
const refunds = pipeline("refunds", {
  params: z.object({ order: z.string() }),
  on: { "order.refunded": (data) => ({ order: data.orderId }) },
  steps: [refund],
});

Deno.test("an event that triggers a pipeline starts one run per event id; a payload it refuses stores nothing", async () => {
  await using t = await testPipeline(refunds, { clock: START });
  const first = await t.send("order.refunded", { orderId: "o-1" }, { id: "evt-1" });
  assert.deepEqual(first.started.map((r) => r.id), ["refunds:on:evt-1"]);
  assert.equal(first.started[0].trigger, "event");
  assert.equal(first.started[0].event, "evt-1");
  const again = await t.send("order.refunded", { orderId: "o-1" }, { id: "evt-1" });
  assert.equal(again.duplicate, true);
  assert.deepEqual(again.started, []);
  const run = await t.inspect("refunds:on:evt-1");
  assert.equal(run.status, "succeeded");
  assert.equal(await run.output("refund"), "refund o-1");
  const refused = await t.send("order.refunded", { order_id: "o-2" }, { id: "evt-2" })
    .then(() => null, (e) => e);
  assert.ok(refused instanceof UsageError);
  assert.equal(refused.code, "invalid_params");
  assert.match(refused.message, /pipeline 'refunds'.*order/);
  assert.equal(await t.engine.getEvent("evt-2"), null);
  assert.equal((await t.engine.listRuns({ pipeline: "refunds" })).runs.length, 1);
});

Deno.test("bad events are refused with a clear error and store nothing", async () => {
  await using t = await testPipeline(refunds, { clock: START });
  const refuse = async (name: string, data: unknown, id?: string) => {
    const error = await t.engine.send(name, data, { id }).then(() => null, (e) => e);
    assert.ok(error instanceof UsageError, `${name}: ${error}`);
    return error;
  };
  assert.equal((await refuse("bad name!", {})).code, "invalid_event");
  assert.equal((await refuse("", {})).code, "invalid_event");
  assert.equal((await refuse("ok", {}, "no spaces please")).code, "invalid_event");
  assert.equal((await refuse("ok", { big: "x".repeat(40_000) })).code, "too_large");
  assert.equal((await refuse("ok", { n: 1n })).code, "invalid_event");
  assert.equal((await refuse("ok", { n: NaN })).code, "invalid_event");
  assert.deepEqual((await t.engine.listEvents()).events, []);
});

// ---- children ---------------------------------------------------------------------------

let brokenRegions = new Set<string>();
const total = step("total", (_inputs, ctx) => {
  const region = String(ctx.run.params.region);
  if (brokenRegions.has(region)) throw new NonRetryableError(`no data for ${region}`);
  return `report ${region}`;
});
const regionReport = pipeline("region-report", {
  params: z.object({ region: z.string() }),
  steps: [total],
  result: total,
});
const regions = step("regions", () => ["north", "south", "east"]);
const reports = invoke("reports", {
  needs: { regions },
  items: ({ regions }) => regions,
  pipeline: regionReport,
  params: (region) => ({ region }),
});
const summary = invoke("summary", { pipeline: regionReport, params: () => ({ region: "all" }) });
const combine = step(
  "combine",
  { needs: { reports, summary } },
  ({ reports, summary }) => [...reports, summary].join(", "),
);
const parentPipeline = pipeline("regions", { steps: [regions, reports, summary, combine] });

Deno.test("a step invokes a child pipeline per item and takes their results; parent and child are linked both ways", async () => {
  brokenRegions = new Set();
  await using t = await testPipeline(parentPipeline, { clock: START });
  const run = await t.finish((await t.start()).id);
  assert.equal(run.status, "succeeded");
  assert.equal(await run.output("combine"), "report north, report south, report east, report all");
  const items = await run.items("reports");
  assert.deepEqual([...items.values()].map((i) => i.child), [
    `${run.id}:reports:0`,
    `${run.id}:reports:1`,
    `${run.id}:reports:2`,
  ]);
  assert.equal(run.steps.get("summary")?.child, `${run.id}:summary`);
  const child = await t.engine.getRun(`${run.id}:reports:1`);
  assert.deepEqual(child?.parent, { runId: run.id, step: "reports", item: 1 });
  assert.equal(child?.trigger, "child");
  assert.deepEqual(child?.params, { region: "south" });
  assert.equal(child?.logicalDate, run.record.logicalDate);
});

Deno.test("a failed child fails its step with the child's id and error; resuming the parent resumes the child", async () => {
  brokenRegions = new Set(["south"]);
  await using t = await testPipeline(parentPipeline, { clock: START });
  const failed = await t.finish((await t.start()).id);
  assert.equal(failed.status, "failed");
  const south = `${failed.id}:reports:1`;
  const item = (await failed.items("reports")).get(1)!;
  assert.equal(item.status, "failed");
  assert.match(
    item.error!.message,
    new RegExp(`Child run ${south} failed at step 'total': no data for south`),
  );
  assert.equal((await t.engine.getRun(south))?.status, "failed");
  const before = (await t.engine.listRuns({ pipeline: "region-report" })).runs.length;
  brokenRegions = new Set();
  const resumed = await t.resume(failed.id);
  assert.equal(resumed.status, "succeeded");
  assert.equal((await t.engine.getRun(south))?.status, "succeeded");
  // the same child ran again: none was started in its place
  assert.equal((await t.engine.listRuns({ pipeline: "region-report" })).runs.length, before);
  assert.equal(
    await resumed.output("combine"),
    "report north, report south, report east, report all",
  );
});

Deno.test("cancelling a waiting parent cancels its children and leaves no wait entry behind", async () => {
  const hold = waitFor("hold", { events: { "t.release": null }, timeout: "1d" });
  const child = pipeline("held-child", { steps: [hold] });
  const kid = invoke("kid", { pipeline: child, params: () => ({}) });
  const other = waitFor("other", { events: { "t.other": null }, timeout: "1d" });
  const parent = pipeline("holder", { steps: [kid, other] });
  await using t = await testPipeline(parent, { clock: START });
  const started = await t.start();
  assert.equal(started.status, "waiting");
  const childId = `${started.id}:kid`;
  await t.engine.worker.execute(childId);
  assert.equal((await t.engine.getRun(childId))?.status, "waiting");
  assert.equal((await keysUnder(t.engine.kv, "wait")).length, 2);
  await t.engine.store.cancel(started.id);
  assert.equal((await t.engine.getRun(started.id))?.status, "cancelled");
  assert.equal((await t.engine.getRun(childId))?.status, "cancelled");
  assert.deepEqual(await keysUnder(t.engine.kv, "wait"), []);
  // the cancelled child's delivery to its cancelled parent leads nowhere and is cleared
  await t.engine.worker.sweep();
  assert.deepEqual(await keysUnder(t.engine.kv, "inbox"), []);
  assert.deepEqual(await keysUnder(t.engine.kv, "due"), []);
});

// ---- refused when a module or the registry loads -------------------------------------------

Deno.test("waits beyond 365 days, unknown child pipelines and child cycles are refused when they load", async () => {
  assert.throws(() => sleep("s", { for: "366d" }), /longer than 365 days/);
  assert.throws(
    () => waitFor("w", { events: { "a.b": null }, timeout: "400d" }),
    /longer than 365 days/,
  );
  assert.throws(() => waitFor("w", { events: {}, timeout: "1d" }), /at least one event/);
  assert.throws(
    () => waitFor("w", { events: { "bad name": null }, timeout: "1d" }),
    /Invalid event name/,
  );
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => waitFor("w", { events: { "a.b": null } } as any),
    /needs a timeout/,
  );
  assert.throws(
    () =>
      waitFor("w", {
        events: { "a.b": null },
        timeout: "1d",
        match: { field: "a.b", equals: () => 1 },
      }),
    /top-level payload field/,
  );
  const lonely = pipeline("lonely", { steps: [step("x", () => 1)] });
  const caller = pipeline("caller", {
    steps: [invoke("call", { pipeline: lonely, params: () => ({}) })],
  });
  await assert.rejects(
    openEngine({ path: ":memory:", pipelines: [caller] }),
    /step 'call' invokes pipeline 'lonely', which is not registered/,
  );
  // a -> b -> a, through the registry: b is defined with a stand-in named "a"
  const standIn = pipeline("a", { steps: [step("y", () => 1)] });
  const b = pipeline("b", { steps: [invoke("to-a", { pipeline: standIn, params: () => ({}) })] });
  const a = pipeline("a", { steps: [invoke("to-b", { pipeline: b, params: () => ({}) })] });
  await assert.rejects(
    openEngine({ path: ":memory:", pipelines: [a, b] }),
    /invoke each other in a cycle: a -> b -> a/,
  );
});

Deno.test("a parked run keeps its place: the due entry is the wait's timeout and a claim before it is refused", async () => {
  await using t = await testPipeline(gate, { clock: START });
  const started = await t.start({ date: "2026-11-01" });
  const due = await keysUnder(t.engine.kv, "due");
  assert.deepEqual(due, [keys.due(started.record.dueAt!, started.id)]);
  assert.equal(
    await t.engine.store.claim(started.id, { owner: "x", host: "h", pid: 1 }, 1000),
    null,
  );
});

Deno.test("the nightly with approval required waits for finance, and finishes once the approval comes", async () => {
  const { default: nightly } = await import("../pipelines/nightly/mod.ts");
  await using t = await testPipeline(nightly, { clock: "2026-11-02T03:00:00Z" });
  const waiting = await t.start({ date: "2026-11-01", params: { approval: "required" } });
  assert.equal(waiting.status, "waiting");
  assert.equal(waiting.record.waitingFor?.kind, "event");
  assert.equal(waiting.steps.get("update-accounting")?.status ?? "pending", "pending");
  await t.send("nightly.approved", { date: "2026-11-01" });
  const run = await t.finish(waiting.id);
  assert.equal(run.status, "succeeded");
});
