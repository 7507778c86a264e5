/**
 * Deadlines on a test clock, in memory: the rule's arithmetic (a time of day in the
 * schedule's zone, the next day when it is not after the tick, across DST; a duration
 * after the tick), the definition errors, and the watch that finds missed ticks — once
 * per tick however many workers look, nothing for a run that succeeded in time, and at
 * most seven days back.
 *
 * @module
 */
import assert from "node:assert/strict";
import { openEngine, pipeline, type ScheduleOptions, step } from "../lib/mod.ts";
import { deadlineOf, lastTickDue, parseDeadline } from "../lib/define/deadline.ts";
import { DeadlineWatch } from "../lib/engine/deadlines.ts";
import { tickRunId } from "../lib/engine/scheduler.ts";
import { alertText } from "../lib/alerts/alert.ts";
import * as keys from "../lib/kv/keys.ts";
import { app } from "../lib/http/service.ts";
import { TestClock } from "../lib/testing/mod.ts";
import { SMTPServer } from "smtp-server";
import type { RunRecord } from "../lib/mod.ts";
import { missReason } from "../lib/engine/deadlines.ts";

const at = (iso: string): number => Date.parse(iso);
const iso = (ms: number): string => new Date(ms).toISOString();
const BERLIN = "Europe/Berlin";

Deno.test("a time-of-day deadline is the first such time in the zone after the tick: same day, or the next", () => {
  const seven = parseDeadline("x", "07:00");
  // 03:00 CEST tick, 07:00 CEST the same day
  assert.equal(
    iso(deadlineOf(seven, BERLIN, at("2025-06-10T01:00:00Z"))),
    "2025-06-10T05:00:00.000Z",
  );
  // 22:00 CEST tick: 07:00 the next day
  assert.equal(
    iso(deadlineOf(seven, BERLIN, at("2025-06-10T20:00:00Z"))),
    "2025-06-11T05:00:00.000Z",
  );
  // a tick at 07:00 itself is due at 07:00 the next day
  assert.equal(
    iso(deadlineOf(seven, BERLIN, at("2025-06-10T05:00:00Z"))),
    "2025-06-11T05:00:00.000Z",
  );
  // winter: 07:00 CET is 06:00Z
  assert.equal(
    iso(deadlineOf(seven, BERLIN, at("2025-12-10T02:00:00Z"))),
    "2025-12-10T06:00:00.000Z",
  );
});

Deno.test("a time-of-day deadline across DST: 4 real hours after 03:00 on the spring-forward day; a skipped time moves past the gap; a doubled time counts once", () => {
  const seven = parseDeadline("x", "07:00");
  // 2026-03-29: 03:00 CEST (01:00Z) tick, 07:00 CEST is 05:00Z
  assert.equal(
    iso(deadlineOf(seven, BERLIN, at("2026-03-29T01:00:00Z"))),
    "2026-03-29T05:00:00.000Z",
  );
  // a 00:30 CET tick (23:30Z the day before) due at 02:30, which does not exist that night
  const halfPastTwo = parseDeadline("x", "02:30");
  assert.equal(
    iso(deadlineOf(halfPastTwo, BERLIN, at("2026-03-28T23:30:00Z"))),
    "2026-03-29T01:00:00.000Z", // 03:00 CEST, the first moment after the gap
  );
  // 2026-10-25: 02:30 happens twice; the first (CEST, 00:30Z) counts
  assert.equal(
    iso(deadlineOf(halfPastTwo, BERLIN, at("2026-10-24T22:30:00Z"))),
    "2026-10-25T00:30:00.000Z",
  );
});

Deno.test("a duration deadline is real time after the tick, DST or not", () => {
  const four = parseDeadline("x", "4h");
  assert.equal(
    iso(deadlineOf(four, BERLIN, at("2026-03-28T23:00:00Z"))),
    "2026-03-29T03:00:00.000Z",
  );
  assert.equal(deadlineOf(parseDeadline("x", "3s"), "UTC", 1_000), 4_000);
});

Deno.test("lastTickDue(): ticks at or before it have passed their deadline, later ones have not", () => {
  const seven = parseDeadline("x", "07:00");
  for (const now of ["2025-06-10T05:00:00Z", "2025-06-10T09:30:00Z", "2025-06-11T04:59:59Z"]) {
    const last = lastTickDue(seven, BERLIN, at(now));
    assert.ok(deadlineOf(seven, BERLIN, last) <= at(now), now);
    assert.ok(deadlineOf(seven, BERLIN, last + 1000) > at(now), now);
  }
  assert.equal(lastTickDue(parseDeadline("x", "90m"), "UTC", 10_000_000), 10_000_000 - 5_400_000);
});

