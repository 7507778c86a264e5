/**
 * Schedules and several workers as real processes on one KV file: three workers on a
 * schedule of seconds create exactly one run per tick and miss none; workers that start
 * after a downtime apply the catch-up policy once; SIGTERM lets running steps finish and
 * hands the runs back, a second signal exits at once; a worker killed while holding runs
 * is replaced by another that finishes them.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import type { RunRecord } from "../lib/mod.ts";
import type { ScheduleState } from "../lib/engine/scheduler.ts";
import { FIXTURE_CLI, lines, poll, type Proc, Sandbox } from "./_support/harness.ts";
import five from "./fixtures/five.ts";

const SECOND = 1000;

/** Every run of the `ticking` fixture, oldest tick first. */
async function tickRuns(box: Sandbox): Promise<RunRecord[]> {
  return await box.withStore(async (store) => {
    const page = await store.listRuns({ pipeline: "ticking", limit: 1000 });
    return page.runs.sort((a, b) => a.tick! - b.tick!);
  });
}

async function scheduleState(box: Sandbox): Promise<ScheduleState> {
  return await box.withStore(async ({ kv }) => {
    return (await kv.get<ScheduleState>(keys.schedule("ticking"))).value!;
  });
}

/** Starts a `worker` of the fixture CLI and waits until it says it started. */
async function worker(box: Sandbox, env: Record<string, string>): Promise<Proc> {
  const proc = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await proc.waitForOutput(/worker \S+ started/, 20_000);
  return proc;
}

/** Sends SIGTERM to each and checks that each exits 0. */
async function stopAll(procs: Proc[]): Promise<void> {
  for (const p of procs) p.kill("SIGTERM");
  for (const exit of await Promise.all(procs.map((p) => p.exit()))) {
    assert.equal(exit.code, 0, exit.stderr);
  }
}

/** The ticks of a schedule of every second from `first` to `last`, inclusive. */
function everySecond(first: number, last: number): number[] {
  const out: number[] = [];
  for (let t = first; t <= last; t += SECOND) out.push(t);
  return out;
}

/** Checks that each run's step started exactly once, and returns the pid that ran each. */
async function ranOnce(box: Sandbox, runs: RunRecord[]): Promise<Map<string, number>> {
  const starts = lines(await box.ledger(), "tock");
  const pids = new Map<string, number>();
  for (const run of runs) {
    const mine = starts.filter((l) => l.key === `${run.id}:tock`);
    assert.equal(mine.length, 1, `run ${run.id} started its step ${mine.length} times`);
    assert.equal(mine[0].attempt, 1);
    pids.set(run.id, mine[0].pid);
  }
  return pids;
}

Deno.test("three workers on one schedule of seconds: exactly one run per tick for 20 s, none missed", async () => {
  await using box = await Sandbox.create();
  const schedule = { TICK_CRON: "* * * * * *", TICK_CATCHUP: "latest", TICK_OVERLAP: "allow" };
  // Three ways to be woken: a short poll; only the Deno.cron heartbeat, forced to fire
  // every 250 ms; both.
  const workers = await Promise.all([
    worker(box, { ...schedule, KVFLOW_POLL_MS: "200" }),
    worker(box, { ...schedule, KVFLOW_POLL_MS: "60000", DENO_CRON_TEST_SCHEDULE_OFFSET: "250" }),
    worker(box, { ...schedule, KVFLOW_POLL_MS: "300", DENO_CRON_TEST_SCHEDULE_OFFSET: "500" }),
  ]);
  const since = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 20 * SECOND));
  const until = Date.now();
  await stopAll(workers);

  const runs = await tickRuns(box);
  const ticks = runs.map((r) => r.tick!);
  // From the first tick after the first look to the last before the stop: every second.
  assert.deepEqual(ticks, everySecond(ticks[0], ticks[ticks.length - 1]));
  assert.ok(ticks[0] <= since + SECOND, `the first run is for ${new Date(ticks[0]).toISOString()}`);
  assert.ok(ticks[ticks.length - 1] >= until - 2 * SECOND);
  assert.ok(runs.length >= 19, `${runs.length} runs`);
  for (const run of runs) {
    assert.equal(run.trigger, "schedule");
    assert.ok(run.createdAt - run.tick! < SECOND, `run ${run.id} was created late`);
  }
  const done = runs.filter((r) => r.tick! <= until - 2 * SECOND);
  assert.deepEqual(done.filter((r) => r.status !== "succeeded").map((r) => r.id), []);
  const pids = await ranOnce(box, done);
  assert.equal((await scheduleState(box)).skipped, 0);
  // The work spread over the workers; the heartbeat-only one took its share too.
  const perWorker = workers.map((w) => [...pids.values()].filter((pid) => pid === w.pid).length);
  assert.ok(perWorker.filter((n) => n > 0).length >= 2, `runs per worker: ${perWorker}`);
  assert.ok(perWorker[1] > 0, `the heartbeat-only worker ran nothing: ${perWorker}`);
});

