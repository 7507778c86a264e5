/**
 * Schedules on a test clock, in memory: the ticks the scheduler creates runs for across
 * DST transitions (checked against UTC instants written out by hand), logical dates,
 * catch-up after downtime, overlap, backfill, and the definition errors of a bad schedule.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type Engine, openEngine, pipeline, type ScheduleOptions, step } from "../lib/mod.ts";
import { tickRunId, ticksBetween } from "../lib/engine/scheduler.ts";
import { TestClock } from "../lib/testing/mod.ts";
import { deferred } from "./_support/helpers.ts";

const MINUTE = 60_000;

/** A scheduled pipeline whose one step waits while `hold` is set, on an engine in memory. */
class Scheduled implements AsyncDisposable {
  readonly engine: Engine;
  readonly clock: TestClock;
  /** Ticks whose runs started their step, ms. */
  readonly started: number[] = [];
  /** Steps running now, and the most that ever ran at once. */
  active = 0;
  mostActive = 0;
  #gate: { promise: Promise<void>; resolve: () => void } | null = null;

  private constructor(engine: Engine, clock: TestClock) {
    this.engine = engine;
    this.clock = clock;
  }

  static async open(schedule: ScheduleOptions, start: string): Promise<Scheduled> {
    const clock = new TestClock(start, { auto: false });
    const ref: { self?: Scheduled } = {};
    const work = step("work", async (_inputs, ctx) => {
      const s = ref.self!;
      s.started.push(Date.parse(ctx.run.tick!));
      s.mostActive = Math.max(s.mostActive, ++s.active);
      await s.#gate?.promise;
      await new Promise((resolve) => setTimeout(resolve, 2));
      s.active--;
      return ctx.run.logicalDate;
    });
    const p = pipeline("job", { schedule, steps: [work] });
    const engine = await openEngine({
      path: ":memory:",
      queues: false,
      clock,
      pipelines: [p],
      onAlert: () => {},
    });
    ref.self = new Scheduled(engine, clock);
    return ref.self;
  }

  /** Makes steps that start from now on wait until {@linkcode Scheduled.release}. */
  hold(): void {
    this.#gate = deferred();
  }

  release(): void {
    this.#gate?.resolve();
    this.#gate = null;
  }

  /** One look of the scheduler at the clock's time; the ticks it created runs for. */
  async look(): Promise<number[]> {
    const decisions = await this.engine.scheduler.tick();
    return decisions.filter((d) => d.outcome === "created").map((d) => d.tick);
  }

  /** Looks every `stepMs` from now until `until`, as a worker's sweep would. */
  async lookUntil(until: string, stepMs = 10 * MINUTE): Promise<number[]> {
    const created: number[] = [];
    for (let at = this.clock.now(); at <= Date.parse(until); at += stepMs) {
      this.clock.set(at);
      created.push(...await this.look());
    }
    return created;
  }

  async state() {
    return await this.engine.scheduler.state("job");
  }

  /** Every run of the pipeline, oldest tick first. */
  async runs() {
    const page = await this.engine.store.listRuns({ pipeline: "job", limit: 1000 });
    return page.runs.sort((a, b) => a.tick! - b.tick!);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.release();
    await this.engine.close(0);
    this.clock.dispose();
  }
}

const iso = (ms: number) => new Date(ms).toISOString();

/** The runs created while looking every 10 minutes through a window: UTC tick and logical date. */
async function ticksThrough(
  schedule: ScheduleOptions,
  from: string,
  to: string,
): Promise<string[]> {
  await using s = await Scheduled.open({ overlap: "allow", ...schedule }, from);
  assert.deepEqual(await s.look(), [], "the first look records the latest tick without a run");
  await s.lookUntil(to);
  const runs = await s.runs();
  for (const run of runs) assert.equal(run.id, tickRunId("job", run.tick!));
  // The pure computation agrees with what the scheduler did.
  assert.deepEqual(
    runs.map((r) => r.tick),
    ticksBetween(s.engine.pipeline("job").schedule!, Date.parse(from), Date.parse(to), 100),
  );
  return runs.map((r) => `${iso(r.tick!)} ${r.logicalDate}`);
}

