/**
 * Deploy mode run locally: `DENO_DEPLOY=true` with queues off, the heartbeat `Deno.cron`
 * forced to fire every second, the process killed with SIGKILL between heartbeats and
 * started again, as Deno Deploy stops idle isolates. Runs triggered over HTTP, a retry due
 * after the 5 s in-process hold, and schedule ticks all complete, and nothing is enqueued.
 *
 * @module
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import * as keys from "../lib/kv/keys.ts";
import type { RunRecord } from "../lib/mod.ts";
import type { ScheduleState } from "../lib/engine/scheduler.ts";
import { FIXTURE_CLI, lines, MAIN, poll, type Proc, Sandbox } from "./_support/harness.ts";

const TOKEN = "deploy-test-token";

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Starts the entrypoint in Deploy mode and waits until it serves HTTP. */
async function deploy(box: Sandbox, entry: string, env: Record<string, string>): Promise<Proc> {
  const proc = box.spawn([], { entry, env: { DENO_DEPLOY: "true", KVFLOW_QUEUES: "off", ...env } });
  await proc.waitForOutput(/Listening on/, 20_000);
  return proc;
}

async function post(
  port: number,
  path: string,
  token?: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: "{}",
  });
  return { status: response.status, body: await response.json() };
}

async function runsOf(box: Sandbox, pipeline: string): Promise<RunRecord[]> {
  return await box.withStore(async (store) => {
    const page = await store.listRuns({ pipeline, limit: 1000 });
    return page.runs.sort((a, b) => (a.tick ?? a.createdAt) - (b.tick ?? b.createdAt));
  });
}