Deno.test("catch-up at start: two workers started after a downtime apply each policy once", async () => {
  // One sandbox per policy, side by side: every second; `all` runs at most 3 missed ticks.
  const outcomes = await Promise.allSettled(
    (["none", "latest", "all"] as const).map((catchup) => catchUpAfterDowntime(catchup)),
  );
  for (const outcome of outcomes) if (outcome.status === "rejected") throw outcome.reason;
});

/**
 * One worker runs a schedule of every second and stops; 4 s later two start at once. The
 * ticks of the downtime get the runs the policy gives them, once, and every tick after.
 */
async function catchUpAfterDowntime(catchup: "none" | "latest" | "all"): Promise<void> {
  await using box = await Sandbox.create();
  const env = {
    TICK_CRON: "* * * * * *",
    TICK_CATCHUP: catchup,
    TICK_CATCHUP_LIMIT: "3",
    TICK_OVERLAP: "allow",
    KVFLOW_POLL_MS: "100",
  };
  const first = await worker(box, env);
  await poll("two runs before the downtime", 15_000, async () => {
    const done = (await tickRuns(box)).filter((r) => r.status === "succeeded");
    return done.length >= 2 || undefined;
  });
  await stopAll([first]);
  const before = await scheduleState(box);
  const runsBefore = await tickRuns(box);
  assert.equal(runsBefore[runsBefore.length - 1].tick, before.lastTick);

  await new Promise((resolve) => setTimeout(resolve, 4 * SECOND));
  const restarted = await Promise.all([worker(box, env), worker(box, env)]);
  const caughtUp = catchup === "all" ? 3 : 1;
  await poll("runs after the downtime", 15_000, async () => {
    const after = (await tickRuns(box)).filter((r) => r.tick! > before.lastTick);
    return (after.length >= caughtUp + 2 && after.every((r) => r.status === "succeeded")) ||
      undefined;
  });
  await stopAll(restarted);

  const runs = await tickRuns(box);
  assert.deepEqual(
    runs.filter((r) => r.tick! <= before.lastTick).map((r) => r.id),
    runsBefore.map((r) => r.id),
  );
  const after = runs.filter((r) => r.tick! > before.lastTick);
  const ticks = after.map((r) => r.tick!);
  assert.deepEqual(ticks, everySecond(ticks[0], ticks[ticks.length - 1]), "no gap after");
  // The ticks of the downtime that got no run were dropped by the policy, and counted.
  const dropped = everySecond(before.lastTick + SECOND, ticks[0] - SECOND).length;
  assert.equal((await scheduleState(box)).skipped - before.skipped, dropped);
  const late = after.map((r) => r.createdAt - r.tick!);
  if (catchup === "all") {
    // The first look ran the 3 latest ticks, the oldest of them 2 s old or more, in one
    // commit; older ones (4 s of downtime) were dropped.
    assert.ok(late[0] >= 2 * SECOND, `${catchup}: ${late}`);
    assert.ok(after[2].createdAt - after[0].createdAt < 100, `${catchup}: one look`);
    assert.ok(dropped >= 1, `${catchup}: ${dropped} dropped`);
  } else {
    // Only the tick due at the first look ran; the ticks of the downtime were dropped.
    // (`none` differs from `latest` when that tick is over 2 minutes old: schedule_test.ts.)
    assert.ok(late[0] < 1.5 * SECOND, `${catchup}: ${late}`);
    assert.ok(dropped >= 3, `${catchup}: ${dropped} dropped`);
  }
  await ranOnce(box, runs);
}

Deno.test("SIGTERM with steps in flight: they finish within KVFLOW_GRACE_MS, runs are handed back, exit 0; another worker finishes them", async () => {
  await using box = await Sandbox.create();
  const ids = await box.withStore(async (store) => {
    const out: string[] = [];
    for (let i = 0; i < 3; i++) out.push((await store.createRun(five, { trigger: "cli" })).id);
    return out;
  });
  const a = await worker(box, { GATED: "s2", KVFLOW_GRACE_MS: "8000", KVFLOW_POLL_MS: "100" });
  for (const id of ids) {
    await box.waitForLedger(`s2 of ${id}`, (l) => l.key === `${id}:s2`);
  }
  for (const id of ids) {
    assert.equal((await box.withStore((s) => s.getLease(id))).value?.pid, a.pid);
  }

  a.kill("SIGTERM");
  await a.waitForOutput(/stopping: finishing running steps/);
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(lines(await box.ledger(), "s2", "done").length, 0);
  const opened = Date.now();
  await box.openGate("s2");
  const exit = await a.exit();
  assert.equal(exit.code, 0, exit.stderr);
  assert.ok(Date.now() - opened < 3000, "the worker did not exit once its steps finished");

  let ledger = await box.ledger();
  assert.deepEqual(lines(ledger, "s2", "done").map((l) => l.pid), [a.pid, a.pid, a.pid]);
  assert.equal(lines(ledger, "s3").length, 0, "a stopping worker starts no new step");
  for (const id of ids) {
    const run = await box.run(id);
    assert.equal(run.status, "queued");
    assert.equal((await box.withStore((s) => s.getLease(id))).value, null, "lease released");
    const s2 = await box.withStore((s) => s.getOutput(id, "s2"));
    assert.deepEqual(s2, { step: "s2", attempt: 1, pid: a.pid }, "s2 was checkpointed");
  }

  const b = await worker(box, { KVFLOW_POLL_MS: "100" });
  for (const id of ids) await box.waitForRun(id, (r) => r.status === "succeeded");
  await stopAll([b]);
  ledger = await box.ledger();
  for (const id of ids) {
    const of = (step: string) => lines(ledger, step).filter((l) => l.key === `${id}:${step}`);
    for (const step of ["s1", "s2"]) assert.deepEqual(of(step).map((l) => l.pid), [a.pid]);
    for (const step of ["s3", "s4", "s5"]) assert.deepEqual(of(step).map((l) => l.pid), [b.pid]);
    assert.equal((await box.run(id)).takeovers, 0, "a released run is claimed, not taken over");
  }
});