Deno.test("DST, Europe/Berlin: a 02:30 job runs once on the spring-forward day (at 03:00 CEST) and once on the fall-back day (the first 02:30)", async () => {
  const schedule = { cron: "30 2 * * *", timezone: "Europe/Berlin" };
  // 2025-03-30 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day.
  assert.deepEqual(
    await ticksThrough(schedule, "2025-03-28T12:00:00Z", "2025-03-31T12:00:00Z"),
    [
      "2025-03-29T01:30:00.000Z 2025-03-29", // 02:30 CET
      "2025-03-30T01:00:00.000Z 2025-03-30", // 03:00 CEST, the first minute after the gap
      "2025-03-31T00:30:00.000Z 2025-03-31", // 02:30 CEST
    ],
  );
  // 2025-10-26 03:00 CEST falls back to 02:00 CET: 02:30 happens twice, the job runs once.
  assert.deepEqual(
    await ticksThrough(schedule, "2025-10-24T12:00:00Z", "2025-10-27T12:00:00Z"),
    [
      "2025-10-25T00:30:00.000Z 2025-10-25", // 02:30 CEST
      "2025-10-26T00:30:00.000Z 2025-10-26", // the first 02:30 (CEST); not 01:30Z (CET)
      "2025-10-27T01:30:00.000Z 2025-10-27", // 02:30 CET
    ],
  );
});

Deno.test("DST, America/New_York: a 02:30 job on the spring-forward day and a 01:30 job on the fall-back day each run once", async () => {
  // 2025-03-09 02:00 EST jumps to 03:00 EDT.
  assert.deepEqual(
    await ticksThrough(
      { cron: "30 2 * * *", timezone: "America/New_York" },
      "2025-03-07T12:00:00Z",
      "2025-03-10T12:00:00Z",
    ),
    [
      "2025-03-08T07:30:00.000Z 2025-03-08", // 02:30 EST
      "2025-03-09T07:00:00.000Z 2025-03-09", // 03:00 EDT
      "2025-03-10T06:30:00.000Z 2025-03-10", // 02:30 EDT
    ],
  );
  // 2025-11-02 02:00 EDT falls back to 01:00 EST: 01:30 happens twice.
  assert.deepEqual(
    await ticksThrough(
      { cron: "30 1 * * *", timezone: "America/New_York" },
      "2025-10-31T12:00:00Z",
      "2025-11-03T12:00:00Z",
    ),
    [
      "2025-11-01T05:30:00.000Z 2025-11-01", // 01:30 EDT
      "2025-11-02T05:30:00.000Z 2025-11-02", // the first 01:30 (EDT); not 06:30Z (EST)
      "2025-11-03T06:30:00.000Z 2025-11-03", // 01:30 EST
    ],
  );
});

