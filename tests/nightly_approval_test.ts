/**
 * The nightly pipeline's approval gate through the real CLI, in real processes on a fresh
 * directory: `run nightly --param approval=required` parks before `update-accounting`,
 * `status` shows what it waits for, and `send nightly.approved` (or `nightly.rejected`)
 * from another process lets it finish (or fails `update-accounting` with the reason).
 *
 * @module
 */
import assert from "node:assert/strict";
import { type Exit, poll, runIdOf } from "./_support/harness.ts";
import { filesIn, ledgerRows, spawnFresh } from "./_support/nightly.ts";

const DATE = "2026-11-01";

/** Runs the CLI in `dir` to its end. */
async function cli(dir: string, args: string[]): Promise<Exit> {
  return await spawnFresh(dir, args).exit();
}

/** A fresh directory for one test, removed afterwards. */
async function freshDir(): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ prefix: "kvflow_approval_" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

Deno.test("nightly with approval=required waits before update-accounting; nightly.approved from another process lets it finish", async () => {
  await using dir = await freshDir();
  const run = spawnFresh(dir.path, [
    "run",
    "nightly",
    "--date",
    DATE,
    "--param",
    "approval=required",
  ]);
  try {
    await run.waitForOutput(/… parked: /, 60_000);
    const id = runIdOf(run.stdout);
    assert.match(
      run.stdout,
      /⏸ approval {17}waiting for event nightly\.approved or nightly\.rejected with date = 2026-11-01 until /,
    );
    assert.match(
      run.stdout,
      /to let it go on: deno task send nightly\.approved --data '\{"date":"2026-11-01"\}'/,
    );
    // the reports and mails went out; the journal entries wait
    assert.match(run.stdout, /✓ email +attempt 1/);
    assert.doesNotMatch(run.stdout, /update-accounting/);
    assert.deepEqual(ledgerRows(`${dir.path}/data/store.db`), []);

    const status = await cli(dir.path, ["status", id]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(
      status.stdout,
      /status {5}waiting: approval waiting for event nightly\.approved or nightly\.rejected with date = 2026-11-01 until /,
    );
    assert.match(status.stdout, /⏸ approval {17}waiting /);
    assert.match(status.stdout, /· update-accounting {8}pending/);

    const sent = await cli(dir.path, ["send", "nightly.approved", "--data", `{"date":"${DATE}"}`]);
    assert.equal(sent.code, 0, sent.stderr);
    assert.match(sent.stdout, new RegExp(`woke {5}run ${id}, step approval`));
    const end = await run.exit();
    assert.equal(end.code, 0, end.stdout + end.stderr);
    assert.match(end.stdout, /✓ approval +attempt 1/);
    assert.match(end.stdout, /✓ update-accounting +attempt 1 .* items/);
    assert.match(end.stdout, new RegExp(`✓ run ${id} succeeded in `));
    assert.ok(ledgerRows(`${dir.path}/data/store.db`).length > 0, "no journal entries");
    assert.equal((await filesIn(`${dir.path}/out/outbox/${DATE}`)).size, 4);
  } finally {
    run.kill("SIGKILL");
    await run.exit();
  }
});

Deno.test("nightly.rejected fails update-accounting with the rejection's reason and posts nothing", async () => {
  await using dir = await freshDir();
  const run = spawnFresh(dir.path, [
    "run",
    "nightly",
    "--date",
    DATE,
    "--param",
    "approval=required",
  ]);
  try {
    await run.waitForOutput(/… parked: /, 60_000);
    const id = runIdOf(run.stdout);
    const sent = await cli(dir.path, [
      "send",
      "nightly.rejected",
      "--data",
      JSON.stringify({ date: DATE, reason: "the totals look wrong" }),
    ]);
    assert.equal(sent.code, 0, sent.stderr);
    const end = await run.exit();
    assert.equal(end.code, 1, end.stdout + end.stderr);
    assert.match(
      end.stdout,
      new RegExp(
        `✗ run ${id} failed after .*: step 'update-accounting': Rejected by finance: the totals look wrong`,
      ),
    );
    assert.deepEqual(ledgerRows(`${dir.path}/data/store.db`), [], "a rejected night was posted");
    const status = JSON.parse((await cli(dir.path, ["status", id, "--json"])).stdout);
    const step = status.steps.find((s: { name: string }) => s.name === "update-accounting");
    assert.equal(step.status, "failed");
    assert.equal(step.error.name, "NonRetryableError");
    assert.equal(step.error.message, "Rejected by finance: the totals look wrong");
    assert.equal(
      status.steps.find((s: { name: string }) => s.name === "approval").status,
      "succeeded",
    );
  } finally {
    run.kill("SIGKILL");
    await run.exit();
  }
});

Deno.test("an approval sent before the wait starts is taken when it starts", async () => {
  await using dir = await freshDir();
  const detached = await cli(dir.path, [
    "run",
    "nightly",
    "--date",
    DATE,
    "--param",
    "approval=required",
    "--detach",
  ]);
  assert.equal(detached.code, 0, detached.stderr);
  const id = detached.stdout.trim();
  const sent = await cli(dir.path, ["send", "nightly.approved", "--data", `{"date":"${DATE}"}`]);
  assert.match(sent.stdout, /no run waits for it now/);
  const worker = spawnFresh(dir.path, ["worker"]);
  try {
    await poll("the run to succeed", 60_000, async () => {
      const status = await cli(dir.path, ["status", id, "--json"]);
      return JSON.parse(status.stdout).status === "succeeded" ? true : undefined;
    });
    assert.ok(ledgerRows(`${dir.path}/data/store.db`).length > 0, "no journal entries");
  } finally {
    worker.kill("SIGTERM");
    await worker.exit();
  }
});