/** Messages ever enqueued and still in the KV file (nothing listens for them here). */
function queuedMessages(kvPath: string): number {
  const db = new DatabaseSync(kvPath, { readOnly: true });
  try {
    const count = (table: string) =>
      Number((db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n);
    return count("queue") + count("queue_running");
  } finally {
    db.close();
  }
}

Deno.test("Deploy mode without queues: HTTP runs, a retry due later and schedule ticks complete across a SIGKILL and restart", async () => {
  await using box = await Sandbox.create();
  const port = freePort();
  const env = {
    PORT: String(port),
    KVFLOW_TOKEN: TOKEN,
    DENO_CRON_TEST_SCHEDULE_OFFSET: "1000",
    TICK_CRON: "*/2 * * * * *",
    TICK_CATCHUP: "all",
    TICK_OVERLAP: "allow",
  };
  const first = await deploy(box, FIXTURE_CLI, env);

  assert.equal((await post(port, "/api/pipelines/five-steps/runs")).status, 401);
  const five = await post(port, "/api/pipelines/five-steps/runs", TOKEN);
  assert.equal(five.status, 201);
  const flaky = await post(port, "/api/pipelines/flaky-once/runs", TOKEN);
  assert.equal(flaky.status, 201);
  const fiveId = five.body.id as string;
  const flakyId = flaky.body.id as string;

  // The request's run continues inline in the isolate, with no worker loop.
  await box.waitForRun(fiveId, (r) => r.status === "succeeded");
  const waiting = await box.waitForRun(flakyId, (r) => r.status === "waiting");
  const dueAt = waiting.dueAt!;
  assert.ok(dueAt - Date.now() > 3000, `retry due in ${dueAt - Date.now()} ms`);
  // The heartbeat creates and runs the ticks' runs.
  await poll("a tick's run", 10_000, async () => {
    return (await runsOf(box, "ticking")).some((r) => r.status === "succeeded") || undefined;
  });

  // Between heartbeats: no run is held. Deploy stops an isolate like this, at any time.
  await poll("no run held", 10_000, async () => {
    const running = await box.withStore((store) => store.listRuns({ status: "running" }));
    return running.runs.length === 0 || undefined;
  });
  first.kill("SIGKILL");
  assert.equal((await first.exit()).signal, "SIGKILL");
  const killedAt = Date.now();
  const before = await box.withStore(async ({ kv }) => {
    return (await kv.get<ScheduleState>(keys.schedule("ticking"))).value!;
  });

  await new Promise((resolve) => setTimeout(resolve, 3000));
  const second = await deploy(box, FIXTURE_CLI, env);
  const restartedAt = Date.now();
  const done = await box.waitForRun(flakyId, (r) => r.status === "succeeded", 20_000);
  await poll("two ticks after the restart", 15_000, async () => {
    const after = (await runsOf(box, "ticking")).filter((r) => r.tick! > restartedAt);
    return (after.length >= 2 && after.every((r) => r.status === "succeeded")) || undefined;
  });
  second.kill("SIGKILL");
  await second.exit();

  // The retry ran once, in the restarted process, at its due time to within a heartbeat.
  const ledger = await box.ledger();
  const attempts = lines(ledger, "flaky");
  assert.deepEqual(attempts.map((l) => [l.attempt, l.pid]), [[1, first.pid], [2, second.pid]]);
  assert.ok(attempts[1].at >= dueAt, `retry ran ${dueAt - attempts[1].at} ms early`);
  assert.ok(
    attempts[1].at - Math.max(dueAt, restartedAt) < 3000,
    `retry ran ${attempts[1].at - Math.max(dueAt, restartedAt)} ms after it could`,
  );
  assert.ok(done.endedAt! >= dueAt);

  // Every tick from the first run to the last has one run, ticks of the downtime too.
  const ticks = await runsOf(box, "ticking");
  const times = ticks.map((r) => r.tick!);
  const expected: number[] = [];
  for (let t = times[0]; t <= times[times.length - 1]; t += 2000) expected.push(t);
  assert.deepEqual(times, expected);
  const downtime = ticks.filter((r) => r.tick! > before.lastTick && r.tick! < restartedAt);
  assert.ok(downtime.length >= 1, "no tick fell in the downtime");
  assert.ok(downtime.every((r) => r.createdAt >= killedAt), "caught up after the restart");
  const starts = lines(ledger, "tock");
  for (const run of ticks.filter((r) => r.status === "succeeded")) {
    assert.equal(starts.filter((l) => l.key === `${run.id}:tock`).length, 1, run.id);
  }
  assert.equal(queuedMessages(box.kvPath), 0, "something was enqueued");
});

Deno.test("main.ts is the Deploy entrypoint as is: read-only API without KVFLOW_TOKEN, a heartbeat cron that sweeps and looks at the schedules", async () => {
  await using box = await Sandbox.create();
  const port = freePort();
  const proc = await deploy(box, MAIN, {
    PORT: String(port),
    KVFLOW_TOKEN: "",
    DENO_CRON_TEST_SCHEDULE_OFFSET: "500",
  });
  assert.match(proc.stderr, /KVFLOW_TOKEN is not set: the HTTP API is read-only/);
  const denied = await post(port, "/api/pipelines/example/runs");
  assert.equal(denied.status, 401);
  const response = await fetch(`http://127.0.0.1:${port}/api/pipelines`);
  assert.equal(response.status, 200);
  const names = (await response.json() as { name: string }[]).map((p) => p.name);
  assert.ok(names.includes("nightly"), `${names}`);
  // The heartbeat cron fires (every 500 ms here) and sweeps, with no worker loop started.
  const health = await poll("a heartbeat sweep", 10_000, async () => {
    const answer = await fetch(`http://127.0.0.1:${port}/healthz`);
    const body = await answer.json() as {
      ok: boolean;
      worker: { serving: boolean; lastSweepAt: number | null };
    };
    return body.worker.lastSweepAt !== null ? body : undefined;
  });
  assert.equal(health.ok, true);
  assert.equal(health.worker.serving, false);
  // Its sweep looked at the nightly schedule: the first look records the latest tick
  // without a run for it.
  const state = await poll("the nightly schedule's first look", 10_000, async () => {
    return await box.withStore(async ({ kv }) => {
      return (await kv.get<ScheduleState>(keys.schedule("nightly"))).value ?? undefined;
    });
  });
  assert.ok(state.lastTick <= Date.now() && state.lastTick > Date.now() - 86_400_000);
  proc.kill("SIGKILL");
  await proc.exit();
  assert.deepEqual(await runsOf(box, "nightly"), []);
  assert.equal(queuedMessages(box.kvPath), 0);
});