Deno.test("DST: an hourly job in Berlin and a */30 job in New York tick once per real hour or half hour across both transitions", async () => {
  const hourly = { cron: "0 * * * *", timezone: "Europe/Berlin" };
  assert.deepEqual(
    await ticksThrough(hourly, "2025-03-29T22:30:00Z", "2025-03-30T02:30:00Z"),
    [
      "2025-03-29T23:00:00.000Z 2025-03-30", // 00:00 CET
      "2025-03-30T00:00:00.000Z 2025-03-30", // 01:00 CET
      "2025-03-30T01:00:00.000Z 2025-03-30", // 03:00 CEST (02:00 does not exist)
      "2025-03-30T02:00:00.000Z 2025-03-30", // 04:00 CEST
    ],
  );
  assert.deepEqual(
    await ticksThrough(hourly, "2025-10-25T21:30:00Z", "2025-10-26T02:30:00Z"),
    [
      "2025-10-25T22:00:00.000Z 2025-10-26", // 00:00 CEST
      "2025-10-25T23:00:00.000Z 2025-10-26", // 01:00 CEST
      "2025-10-26T00:00:00.000Z 2025-10-26", // 02:00 CEST
      "2025-10-26T01:00:00.000Z 2025-10-26", // 02:00 CET: the repeated hour is a real hour
      "2025-10-26T02:00:00.000Z 2025-10-26", // 03:00 CET
    ],
  );
  const halfHourly = { cron: "*/30 * * * *", timezone: "America/New_York" };
  assert.deepEqual(
    await ticksThrough(halfHourly, "2025-03-09T05:45:00Z", "2025-03-09T07:45:00Z"),
    [
      "2025-03-09T06:00:00.000Z 2025-03-09", // 01:00 EST
      "2025-03-09T06:30:00.000Z 2025-03-09", // 01:30 EST
      "2025-03-09T07:00:00.000Z 2025-03-09", // 03:00 EDT
      "2025-03-09T07:30:00.000Z 2025-03-09", // 03:30 EDT
    ],
  );
  assert.deepEqual(
    await ticksThrough(halfHourly, "2025-11-02T04:15:00Z", "2025-11-02T07:15:00Z"),
    [
      "2025-11-02T04:30:00.000Z 2025-11-02", // 00:30 EDT
      "2025-11-02T05:00:00.000Z 2025-11-02", // 01:00 EDT
      "2025-11-02T05:30:00.000Z 2025-11-02", // 01:30 EDT
      "2025-11-02T06:00:00.000Z 2025-11-02", // 01:00 EST
      "2025-11-02T06:30:00.000Z 2025-11-02", // 01:30 EST
      "2025-11-02T07:00:00.000Z 2025-11-02", // 02:00 EST
    ],
  );
});

Deno.test("the logical date is the tick's calendar date in the schedule's zone, not in UTC", async () => {
  // 22:00 in New York is the next day in UTC; 00:30 in Berlin is the previous day in UTC.
  assert.deepEqual(
    await ticksThrough(
      { cron: "0 22 * * *", timezone: "America/New_York" },
      "2025-11-01T12:00:00Z",
      "2025-11-03T12:00:00Z",
    ),
    [
      "2025-11-02T02:00:00.000Z 2025-11-01", // 22:00 EDT
      "2025-11-03T03:00:00.000Z 2025-11-02", // 22:00 EST
    ],
  );
  assert.deepEqual(
    await ticksThrough(
      { cron: "30 0 * * *", timezone: "Europe/Berlin" },
      "2025-10-25T12:00:00Z",
      "2025-10-27T12:00:00Z",
    ),
    [
      "2025-10-25T22:30:00.000Z 2025-10-26", // 00:30 CEST
      "2025-10-26T23:30:00.000Z 2025-10-27", // 00:30 CET
    ],
  );
  await using s = await Scheduled.open(
    { cron: "0 22 * * *", timezone: "America/New_York" },
    "2025-11-01T12:00:00Z",
  );
  await s.look();
  s.clock.set("2025-11-02T02:00:05Z");
  const [tick] = await s.look();
  const run = await s.engine.runToEnd(tickRunId("job", tick));
  assert.equal(run.trigger, "schedule");
  assert.equal(await s.engine.store.getOutput(run.id, "work"), "2025-11-01");
});

// The nightly job of DESIGN.md: 03:00 in Berlin. The machine was last up on 2025-06-09
// and comes back on 2025-06-12 at 03:40 CEST: the ticks of the 10th, 11th and 12th were missed.
const NIGHTLY = { cron: "0 3 * * *", timezone: "Europe/Berlin" } as const;
const TICK_10 = Date.parse("2025-06-10T01:00:00Z");
const TICK_11 = Date.parse("2025-06-11T01:00:00Z");
const TICK_12 = Date.parse("2025-06-12T01:00:00Z");