Deno.test("a bad deadline is refused when the module loads, naming the pipeline and the field", () => {
  for (const deadline of ["7am", "25:00", "07:60", "0s", "-4h", ""]) {
    assert.throws(
      () =>
        pipeline("nightly-report", {
          schedule: { cron: "0 3 * * *", deadline },
          steps: [step("a", () => 1)],
        }),
      (error: Error) =>
        error instanceof TypeError && error.message.includes("pipeline 'nightly-report'") &&
        error.message.includes("deadline"),
      deadline,
    );
  }
  const p = pipeline("ok", {
    schedule: { cron: "0 3 * * *", deadline: "07:00:30" },
    steps: [step("a", () => 1)],
  });
  assert.equal(p.schedule?.deadline?.kind, "time");
});

/** The nightly job: 03:00 Berlin, due by 07:00; its step fails while `failing` is set. */
async function nightly(schedule: Partial<ScheduleOptions> = {}) {
  const clock = new TestClock("2025-06-09T12:00:00Z", { auto: false });
  const flags = { failing: false };
  const work = step("export", { retry: { attempts: 1 } }, () => {
    if (flags.failing) throw new Error("warehouse is read-only");
    return 1;
  });
  const p = pipeline("nightly-report", {
    schedule: { cron: "0 3 * * *", timezone: BERLIN, deadline: "07:00", ...schedule },
    steps: [work],
  });
  const engine = await openEngine({
    path: ":memory:",
    queues: false,
    clock,
    pipelines: [p],
    onAlert: () => {},
  });
  const watch = () =>
    new DeadlineWatch(engine.store, engine.pipelines, { webhook: true, email: false });
  return { engine, clock, flags, watch };
}

Deno.test("the watch: nothing for a run that succeeded in time; one alert per missed tick, however many workers look", async () => {
  const { engine, clock, flags, watch } = await nightly();
  try {
    const [a, b, c] = [watch(), watch(), watch()];
    await engine.scheduler.tick(); // the first look, at 14:00 on the 9th
    // 10th: the run succeeds at 03:00:05
    clock.set("2025-06-10T01:00:05Z");
    await engine.scheduler.tick();
    assert.equal(
      (await engine.runToEnd(tickRunId("nightly-report", at("2025-06-10T01:00:00Z")))).status,
      "succeeded",
    );
    clock.set("2025-06-10T05:00:05Z");
    assert.deepEqual(await a.check(), []);
    // 11th: nothing ran at all; seen by the first look after 07:00
    clock.set("2025-06-11T04:59:00Z");
    assert.deepEqual(await a.check(), [], "not before the deadline");
    clock.set("2025-06-11T05:00:30Z");
    const found = [...await a.check(), ...await b.check(), ...await c.check()];
    assert.equal(found.length, 1);
    assert.equal(
      alertText(found[0]),
      "kvflow ALERT: 'nightly-report' missed its deadline: the run of tick 2025-06-11T01:00:00.000Z (2025-06-11) had not succeeded by 2025-06-11T05:00:00.000Z (07:00 Europe/Berlin): no run (no worker was running at the tick, or the tick was skipped) — run nightly-report.20250611T010000Z",
    );
    assert.deepEqual(
      [...await watch().check(), ...await a.check()],
      [],
      "a new worker finds it sent",
    );
    // 12th: the run fails
    await engine.scheduler.tick(); // catch-up creates the 11th's run late; it succeeds late
    await engine.runToEnd(tickRunId("nightly-report", at("2025-06-11T01:00:00Z")));
    clock.set("2025-06-12T01:00:01Z");
    flags.failing = true;
    await engine.scheduler.tick();
    assert.equal(
      (await engine.runToEnd(tickRunId("nightly-report", at("2025-06-12T01:00:00Z")))).status,
      "failed",
    );
    clock.set("2025-06-12T06:00:00Z");
    const failed = [...await b.check(), ...await c.check()];
    assert.equal(failed.length, 1);
    assert.equal(failed[0].deadline!.reason, "failed at step 'export': warehouse is read-only");
    assert.equal(failed[0].step, "export");
    const stored = [];
    for await (const e of engine.kv.list({ prefix: ["kvflow", "alert_outbox"] })) {
      stored.push(e.key);
    }
    assert.equal(
      stored.filter((k) => k[3] === 0).length,
      2,
      "both deadline alerts are in the outbox",
    );
  } finally {
    await engine.close();
  }
});

