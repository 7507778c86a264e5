/**
 * Pause and unpause with real processes: a worker (or `serve`) subprocess drives the
 * fixture pipelines of `tests/fixtures/pausable.ts`, pauses and unpauses come from other
 * processes (CLI, HTTP), and the side ledger says which bodies started when.
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import type { PauseState, RunRecord } from "../lib/model/records.ts";
import { FIXTURE_CLI, poll, type Proc, Sandbox } from "./_support/harness.ts";

const fixture = { entry: FIXTURE_CLI };

/** Starts `serve` on a free port with a token; returns it with its base URL. */
async function serve(
  box: Sandbox,
  env: Record<string, string>,
): Promise<{ proc: Proc; url: string; token: string }> {
  const token = "tok-" + crypto.randomUUID();
  const proc = box.spawn(["serve", "--port", "0"], {
    ...fixture,
    env: { ...env, KVFLOW_TOKEN: token },
  });
  const [, port] = await proc.waitForOutput(/serving on http:\/\/[\d.]+:(\d+)/, 20_000);
  return { proc, url: `http://127.0.0.1:${port}`, token };
}

async function post(
  url: string,
  token: string | null,
  body: unknown = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  });
  return { status: response.status, json: await response.json() };
}

/** Whether the due-index holds any entry for the run. */
async function hasDue(box: Sandbox, runId: string): Promise<boolean> {
  return await box.withStore(async ({ kv }) => {
    for await (const e of kv.list({ prefix: keys.duePrefix() })) {
      if (e.key[3] === runId) return true;
    }
    return false;
  });
}

async function runPauseOf(box: Sandbox, runId: string): Promise<PauseState | null> {
  return await box.withStore(async ({ kv }) =>
    (await kv.get<PauseState>(keys.runPause(runId))).value
  );
}

Deno.test("pause of a running run: no step starts after the pause commits, and unpause finishes it", async () => {
  await using box = await Sandbox.create();
  const env = { PAUSE_STEPS: "20", PAUSE_STEP_MS: "60", KVFLOW_POLL_MS: "200" };
  const worker = box.spawn(["worker"], { ...fixture, env });
  await worker.waitForOutput(/worker .* started/, 20_000);
  const started = await box.cli(["run", "pausable", "--detach"], { ...fixture, env });
  const runId = started.stdout.trim();
  await box.waitForLedger("p04 started", (l) => l.step === "p04" && l.key.startsWith(runId));

  const paused = await box.cli(["pause", runId], { ...fixture, env });
  assert.equal(paused.code, 0, paused.stderr);
  const pauseReturned = Date.now();
  assert.match(paused.stdout, /pausing|paused/);
  const pause = await runPauseOf(box, runId);
  assert.ok(pause, "the pause is stored");
  const run = await box.waitForRun(runId, (r) => r.status === "paused", 10_000);
  assert.equal(run.dueAt, null);
  assert.equal(run.paused?.by, "run");
  assert.equal(run.paused?.reason, "Paused by request (CLI)");
  assert.equal((await box.withStore((s) => s.getLease(runId))).value, null, "no lease");
  assert.equal(await hasDue(box, runId), false, "no due entry");

  // The pause's `at` is read just before its commit: a body that starts after it was
  // already in flight (its start marker committed first); one step runs at a time here.
  const atPause = (await box.ledger()).filter((l) => l.event === "start");
  const after = atPause.filter((l) => l.at > pause.at);
  assert.ok(after.length <= 1, `at most the one step in flight: ${JSON.stringify(after)}`);
  assert.ok(after.every((l) => l.at <= pauseReturned), "none after the pause returned");
  // paused means paused: nothing starts while it stays so
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await box.ledger()).filter((l) => l.event === "start").length, atPause.length);
  const status = await box.status(runId, fixture);
  assert.equal(status.status, "paused");
  const listed = await box.cli(["runs", "--status", "paused"], fixture);
  assert.match(listed.stdout, new RegExp(`${runId}\\s+pausable\\s+paused`));

  const again = await box.cli(["pause", runId], { ...fixture, env });
  assert.equal(again.code, 0, "pausing a paused run is fine");
  const unpaused = await box.cli(["unpause", runId], { ...fixture, env });
  assert.equal(unpaused.code, 0, unpaused.stderr);
  assert.match(unpaused.stdout, /unpaused: queued/);
  await box.waitForRun(runId, (r) => r.status === "succeeded", 15_000);
  const ledger = (await box.ledger()).filter((l) => l.key.startsWith(runId));
  for (let n = 1; n <= 20; n++) {
    const step = `p${String(n).padStart(2, "0")}`;
    const starts = ledger.filter((l) => l.step === step && l.event === "start");
    assert.equal(starts.length, 1, `${step} ran once: ${JSON.stringify(starts)}`);
  }
  assert.equal(await runPauseOf(box, runId), null, "the unpause deleted the pause");
  worker.kill("SIGTERM");
  await worker.exit();
});