async function afterDowntime(schedule: ScheduleOptions, back = "2025-06-12T01:40:00Z") {
  const s = await Scheduled.open(schedule, "2025-06-09T12:00:00Z");
  assert.deepEqual(await s.look(), []);
  assert.equal((await s.state())!.lastTick, Date.parse("2025-06-09T01:00:00Z"));
  s.clock.set(back);
  return s;
}

Deno.test("catch-up latest: restarting at 03:40 runs the 03:00 job once, not the missed days", async () => {
  await using s = await afterDowntime({ ...NIGHTLY, catchup: "latest" });
  assert.deepEqual(await s.look(), [TICK_12]);
  assert.deepEqual(await s.look(), [], "a second look creates nothing");
  const [run] = await s.runs();
  assert.equal(run.logicalDate, "2025-06-12");
  assert.deepEqual(await s.state(), {
    lastTick: TICK_12,
    updatedAt: s.clock.now(),
    skipped: 2,
    since: Date.parse("2025-06-09T12:00:00Z"),
  });
  assert.equal((await s.engine.runToEnd(run.id)).status, "succeeded");
  assert.equal((await s.runs()).length, 1);
});

Deno.test("a tick is seen the moment it is due, not a second later", async () => {
  await using s = await Scheduled.open(NIGHTLY, "2025-06-09T12:00:00Z");
  await s.look();
  s.clock.set(TICK_10 - 1);
  assert.deepEqual(await s.look(), []);
  s.clock.set(TICK_10 + 20);
  assert.deepEqual(await s.look(), [TICK_10]);
});

Deno.test("catch-up none: missed ticks are dropped; a tick found within two minutes is on time", async () => {
  {
    await using s = await afterDowntime({ ...NIGHTLY, catchup: "none" });
    assert.deepEqual(await s.look(), []);
    assert.equal((await s.runs()).length, 0);
    assert.deepEqual(await s.state(), {
      lastTick: TICK_12,
      updatedAt: s.clock.now(),
      skipped: 3,
      since: Date.parse("2025-06-09T12:00:00Z"),
    });
    s.clock.set("2025-06-13T01:00:30Z");
    assert.deepEqual(await s.look(), [Date.parse("2025-06-13T01:00:00Z")], "the next day runs");
  }
  await using late = await afterDowntime({ ...NIGHTLY, catchup: "none" }, "2025-06-12T01:01:50Z");
  assert.deepEqual(await late.look(), [TICK_12]);
  assert.equal((await late.state())!.skipped, 2);
});

Deno.test("catch-up all: every missed tick runs, oldest first, at most catchupLimit of them", async () => {
  {
    await using s = await afterDowntime({ ...NIGHTLY, catchup: "all", overlap: "allow" });
    assert.deepEqual(await s.look(), [TICK_10, TICK_11, TICK_12]);
    assert.deepEqual((await s.runs()).map((r) => r.logicalDate), [
      "2025-06-10",
      "2025-06-11",
      "2025-06-12",
    ]);
    assert.equal((await s.state())!.skipped, 0);
  }
  await using capped = await afterDowntime({
    ...NIGHTLY,
    catchup: "all",
    catchupLimit: 2,
    overlap: "allow",
  });
  assert.deepEqual(await capped.look(), [TICK_11, TICK_12]);
  assert.equal((await capped.state())!.skipped, 1);
  assert.deepEqual(await capped.look(), []);
});

Deno.test("catch-up all of 150 missed ticks creates them in several commits within KV's check limit", async () => {
  const every = { cron: "* * * * *", timezone: "UTC", catchup: "all", overlap: "allow" } as const;
  await using s = await Scheduled.open({ ...every, catchupLimit: 150 }, "2025-06-10T12:00:30Z");
  await s.look();
  s.clock.set("2025-06-10T14:31:30Z"); // 151 ticks since 12:00: the oldest is past the limit
  const created = await s.look();
  assert.equal(created.length, 150);
  assert.equal(created[0], Date.parse("2025-06-10T12:02:00Z"));
  assert.equal(created[149], Date.parse("2025-06-10T14:31:00Z"));
  assert.equal((await s.runs()).length, 150);
  const state = await s.state();
  assert.equal(state!.lastTick, Date.parse("2025-06-10T14:31:00Z"));
  assert.equal(state!.skipped, 1);
});

