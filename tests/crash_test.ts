/**
 * Crashes, kills and pauses of real processes, and what survives them: the guarantees of
 * DESIGN.md §3 checked against a side ledger that lives outside KV.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FIXTURE_CLI, lines, ROOT, runIdOf, Sandbox } from "./_support/harness.ts";

Deno.test("SIGKILL mid-step: resume takes over the dead lease at once and re-runs only that step, same idempotency key", async () => {
  await using box = await Sandbox.create();
  // A lease this long would time the test out if resume waited for it to expire.
  const env = { GATED: "s3", KVFLOW_LEASE_MS: "60000" };
  const run = box.spawn(["run", "tests/fixtures/five.ts"], { env });
  const started = await box.waitForLedger("s3 started", (l) => l.step === "s3");
  run.kill("SIGKILL");
  const killed = await run.exit();
  assert.equal(killed.signal, "SIGKILL");
  const id = runIdOf(killed.stdout);
  assert.equal(started.key, `${id}:s3`);
  assert.equal((await box.run(id)).status, "running");

  await box.openGate("s3");
  const t0 = Date.now();
  const resumed = await box.cli(["resume", id], { env });
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  assert.ok(Date.now() - t0 < 10_000, "resume waited for the lease to expire");
  assert.match(resumed.stdout, new RegExp(`✓ run ${id} succeeded`));

  const ledger = await box.ledger();
  for (const step of ["s1", "s2", "s4", "s5"]) {
    assert.equal(lines(ledger, step).length, 1, `${step} ran ${lines(ledger, step).length} times`);
  }
  const s3 = lines(ledger, "s3");
  assert.deepEqual(s3.map((l) => l.attempt), [1, 2]);
  assert.deepEqual(s3.map((l) => l.key), [`${id}:s3`, `${id}:s3`]);
  assert.deepEqual(s3.map((l) => l.pid === run.pid), [true, false]);
  assert.deepEqual(lines(ledger, "s3", "done").map((l) => l.attempt), [2]);

  const status = await box.status(id);
  assert.equal(status.status, "succeeded");
  assert.equal(status.takeovers, 1);
  assert.deepEqual(status.steps.map((s) => s.attempts), [1, 1, 2, 1, 1]);
  assert.deepEqual(
    status.attempts.filter((a) => a.step === "s3").map((a) => `${a.n}:${a.status}`),
    ["1:crashed", "2:succeeded"],
  );
});

Deno.test("a step killed with its worker runs again even with attempts: 1; crashes do not spend retries", async () => {
  await using box = await Sandbox.create();
  const env = { GATED: "s3", FIVE_ATTEMPTS: "1" };
  const first = box.spawn(["run", "tests/fixtures/five.ts"], { env });
  await box.waitForLedger("s3 attempt 1", (l) => l.step === "s3" && l.attempt === 1);
  first.kill("SIGKILL");
  const id = runIdOf((await first.exit()).stdout);
  // killed again while its second attempt runs
  const second = box.spawn(["resume", id], { env });
  await box.waitForLedger("s3 attempt 2", (l) => l.step === "s3" && l.attempt === 2);
  second.kill("SIGKILL");
  assert.equal((await second.exit()).signal, "SIGKILL");

  await box.openGate("s3");
  const resumed = await box.cli(["resume", id], { env });
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  const status = await box.status(id);
  assert.equal(status.status, "succeeded");
  assert.deepEqual(
    status.attempts.filter((a) => a.step === "s3").map((a) => `${a.n}:${a.status}`),
    ["1:crashed", "2:crashed", "3:succeeded"],
  );
  assert.deepEqual(lines(await box.ledger(), "s3", "done").map((l) => l.attempt), [3]);
});

Deno.test("a step that takes its worker down every time fails the run after 10 crashes, with a clear error", async () => {
  await using box = await Sandbox.create();
  const env = { GATED: "s2", FIVE_ATTEMPTS: "1" };
  let id = "";
  for (let attempt = 1; attempt <= 11; attempt++) {
    const proc = box.spawn(id ? ["resume", id] : ["run", "tests/fixtures/five.ts"], { env });
    await box.waitForLedger(
      `s2 attempt ${attempt}`,
      (l) => l.step === "s2" && l.attempt === attempt,
      30_000,
    );
    proc.kill("SIGKILL");
    const exit = await proc.exit();
    if (!id) id = runIdOf(exit.stdout);
  }
  // The next holder sees the eleventh crash and gives up instead of starting s2 again.
  const last = await box.cli(["resume", id], { env });
  assert.equal(last.code, 1, last.stdout + last.stderr);
  assert.match(last.stdout, /stopped 11 times before it finished/);
  assert.doesNotMatch(last.stdout + last.stderr, /^\s+at /m);
  const status = await box.status(id);
  assert.equal(status.status, "failed");
  assert.equal(lines(await box.ledger(), "s2").length, 11);
  assert.deepEqual(status.steps.map((s) => s.status), [
    "succeeded",
    "failed",
    "skipped",
    "skipped",
    "skipped",
  ]);
});

Deno.test("11 rolling restarts (SIGTERM) during one long step do not fail the run; a SIGKILL still counts as a crash", async () => {
  await using box = await Sandbox.create();
  const env = { GATED: "s2", FIVE_ATTEMPTS: "1", KVFLOW_GRACE_MS: "50", KVFLOW_POLL_MS: "100" };
  const queued = await box.cli(["run", "five-steps", "--detach"], { entry: FIXTURE_CLI });
  assert.equal(queued.code, 0, queued.stderr);
  const id = queued.stdout.trim();
  const restarts = 11;
  for (let attempt = 1; attempt <= restarts; attempt++) {
    const worker = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
    await box.waitForLedger(
      `s2 attempt ${attempt}`,
      (l) => l.step === "s2" && l.attempt === attempt && l.pid === worker.pid,
      30_000,
    );
    worker.kill("SIGTERM");
    const exit = await worker.exit();
    assert.equal(exit.code, 0, exit.stderr);
    assert.equal((await box.run(id)).status, "queued", `after restart ${attempt}`);
  }
  const s2 = () => box.withStore(async (store) => (await store.getSteps(id)).get("s2")!);
  assert.equal((await s2()).crashes, undefined);
  assert.equal((await s2()).released, restarts);

  const killed = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await box.waitForLedger("s2 attempt 12", (l) => l.step === "s2" && l.attempt === restarts + 1);
  killed.kill("SIGKILL");
  assert.equal((await killed.exit()).signal, "SIGKILL");

  await box.openGate("s2");
  const last = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await box.waitForRun(id, (run) => run.status === "succeeded", 30_000);
  last.kill("SIGTERM");
  assert.equal((await last.exit()).code, 0);
  assert.equal((await s2()).crashes, 1, "the SIGKILL counted as a crash");
  const status = await box.status(id);
  assert.deepEqual(
    status.attempts.filter((a) => a.step === "s2").map((a) => a.status),
    [...Array(restarts).fill("interrupted"), "crashed", "succeeded"],
  );
  assert.deepEqual(lines(await box.ledger(), "s2", "done").map((l) => l.attempt), [restarts + 2]);
});

Deno.test("resume after a code fix re-imports the changed module and skips checkpointed steps", async () => {
  await using box = await Sandbox.create();
  const tmp = `${ROOT}tests/.tmp/${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  try {
    const source = (await Deno.readTextFile(`${ROOT}tests/fixtures/fixable.ts`))
      .replace(`"../../lib/mod.ts"`, `"../../../lib/mod.ts"`)
      .replace(`"./_probe.ts"`, `"../../fixtures/_probe.ts"`);
    assert.match(source, /const FIXED = false;/);
    const module = `${tmp}/nightly.ts`;
    await Deno.writeTextFile(module, source);

    const failed = await box.cli(["run", module]);
    assert.equal(failed.code, 1, failed.stdout + failed.stderr);
    const id = runIdOf(failed.stdout);
    assert.match(failed.stdout, /step 'publish': Publisher bug/);
    assert.ok(failed.stdout.includes(`deno task resume ${id}`), failed.stdout);

    await Deno.writeTextFile(module, source.replace("const FIXED = false;", "const FIXED = true;"));
    const resumed = await box.cli(["resume", id]);
    assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
    assert.match(resumed.stdout, new RegExp(`✓ run ${id} succeeded`));

    const ledger = await box.ledger();
    assert.equal(lines(ledger, "load").length, 1);
    assert.equal(lines(ledger, "double").length, 1);
    assert.equal(lines(ledger, "publish").length, 2);
    const output = await box.withStore((store) => store.getOutput(id, "publish"));
    assert.deepEqual(output, { sum: 12 });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("SIGKILL during a fan-out: resume runs only the items that had not checkpointed", async () => {
  await using box = await Sandbox.create();
  const run = box.spawn(["run", "tests/fixtures/fan.ts"], { env: { GATED: "fan" } });
  // Items 3–5 start only as items 0–2 checkpoint (same commit), then wait at the gate.
  for (const item of [3, 4, 5]) {
    await box.waitForLedger(`item ${item} started`, (l) => l.item === item);
  }
  run.kill("SIGKILL");
  const killed = await run.exit();
  assert.equal(killed.signal, "SIGKILL");
  const id = runIdOf(killed.stdout);

  await box.openGate("fan");
  const resumed = await box.cli(["resume", id]);
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);

  const ledger = await box.ledger();
  const starts = (item: number) => lines(ledger, "each", "start", item);
  for (const item of [0, 1, 2]) {
    assert.equal(starts(item).length, 1, `item ${item} re-ran after its checkpoint`);
  }
  for (const item of [3, 4, 5]) {
    assert.deepEqual(starts(item).map((l) => l.attempt), [1, 2], `item ${item}`);
    assert.equal(starts(item)[0].key, starts(item)[1].key);
    assert.equal(starts(item)[0].key, `${id}:each:${item}`);
  }
  const output = await box.withStore((store) => store.getOutput(id, "each")) as { n: number }[];
  assert.deepEqual(output.map((o) => o.n), [0, 1, 2, 3, 4, 5]);
  assert.equal(await box.withStore((store) => store.getOutput(id, "total")), 6);
});

Deno.test("fencing: a paused worker that lost its lease cannot write its late result", async () => {
  await using box = await Sandbox.create();
  const env = { GATED: "s3", KVFLOW_LEASE_MS: "1000", KVFLOW_POLL_MS: "100" };
  const queued = await box.cli(["run", "five-steps", "--detach"], { entry: FIXTURE_CLI });
  assert.equal(queued.code, 0, queued.stderr);
  const id = queued.stdout.trim();

  const a = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await box.waitForLedger("s3 started by A", (l) => l.step === "s3" && l.pid === a.pid);
  a.kill("SIGSTOP");
  const leaseBefore = await box.withStore((store) => store.getLease(id));
  assert.equal(leaseBefore.value?.pid, a.pid);

  const b = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  const takeover = await box.waitForLedger("s3 started by B", (l) => {
    return l.step === "s3" && l.pid === b.pid;
  });
  // A is alive (only stopped), so B had to wait for the lease deadline.
  assert.ok(
    takeover.at >= leaseBefore.value!.deadline,
    `B took over ${leaseBefore.value!.deadline - takeover.at} ms before the deadline`,
  );
  assert.equal(takeover.attempt, 2);
  assert.equal(takeover.key, `${id}:s3`);
  await box.openGate("s3");
  await box.waitForRun(id, (run) => run.status === "succeeded");
  const before = await box.snapshot();

  a.kill("SIGCONT");
  await box.waitForLedger("A's late s3 result", (l) => {
    return l.step === "s3" && l.event === "done" && l.pid === a.pid;
  });
  // Give A time to try its checkpoint commit (and fail its lease check).
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(await box.snapshot(), before, "the paused worker wrote to KV");

  const status = await box.status(id, { entry: FIXTURE_CLI });
  assert.equal(status.status, "succeeded");
  assert.equal(status.takeovers, 1);
  assert.deepEqual(
    status.attempts.filter((x) => x.step === "s3").map((x) => `${x.n}:${x.status}`),
    ["1:crashed", "2:succeeded"],
  );
  const s3 = await box.withStore((store) => store.getOutput(id, "s3"));
  assert.deepEqual(s3, { step: "s3", attempt: 2, pid: b.pid });
  const ledger = await box.ledger();
  for (const step of ["s4", "s5"]) {
    assert.deepEqual(lines(ledger, step).map((l) => l.pid), [b.pid], step);
  }
  assert.equal((await box.withStore((store) => store.getLease(id))).value, null);

  a.kill("SIGTERM");
  b.kill("SIGTERM");
  const [exitA, exitB] = await Promise.all([a.exit(), b.exit()]);
  assert.equal(exitA.code, 0, exitA.stderr);
  assert.equal(exitB.code, 0, exitB.stderr);
  assert.equal((await box.run(id)).status, "succeeded");
});

Deno.test("a retry due later survives a kill: a fresh worker runs it at its due time", async () => {
  await using box = await Sandbox.create();
  const env = { KVFLOW_POLL_MS: "100" };
  const run = box.spawn(["run", "flaky-once"], { entry: FIXTURE_CLI, env });
  await run.waitForOutput(/↻ flaky +attempt 1 failed: Upstream not ready .* retry in/);
  const id = runIdOf(run.stdout);
  const waiting = await box.waitForRun(id, (r) => r.status === "waiting");
  const dueAt = waiting.dueAt!;
  assert.ok(dueAt - Date.now() > 3000, `due in ${dueAt - Date.now()} ms`);
  run.kill("SIGKILL");
  assert.equal((await run.exit()).signal, "SIGKILL");

  const worker = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  const done = await box.waitForRun(id, (r) => r.status === "succeeded", 15_000);
  const ledger = await box.ledger();
  const starts = lines(ledger, "flaky");
  assert.deepEqual(starts.map((l) => l.attempt), [1, 2]);
  assert.deepEqual(starts.map((l) => l.pid), [run.pid, worker.pid]);
  assert.ok(starts[1].at >= dueAt, `retry ran ${dueAt - starts[1].at} ms early`);
  assert.ok(starts[1].at - dueAt < 2000, `retry ran ${starts[1].at - dueAt} ms late`);
  assert.ok(done.endedAt! >= dueAt);

  worker.kill("SIGTERM");
  const exit = await worker.exit();
  assert.equal(exit.code, 0, exit.stderr);
});

Deno.test("a worker restarted after SIGKILL takes over the dead worker's run at once, not after its lease", async () => {
  await using box = await Sandbox.create();
  // A lease this long would time the test out if the new worker waited for it.
  const env = { GATED: "s3", KVFLOW_LEASE_MS: "120000", KVFLOW_POLL_MS: "100" };
  const queued = await box.cli(["run", "five-steps", "--detach"], { entry: FIXTURE_CLI });
  assert.equal(queued.code, 0, queued.stderr);
  const id = queued.stdout.trim();

  const a = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await box.waitForLedger("s3 started by A", (l) => l.step === "s3" && l.pid === a.pid);
  a.kill("SIGKILL");
  await a.exit();
  const lease = (await box.withStore((store) => store.getLease(id))).value;
  assert.equal(lease?.pid, a.pid);

  await box.openGate("s3");
  const b = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await box.waitForRun(id, (run) => run.status === "succeeded");
  assert.ok(Date.now() < lease!.deadline - 60_000, "the new worker waited for the lease");
  const ledger = await box.ledger();
  assert.deepEqual(lines(ledger, "s3").map((l) => l.pid), [a.pid, b.pid]);
  assert.deepEqual(lines(ledger, "s2").map((l) => l.pid), [a.pid]);
  b.kill("SIGTERM");
  assert.equal((await b.exit()).code, 0);
});