Deno.test("pause of a pipeline: triggers and schedule ticks wait, and everything continues after unpause", async () => {
  await using box = await Sandbox.create();
  const env = {
    PAUSE_STEPS: "3",
    PAUSE_STEP_MS: "20",
    PAUSE_CRON: "*/2 * * * * *",
    KVFLOW_POLL_MS: "200",
  };
  const { proc, url, token } = await serve(box, env);
  // the schedule runs before the pause
  await box.waitForLedger("a scheduled run", (l) => l.step === "p03" && l.event === "done", 15_000);

  const refused = await post(`${url}/api/pipelines/pausable/pause`, null);
  assert.equal(refused.status, 401, "a pause needs the token");
  const paused = await post(`${url}/api/pipelines/pausable/pause`, token, { reason: "maint" });
  assert.equal(paused.status, 200);
  assert.equal((paused.json.paused as PauseState).reason, "maint");
  const pausedAt = (paused.json.paused as PauseState).at;
  const twice = await post(`${url}/api/pipelines/pausable/pause`, token);
  assert.equal(twice.status, 200, "pausing a paused pipeline is fine");
  assert.equal((twice.json.paused as PauseState).at, pausedAt, "the first pause stays");

  // triggers while paused: CLI, HTTP, an event
  const cli = await box.cli(["run", "pausable", "--detach"], { ...fixture, env });
  const byCli = cli.stdout.trim();
  const http = await post(`${url}/api/pipelines/pausable/runs`, token, { params: {} });
  assert.equal(http.status, 201);
  const byHttp = http.json.id as string;
  const sent = await box.cli(["send", "pause.go", "--data", '{"tag":"e"}', "--json"], {
    ...fixture,
    env,
  });
  assert.equal(sent.code, 0, sent.stderr);
  const byEvent = (JSON.parse(sent.stdout).started as { id: string }[])[0].id;
  const held = [byCli, byHttp, byEvent];
  for (const id of held) {
    const run = await box.waitForRun(id, (r) => r.status === "paused", 10_000);
    assert.equal(run.paused?.by, "pipeline");
    assert.equal(run.dueAt, null);
    assert.equal(await hasDue(box, id), false);
  }
  // ticks pass while paused (every 2 s): no run for them, no body of a new run starts
  await new Promise((r) => setTimeout(r, 4500));
  const during = await box.withStore((s) => s.listRuns({ pipeline: "pausable", limit: 100 }));
  const ticked = during.runs.filter((r) => r.trigger === "schedule" && r.createdAt > pausedAt);
  assert.deepEqual(ticked.map((r) => r.id), [], "no scheduled run while paused");
  const starts = (await box.ledger()).filter((l) => held.some((id) => l.key.startsWith(id)));
  assert.deepEqual(starts, [], "no body of a held run started");
  const pipelines = await fetch(`${url}/api/pipelines/pausable`, {
    headers: { authorization: `Bearer ${token}` },
  }).then((r) => r.json());
  assert.equal(pipelines.paused.reason, "maint");
  // the run counts may be cached for a moment
  await poll("paused runs in /metrics", 10_000, async () => {
    const metrics = await fetch(`${url}/metrics`, {
      headers: { authorization: `Bearer ${token}` },
    }).then((r) => r.text());
    assert.match(metrics, /kvflow_pipeline_paused\{pipeline="pausable"\} 1/);
    return /kvflow_runs\{pipeline="pausable",status="paused"\} 3/.test(metrics) || undefined;
  });

  // the dashboard shows the pause and offers Unpause; the run's SSE stream says paused
  const page = await fetch(`${url}/pipelines/pausable`).then((r) => r.text());
  assert.match(page, /⏸ paused<\/span> since/);
  assert.match(page, /data-action="unpause" data-url="\/api\/pipelines\/pausable\/unpause"\s*>/);
  const runPage = await fetch(`${url}/runs/${byHttp}`).then((r) => r.text());
  assert.match(runPage, /Pipeline pausable is paused since/);
  // the home page's pipeline card says paused, with no next run
  const home = await fetch(`${url}/`).then((r) => r.text());
  const card = home.slice(home.indexOf('href="/pipelines/pausable"'));
  assert.match(card, /^[^]*?⏸ paused<\/span>[^]*?none while paused \(since[^]*?: maint\)/);
  // and the CLI's list of runs says why each waits
  const list = await box.cli(["runs", "--pipeline", "pausable", "--status", "paused"], {
    ...fixture,
    env,
  });
  assert.equal(list.code, 0, list.stderr);
  for (const id of held) {
    assert.match(list.stdout, new RegExp(`^${id} .* paused .*\\(pipeline paused: maint\\)`, "m"));
  }
  const stream = await fetch(`${url}/api/runs/${byHttp}/events`);
  const reader = stream.body!.pipeThrough(new TextDecoderStream()).getReader();
  let sse = "";
  while (!/event: run\ndata: .*\n/.test(sse)) sse += (await reader.read()).value ?? "";
  await reader.cancel();
  const first = JSON.parse(sse.match(/event: run\ndata: (.*)\n/)![1]);
  assert.equal(first.status, "paused");
  assert.equal(first.paused.by, "pipeline");

  const unpausedAt = Date.now();
  const unpaused = await post(`${url}/api/pipelines/pausable/unpause`, token);
  assert.equal(unpaused.status, 200);
  assert.equal(unpaused.json.paused, null);
  for (const id of held) await box.waitForRun(id, (r) => r.status === "succeeded", 15_000);
  // catch-up `latest`: one run for the latest tick missed, then the schedule goes on
  const caught = await poll("the catch-up run", 10_000, async () => {
    const page = await box.withStore((s) => s.listRuns({ pipeline: "pausable", limit: 100 }));
    const runs = page.runs.filter((r: RunRecord) =>
      r.trigger === "schedule" && r.createdAt >= unpausedAt - 50
    );
    return runs.length > 0 ? runs : undefined;
  });
  const missed = caught.filter((r) => r.tick! > pausedAt && r.tick! < unpausedAt);
  assert.equal(missed.length, 1, "one run for the ticks missed while paused (latest)");
  await box.waitForRun(missed[0].id, (r) => r.status === "succeeded", 15_000);
  proc.kill("SIGTERM");
  await proc.exit();
});