Deno.test("catch-up all with overlap queue: the missed ticks run one after another", async () => {
  await using s = await afterDowntime({ ...NIGHTLY, catchup: "all", overlap: "queue" });
  const order: number[] = [];
  for (let i = 0; i < 5 && order.length < 3; i++) {
    for (const tick of await s.look()) {
      order.push(tick);
      assert.equal((await s.engine.runToEnd(tickRunId("job", tick))).status, "succeeded");
    }
  }
  assert.deepEqual(order, [TICK_10, TICK_11, TICK_12]);
  assert.deepEqual(s.started, [TICK_10, TICK_11, TICK_12]);
  assert.equal((await s.state())!.lastTick, TICK_12);
});

// Every minute; the first look is at 12:00:30, so the ticks are 12:01, 12:02, …
const EVERY_MINUTE = { cron: "* * * * *", timezone: "UTC" } as const;
const T0 = Date.parse("2025-06-10T12:00:00Z");
const at = (minutes: number, seconds = 5) => T0 + minutes * MINUTE + seconds * 1000;

/** Starts the run of `tick` in the background; its step waits while held. */
function start(s: Scheduled, tick: number): Promise<unknown> {
  return s.engine.worker.execute(tickRunId("job", tick));
}

Deno.test("overlap skip: a tick while the previous run is active is dropped", async () => {
  await using s = await Scheduled.open({ ...EVERY_MINUTE, overlap: "skip" }, iso(at(0, 30)));
  await s.look();
  s.hold();
  s.clock.set(at(1));
  assert.deepEqual(await s.look(), [at(1, 0)]);
  const first = start(s, at(1, 0));
  s.clock.set(at(2));
  const decisions = await s.engine.scheduler.tick();
  assert.deepEqual(decisions.map((d) => [d.tick, d.outcome]), [[at(2, 0), "skipped"]]);
  s.release();
  await first;
  s.clock.set(at(3));
  assert.deepEqual(await s.look(), [at(3, 0)]);
  assert.deepEqual((await s.runs()).map((r) => r.tick), [at(1, 0), at(3, 0)]);
  assert.equal((await s.state())!.skipped, 1);
});

Deno.test("overlap queue: the tick waits for the active run and then runs, for its own tick", async () => {
  await using s = await Scheduled.open({ ...EVERY_MINUTE, overlap: "queue" }, iso(at(0, 30)));
  await s.look();
  s.hold();
  s.clock.set(at(1));
  assert.deepEqual(await s.look(), [at(1, 0)]);
  const first = start(s, at(1, 0));
  s.clock.set(at(2));
  assert.deepEqual(
    (await s.engine.scheduler.tick()).map((d) => [d.tick, d.outcome]),
    [[at(2, 0), "queued"]],
  );
  assert.deepEqual(await s.look(), [], "still active: still queued");
  s.release();
  await first;
  s.clock.set(at(2, 40));
  assert.deepEqual(await s.look(), [at(2, 0)]);
  const run = await s.engine.runToEnd(tickRunId("job", at(2, 0)));
  assert.equal(run.logicalDate, "2025-06-10");
  assert.equal(run.tick, at(2, 0));
  assert.equal((await s.state())!.skipped, 0);
});

Deno.test("overlap queue with catch-up none: a queued tick still runs when the active run ends late", async () => {
  const hourly = { cron: "0 * * * *", timezone: "UTC", catchup: "none", overlap: "queue" } as const;
  await using s = await Scheduled.open(hourly, "2025-06-10T12:30:00Z");
  await s.look();
  s.hold();
  s.clock.set("2025-06-10T13:00:10Z");
  const [one] = await s.look();
  const first = start(s, one);
  s.clock.set("2025-06-10T14:00:10Z");
  assert.deepEqual(
    (await s.engine.scheduler.tick()).map((d) => d.outcome),
    ["queued"],
  );
  // The 13:00 run takes until 14:25: the 14:00 tick was not missed, it waited its turn.
  s.clock.set("2025-06-10T14:25:00Z");
  s.release();
  await first;
  assert.deepEqual(await s.look(), [Date.parse("2025-06-10T14:00:00Z")]);
  assert.equal((await s.state())!.skipped, 0);
});