Deno.test("the watch reaches back at most seven days (and catchupLimit ticks)", async () => {
  const { engine, clock, watch } = await nightly({ catchupLimit: 30 });
  try {
    await engine.scheduler.tick();
    clock.set("2025-06-30T12:00:00Z"); // down for three weeks
    const found = await watch().check();
    assert.deepEqual(
      found.map((a) => a.logicalDate).sort(),
      [
        "2025-06-24",
        "2025-06-25",
        "2025-06-26",
        "2025-06-27",
        "2025-06-28",
        "2025-06-29",
        "2025-06-30",
      ],
    );
  } finally {
    await engine.close();
  }
});

Deno.test("the dashboard, /metrics and the API show the deadline and its misses", async () => {
  const { engine, clock, watch } = await nightly();
  const http = app(engine, { metricsCountTtlMs: 0 });
  try {
    await engine.scheduler.tick();
    clock.set("2025-06-10T05:00:30Z"); // the 10th's tick had no run
    assert.equal((await watch().check()).length, 1);
    const page = await (await http.request("/pipelines/nightly-report")).text();
    assert.match(page, /each tick&#39;s run succeeded by 07:00 Europe\/Berlin/);
    assert.match(page, /Missed deadlines/);
    assert.match(page, /2025-06-10/);
    assert.match(page, /no run \(no worker was running at the tick, or the tick was skipped\)/);
    const metrics = await (await http.request("/metrics")).text();
    assert.match(metrics, /^kvflow_deadline_missed_total\{pipeline="nightly-report"\} 1$/m);
    assert.doesNotMatch(metrics, /^kvflow_alerts_total\{pipeline="nightly-report"\} [1-9]/m);
    const api = await (await http.request("/api/pipelines/nightly-report")).json();
    assert.equal(api.schedule.deadline, "07:00");
  } finally {
    await engine.close();
  }
});

Deno.test("retention removes missed-deadline records and a no-run tick's alert, never one the watch could find again, and /metrics still counts them", async () => {
  const { engine, clock, flags, watch } = await nightly({ catchupLimit: 30 });
  const http = app(engine, { metricsCountTtlMs: 0 });
  const missCount = async () => {
    const metrics = await (await http.request("/metrics")).text();
    return Number(
      /^kvflow_deadline_missed_total\{pipeline="nightly-report"\} (\d+)$/m.exec(metrics)?.[1],
    );
  };
  const alertCount = async () => {
    const metrics = await (await http.request("/metrics")).text();
    return Number(
      /^kvflow_alerts_total\{pipeline="nightly-report"\} (\d+)$/m.exec(metrics)?.[1] ?? 0,
    );
  };
  const stored = async () => {
    const misses = (await Array.fromAsync(engine.kv.list({ prefix: keys.deadlineMissPrefix() })))
      .map((e) => iso(e.key[3] as number).slice(0, 10));
    const alerts = await Array.fromAsync(engine.kv.list({ prefix: keys.allAlertsPrefix() }));
    const outbox = await Array.fromAsync(engine.kv.list({ prefix: ["kvflow", "alert_outbox"] }));
    return { misses, alerts: alerts.length, outbox: outbox.length };
  };
  try {
    await engine.scheduler.tick();
    // the 9th's tick fails: a run with a failure alert and a deadline alert
    clock.set("2025-06-10T01:00:01Z");
    flags.failing = true;
    await engine.scheduler.tick();
    const failedRun = tickRunId("nightly-report", at("2025-06-10T01:00:00Z"));
    assert.equal((await engine.runToEnd(failedRun)).status, "failed");
    clock.set("2025-06-10T06:00:00Z");
    assert.equal((await watch().check()).length, 1);
    // then every worker is down for three weeks: the last seven ticks had no run
    clock.set("2025-06-30T12:00:00Z");
    assert.equal((await watch().check()).length, 7);
    assert.equal(await missCount(), 8);
    assert.equal(await alertCount(), 1);
    assert.deepEqual((await stored()).misses.length, 8);

    // within the failed runs' retention (90 days) nothing goes
    assert.equal((await engine.prune()).deadlineMisses, 0);
    // --older-than 1d keeps what the watch still looks at (a week, and a day)
    clock.set("2025-07-03T12:00:00Z");
    const dry = await engine.prune({ olderThanMs: 86_400_000, dryRun: true });
    assert.equal(dry.deadlineMisses, 3, "the 10th's, the 24th's and the 25th's");
    assert.deepEqual((await stored()).misses.length, 8, "a dry run deletes nothing");
    const some = await engine.prune({ olderThanMs: 86_400_000 });
    assert.equal(some.deadlineMisses, 3);
    assert.equal(some.runs, 1, "the failed run, with its alerts");
    assert.deepEqual((await stored()).misses, [
      "2025-06-26",
      "2025-06-27",
      "2025-06-28",
      "2025-06-29",
      "2025-06-30",
    ]);
    // a new look does not find the pruned ticks again (it finds the days since)
    const again = (await watch().check()).map((a) => a.logicalDate);
    assert.deepEqual(again.sort(), ["2025-07-01", "2025-07-02", "2025-07-03"]);
    assert.equal(await missCount(), 11, "a counter: what retention removed still counts");
    assert.equal(await alertCount(), 1, "the failed run's alert, pruned with it, still counts");

    // past the retention, every miss and the alerts of ticks without a run go
    clock.set("2025-12-01T12:00:00Z");
    assert.equal((await engine.prune()).deadlineMisses, 8);
    assert.deepEqual(await stored(), { misses: [], alerts: 0, outbox: 0 });
    assert.equal(await missCount(), 11);
    assert.equal(await alertCount(), 1);
  } finally {
    await engine.close();
  }
});

Deno.test("a missed deadline is e-mailed once over SMTP, with the tick, the deadline and why", async () => {
  const mails: string[] = [];
  const server = new SMTPServer({
    disabledCommands: ["STARTTLS", "AUTH"],
    authOptional: true,
    logger: false,
    onData(stream, _session, callback) {
      let text = "";
      stream.on("data", (c: Uint8Array) => text += new TextDecoder().decode(c));
      stream.on("end", () => {
        mails.push(text);
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.server.address() as { port: number }).port;
  const clock = new TestClock("2025-06-09T12:00:00Z", { auto: false });
  const p = pipeline("nightly-report", {
    schedule: { cron: "0 3 * * *", timezone: BERLIN, deadline: "07:00" },
    steps: [step("export", () => 1)],
  });
  const engine = await openEngine({
    path: ":memory:",
    queues: false,
    clock,
    pipelines: [p],
    onAlert: () => {},
    alertEmail: { smtpUrl: `smtp://127.0.0.1:${port}`, to: "oncall@example.com" },
    alertBackoff: [10],
  });
  try {
    await engine.scheduler.tick();
    clock.set("2025-06-10T05:00:30Z");
    await engine.worker.sweep(); // the engine's own watch, as a worker's sweep runs it
    await engine.worker.settleAlerts();
    await engine.worker.sweep();
    await engine.worker.settleAlerts();
    assert.equal(mails.length, 1, mails.map((m) => m.match(/^Subject: .*$/m)?.[0]).join("\n"));
    assert.match(mails[0], /Subject: kvflow: nightly-report missed its deadline \(2025-06-10\)/);
    const body = mails[0].replaceAll("=\r\n", ""); // quoted-printable soft line breaks
    assert.match(body, /deadline: +2025-06-10T05:00:00.000Z \(07:00 Europe\/Berlin\)/);
    assert.match(body, /why: +no run/);
  } finally {
    await engine.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

Deno.test("why a run missed its deadline, for each state it can be in", () => {
  const base = {
    id: "r",
    status: "running",
    createdAt: 0,
    startedAt: 1,
    endedAt: null,
    error: null,
    waitingFor: null,
  } as unknown as RunRecord;
  const at = (fields: Partial<RunRecord>) => missReason({ ...base, ...fields }, 100);
  assert.equal(
    missReason(null, 100),
    "no run (no worker was running at the tick, or the tick was skipped)",
  );
  assert.equal(at({}), "still running");
  assert.equal(at({ status: "queued", startedAt: null }), "queued, not started");
  assert.equal(
    at({ status: "failed", error: { step: "export", message: "boom" } }),
    "failed at step 'export': boom",
  );
  assert.equal(
    at({ status: "succeeded", endedAt: 5000 }),
    "succeeded late, at 1970-01-01T00:00:05.000Z",
  );
  assert.equal(
    at({ createdAt: 2000 }),
    "no run by the deadline (created late, at 1970-01-01T00:00:02.000Z)",
  );
  assert.equal(
    at({
      status: "waiting",
      waitingFor: {
        kind: "event",
        step: "approve",
        item: -1,
        since: 0,
        until: 9,
        events: ["report.approved"],
      },
    }),
    "waiting at step 'approve' for event report.approved",
  );
});