Deno.test("pause of a parked run: an event sent meanwhile is taken only after unpause", async () => {
  await using box = await Sandbox.create();
  const env = { KVFLOW_POLL_MS: "200" };
  const worker = box.spawn(["worker"], { ...fixture, env });
  await worker.waitForOutput(/worker .* started/, 20_000);
  const started = await box.cli(["run", "pause-parked", "--param", "key=k1", "--detach"], {
    ...fixture,
    env,
  });
  const runId = started.stdout.trim();
  await box.waitForRun(runId, (r) => r.status === "waiting" && r.dueAt !== null, 10_000);

  const paused = await box.cli(["pause", runId], { ...fixture, env });
  assert.equal(paused.code, 0, paused.stderr);
  assert.match(paused.stdout, new RegExp(`run ${runId} paused`));
  const run = await box.run(runId);
  assert.equal(run.status, "paused");
  assert.equal(run.waitingFor?.kind, "event", "it still says what it waits for");
  const sent = await box.cli(["send", "pause.wake", "--data", '{"key":"k1"}'], { ...fixture, env });
  assert.equal(sent.code, 0, sent.stderr);
  await new Promise((r) => setTimeout(r, 2000));
  assert.equal((await box.run(runId)).status, "paused", "the event does not wake it");
  assert.equal(await hasDue(box, runId), false, "no due entry: workers do not spin on it");
  assert.deepEqual(await box.ledger(), []);

  const unpaused = await box.cli(["unpause", runId], { ...fixture, env });
  assert.equal(unpaused.code, 0, unpaused.stderr);
  await box.waitForRun(runId, (r) => r.status === "succeeded", 10_000);
  const woke = (await box.ledger()).filter((l) => l.step === "woke" && l.event === "start");
  assert.equal(woke.length, 1, "the delivery was taken once");
  worker.kill("SIGTERM");
  await worker.exit();
});