Deno.test("overlap allow starts a run for every tick; maxActive bounds skip", async () => {
  {
    await using s = await Scheduled.open({ ...EVERY_MINUTE, overlap: "allow" }, iso(at(0, 30)));
    await s.look();
    s.hold();
    const running = [];
    for (const m of [1, 2, 3]) {
      s.clock.set(at(m));
      const created = await s.look();
      assert.deepEqual(created, [at(m, 0)]);
      running.push(start(s, at(m, 0)));
    }
    assert.equal(await s.engine.store.countActive("job"), 3);
    s.release();
    await Promise.all(running);
  }
  await using s = await Scheduled.open(
    { ...EVERY_MINUTE, overlap: "skip", maxActive: 2 },
    iso(at(0, 30)),
  );
  await s.look();
  s.hold();
  for (const m of [1, 2, 3]) {
    s.clock.set(at(m));
    await s.look();
  }
  assert.deepEqual((await s.runs()).map((r) => r.tick), [at(1, 0), at(2, 0)]);
  // A cancelled run is no longer active: the next tick has room again.
  await s.engine.store.cancel(tickRunId("job", at(1, 0)));
  s.clock.set(at(4));
  assert.deepEqual(await s.look(), [at(4, 0)]);
});

Deno.test("a run triggered by hand counts as active for the schedule's overlap", async () => {
  await using s = await Scheduled.open({ ...EVERY_MINUTE, overlap: "skip" }, iso(at(0, 30)));
  await s.look();
  await s.engine.store.createRun(s.engine.pipeline("job"), { trigger: "cli" });
  s.clock.set(at(1));
  assert.deepEqual((await s.engine.scheduler.tick()).map((d) => d.outcome), ["skipped"]);
});

Deno.test("backfill creates one run per tick of the range; a second backfill creates nothing", async () => {
  await using s = await Scheduled.open(NIGHTLY, "2025-06-20T12:00:00Z");
  const progress: string[] = [];
  const first = await s.engine.backfill("job", "2025-06-01", "2025-06-03", {
    onProgress: (done, total, run, created) =>
      progress.push(`${done}/${total} ${run.logicalDate} ${run.status} ${created}`),
  });
  assert.deepEqual(progress, [
    "1/3 2025-06-01 succeeded true",
    "2/3 2025-06-02 succeeded true",
    "3/3 2025-06-03 succeeded true",
  ]);
  assert.deepEqual(first.map((r) => [iso(r.tick!), r.trigger]), [
    ["2025-06-01T01:00:00.000Z", "backfill"],
    ["2025-06-02T01:00:00.000Z", "backfill"],
    ["2025-06-03T01:00:00.000Z", "backfill"],
  ]);
  const before = (await s.runs()).map((r) => `${r.id} ${r.createdAt}`);
  const createdAgain: boolean[] = [];
  const again = await s.engine.backfill("job", "2025-06-01", "2025-06-03", {
    onProgress: (_done, _total, _run, created) => createdAgain.push(created),
  });
  assert.deepEqual(createdAgain, [false, false, false]);
  assert.deepEqual(again.map((r) => r.id), first.map((r) => r.id));
  assert.deepEqual((await s.runs()).map((r) => `${r.id} ${r.createdAt}`), before);
  assert.equal(s.started.length, 3, "no step ran again");
});