Deno.test("a second signal exits at once, leaving its lease; a worker on this machine takes the run over without waiting for it", async () => {
  await using box = await Sandbox.create();
  const id = await box.withStore(async (store) => (await store.createRun(five)).id);
  // A lease this long would time the test out if the takeover waited for it.
  const env = { KVFLOW_LEASE_MS: "60000", KVFLOW_POLL_MS: "100", KVFLOW_GRACE_MS: "30000" };
  const a = await worker(box, { ...env, GATED: "s1" });
  await box.waitForLedger("s1 started", (l) => l.step === "s1");
  a.kill("SIGTERM");
  await a.waitForOutput(/stopping/);
  const second = Date.now();
  a.kill("SIGTERM");
  const exit = await a.exit();
  assert.equal(exit.code, 130);
  assert.ok(Date.now() - second < 2000, `exit took ${Date.now() - second} ms`);
  const lease = (await box.withStore((s) => s.getLease(id))).value;
  assert.equal(lease?.pid, a.pid, "a hard exit leaves the lease behind");

  const exited = Date.now();
  const b = await worker(box, env);
  const done = await box.waitForRun(id, (r) => r.status === "succeeded");
  await stopAll([b]);
  assert.equal(done.takeovers, 1);
  const s1 = lines(await box.ledger(), "s1");
  assert.deepEqual(s1.map((l) => [l.attempt, l.pid]), [[1, a.pid], [2, b.pid]]);
  // The holder's pid is gone from this machine: no need to wait for the lease.
  assert.ok(s1[1].at >= exited && s1[1].at < lease!.deadline - 30_000, "waited for the lease");
});

Deno.test("SIGKILL of a worker holding four runs: another worker on this machine takes each over at once and finishes it", async () => {
  await using box = await Sandbox.create();
  const ids = await box.withStore(async (store) => {
    const out: string[] = [];
    for (let i = 0; i < 4; i++) out.push((await store.createRun(five)).id);
    return out;
  });
  // A lease this long would time the test out if the takeovers waited for it.
  const env = { KVFLOW_LEASE_MS: "60000", KVFLOW_POLL_MS: "100" };
  const a = await worker(box, { ...env, GATED: "s3" });
  for (const id of ids) await box.waitForLedger(`s3 of ${id}`, (l) => l.key === `${id}:s3`);
  const b = await worker(box, env);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(lines(await box.ledger(), "s3").length, 4, "B took nothing while A held the leases");
  const leases = await box.withStore(async (s) => {
    return await Promise.all(ids.map(async (id) => (await s.getLease(id)).value!));
  });
  const killed = Date.now();
  a.kill("SIGKILL");
  assert.equal((await a.exit()).signal, "SIGKILL");

  for (const id of ids) await box.waitForRun(id, (r) => r.status === "succeeded");
  await stopAll([b]);
  const ledger = await box.ledger();
  ids.forEach((id, i) => {
    const of = (step: string) => lines(ledger, step).filter((l) => l.key === `${id}:${step}`);
    for (const step of ["s1", "s2"]) assert.deepEqual(of(step).map((l) => l.pid), [a.pid]);
    assert.deepEqual(of("s3").map((l) => [l.attempt, l.pid]), [[1, a.pid], [2, b.pid]]);
    const takeover = of("s3")[1].at;
    assert.ok(takeover >= killed && takeover < leases[i].deadline - 30_000, "waited for the lease");
    for (const step of ["s4", "s5"]) assert.deepEqual(of(step).map((l) => l.pid), [b.pid]);
  });
  for (const id of ids) {
    const run = await box.run(id);
    assert.equal(run.takeovers, 1);
    assert.equal((await box.withStore((s) => s.getLease(id))).value, null);
  }
});