Deno.test("pause and unpause refuse unknown targets and ended runs, by CLI and HTTP", async () => {
  await using box = await Sandbox.create();
  const env = { PAUSE_STEPS: "2", PAUSE_STEP_MS: "1" };
  const unknown = await box.cli(["pause", "no-such-thing"], { ...fixture, env });
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /Unknown pipeline or run 'no-such-thing'/);
  const noRun = await box.cli(["unpause", "20260101-000000-abcdef"], { ...fixture, env });
  assert.equal(noRun.code, 2);
  assert.match(noRun.stderr, /20260101-000000-abcdef/);
  const usage = await box.cli(["pause"], { ...fixture, env });
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /pause takes exactly one argument/);
  const done = await box.cli(["run", "pausable"], { ...fixture, env });
  assert.equal(done.code, 0, done.stderr);
  const runId = done.stdout.match(/▶ run (\S+)/)![1];
  const ended = await box.cli(["pause", runId], { ...fixture, env });
  assert.equal(ended.code, 2);
  assert.match(ended.stderr, /already succeeded: nothing to pause/);

  // a queued run nobody holds is paused at once; cancelling it ends the pause too
  const queued = (await box.cli(["run", "pausable", "--detach"], { ...fixture, env })).stdout
    .trim();
  const pausedQueued = await box.cli(["pause", queued], { ...fixture, env });
  assert.match(pausedQueued.stdout, new RegExp(`run ${queued} paused`));
  assert.equal((await box.cli(["cancel", queued], { ...fixture, env })).code, 0);
  const cancelled = await box.run(queued);
  assert.equal(cancelled.status, "cancelled");
  assert.equal(cancelled.paused, null);
  assert.equal(await runPauseOf(box, queued), null);
  assert.equal(await hasDue(box, queued), false);

  const { proc, url, token } = await serve(box, env);
  assert.equal((await post(`${url}/api/runs/${runId}/pause`, null)).status, 401);
  const conflict = await post(`${url}/api/runs/${runId}/pause`, token);
  assert.equal(conflict.status, 409);
  assert.equal((await post(`${url}/api/runs/${runId}/unpause`, token)).status, 409);
  assert.equal((await post(`${url}/api/runs/20260101-000000-abcdef/pause`, token)).status, 404);
  assert.equal((await post(`${url}/api/pipelines/nope/pause`, token)).status, 404);
  assert.equal((await post(`${url}/api/pipelines/nope/unpause`, token)).status, 404);
  const bad = await post(`${url}/api/runs/${runId}/pause`, token, { reason: 5 });
  assert.equal(bad.status, 400);
  const doc = await fetch(`${url}/openapi.json`, {
    headers: { authorization: `Bearer ${token}` },
  }).then((r) => r.json());
  for (const path of ["/api/pipelines/{name}/pause", "/api/pipelines/{name}/unpause"]) {
    assert.ok(doc.paths[path]?.post, `${path} documented`);
  }
  for (const path of ["/api/runs/{id}/pause", "/api/runs/{id}/unpause"]) {
    assert.ok(doc.paths[path]?.post, `${path} documented`);
  }
  assert.ok(doc.components.schemas.RunStatus.enum.includes("paused"));
  proc.kill("SIGTERM");
  await proc.exit();
});