Deno.test("backfill and the schedule never create two runs for one tick, in either order", async () => {
  // The schedule first: backfill finds the tick's run and follows it.
  {
    await using s = await Scheduled.open(NIGHTLY, "2025-06-02T12:00:00Z");
    await s.look();
    s.clock.set("2025-06-03T01:00:20Z");
    assert.deepEqual(await s.look(), [Date.parse("2025-06-03T01:00:00Z")]);
    const created: boolean[] = [];
    const runs = await s.engine.backfill("job", "2025-06-01", "2025-06-03", {
      onProgress: (_d, _t, _r, c) => created.push(c),
    });
    assert.deepEqual(created, [true, true, false]);
    assert.deepEqual(runs.map((r) => r.trigger), ["backfill", "backfill", "schedule"]);
    assert.equal((await s.runs()).length, 3);
  }
  // Backfill first: the schedule finds the tick's run and creates none.
  await using s = await Scheduled.open(NIGHTLY, "2025-06-02T12:00:00Z");
  await s.look();
  s.clock.set("2025-06-03T01:00:20Z");
  await s.engine.backfill("job", "2025-06-01", "2025-06-03");
  const decisions = await s.engine.scheduler.tick();
  assert.deepEqual(decisions.map((d) => d.outcome), ["exists"]);
  assert.equal((await s.runs()).length, 3);
  assert.equal((await s.state())!.lastTick, Date.parse("2025-06-03T01:00:00Z"));
  assert.deepEqual(await s.look(), []);
  assert.equal(s.started.length, 3);
});

Deno.test("backfill runs at most maxActive runs at once and leaves ticks after now to the schedule", async () => {
  await using s = await Scheduled.open({ ...NIGHTLY, timezone: "UTC" }, "2025-06-05T12:00:00Z");
  const runs = await s.engine.backfill("job", "2025-06-01", "2025-06-08", { maxActive: 2 });
  assert.deepEqual(runs.map((r) => r.logicalDate), [
    "2025-06-01",
    "2025-06-02",
    "2025-06-03",
    "2025-06-04",
    "2025-06-05",
  ]);
  assert.equal(s.mostActive, 2);
});

Deno.test("a bad schedule fails the pipeline definition with a clear error", () => {
  const work = step("work", () => 1);
  const define = (schedule: ScheduleOptions) => () => pipeline("bad", { schedule, steps: [work] });
  assert.throws(
    define({ cron: "61 * * * *" }),
    (e: Error) =>
      e instanceof TypeError &&
      e.message.startsWith(`Invalid schedule of pipeline 'bad': cron "61 * * * *" is not valid`),
  );
  assert.throws(define({ cron: "every night" }), TypeError);
  assert.throws(define({ cron: "0 3 * * *", timezone: "Mars/Olympus_Mons" }), {
    name: "RangeError",
    message:
      `Invalid schedule of pipeline 'bad': unknown time zone "Mars/Olympus_Mons" (use an IANA name like "Europe/Berlin")`,
  });
  assert.throws(define({ cron: "0 3 * * *", catchup: "sometimes" as "all" }), {
    name: "RangeError",
    message:
      `Invalid schedule of pipeline 'bad': catchup must be "none", "latest" or "all", got "sometimes"`,
  });
  assert.throws(define({ cron: "0 3 * * *", overlap: "replace" as "skip" }), {
    name: "RangeError",
    message:
      `Invalid schedule of pipeline 'bad': overlap must be "skip", "queue" or "allow", got "replace"`,
  });
  assert.throws(define({ cron: "0 3 * * *", maxActive: 0 }), {
    name: "RangeError",
    message:
      "Invalid schedule of pipeline 'bad': maxActive must be an integer from 1 to 1000, got 0",
  });
  assert.throws(define({ cron: "0 3 * * *", catchupLimit: 1.5 }), RangeError);
  const ok = pipeline("good", { schedule: { cron: "0 3 * * *" }, steps: [work] });
  assert.deepEqual(ok.schedule, {
    cron: "0 3 * * *",
    timezone: "UTC",
    catchup: "latest",
    catchupLimit: 10,
    overlap: "skip",
    maxActive: 1,
    deadline: null,
  });
});