Deno.test("a run driven in the foreground and paused from another process: the CLI says so and exits 0", async () => {
  await using box = await Sandbox.create();
  const env = { PAUSE_STEPS: "10", PAUSE_STEP_MS: "150" };
  const fg = box.spawn(["run", "pausable"], { ...fixture, env });
  const [, runId] = await fg.waitForOutput(/▶ run (\S+) ·/, 20_000);
  await box.waitForLedger("p03 started", (l) => l.step === "p03");
  const paused = await box.cli(["pause", runId], { ...fixture, env });
  assert.equal(paused.code, 0, paused.stderr);
  const pause = (await runPauseOf(box, runId))!;
  const exit = await fg.exit();
  assert.equal(exit.code, 0, exit.stderr);
  assert.match(
    exit.stdout,
    new RegExp(`⏸ run ${runId} paused after .*: Paused by request \\(CLI\\)`),
  );
  assert.match(exit.stdout, new RegExp(`deno task unpause ${runId}`));
  const starts = (await box.ledger()).filter((l) => l.event === "start");
  assert.ok(starts.filter((l) => l.at > pause.at).length <= 1, "at most the step in flight");
  const run = await box.run(runId);
  assert.equal(run.status, "paused");
  // a worker continues it once unpaused, each step once
  const worker = box.spawn(["worker"], { ...fixture, env: { ...env, KVFLOW_POLL_MS: "200" } });
  await worker.waitForOutput(/worker .* started/, 20_000);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await box.run(runId)).status, "paused", "the worker does not take it");
  assert.equal((await box.cli(["unpause", runId], { ...fixture, env })).code, 0);
  await box.waitForRun(runId, (r) => r.status === "succeeded", 15_000);
  const all = (await box.ledger()).filter((l) => l.event === "start");
  assert.deepEqual(all.map((l) => l.step).sort(), [...new Set(all.map((l) => l.step))].sort());
  assert.equal(all.length, 10);
  worker.kill("SIGTERM");
  await worker.exit();
});

Deno.test("pause of a run whose steps write large outputs: the one in flight is checkpointed whole", async () => {
  await using box = await Sandbox.create();
  const env = {
    PAUSE_STEPS: "12",
    PAUSE_STEP_MS: "100",
    PAUSE_OUTPUT_BYTES: "300000",
    KVFLOW_POLL_MS: "200",
  };
  const worker = box.spawn(["worker"], { ...fixture, env });
  await worker.waitForOutput(/worker .* started/, 20_000);
  const runId = (await box.cli(["run", "pausable", "--detach"], { ...fixture, env })).stdout.trim();
  await box.waitForLedger("p03 started", (l) => l.step === "p03" && l.key.startsWith(runId));
  assert.equal((await box.cli(["pause", runId], { ...fixture, env })).code, 0);
  const run = await box.waitForRun(runId, (r) => r.status === "paused" || r.status === "succeeded");
  const steps = await box.withStore((s) => s.getSteps(runId));
  const done = [...steps.values()].filter((t) => t.status === "succeeded").length;
  const starts = (await box.ledger()).filter((l) => l.event === "start").length;
  if (run.status === "paused") {
    assert.equal(starts, done, "every body that started was checkpointed: none lost in flight");
  }
  assert.equal((await box.cli(["unpause", runId], { ...fixture, env })).code, 0);
  await box.waitForRun(runId, (r) => r.status === "succeeded", 20_000);
  const all = (await box.ledger()).filter((l) => l.event === "start");
  assert.equal(all.length, 12, "each step once");
  assert.equal(
    ((await box.withStore((s) => s.getOutput(runId, "p12"))) as string).length,
    "12:".length + 300000,
  );
  worker.kill("SIGTERM");
  await worker.exit();
});
