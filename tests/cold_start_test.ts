/**
 * What a process does before its first step, kept small: a new database carries its
 * schema version from its first run (so a restart has nothing to migrate), and a fresh
 * `worker` takes up the runs it finds due before it imports the rest of its registry,
 * whose pipelines it then knows as if it had been opened with them.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import { migrate, SCHEMA_VERSION } from "../lib/kv/migrations.ts";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { tempKv, waitFor } from "./_support/helpers.ts";
import { runIdOf, Sandbox } from "./_support/harness.ts";

const LAZY_CLI = "tests/fixtures/lazy_cli.ts";

const demo = pipeline("demo", { steps: [step("one", () => 1)] });

Deno.test("a new database is left as it is by an open, and gets its schema version with its first run", async () => {
  await using temp = await tempKv();
  {
    await using engine = await openEngine({ path: temp.path, pipelines: [demo] });
    assert.deepEqual(await Array.fromAsync(engine.kv.list({ prefix: [] })), []);
    await engine.store.createRun(demo);
    assert.equal((await engine.kv.get(keys.schema())).value, SCHEMA_VERSION);
  }
  // the next process (a restart) finds the database current: one read, nothing counted
  const kv = await Deno.openKv(temp.path);
  try {
    assert.deepEqual(await migrate(new Store(kv, { queues: false })), {
      from: SCHEMA_VERSION,
      to: SCHEMA_VERSION,
      counted: 0,
    });
  } finally {
    kv.close();
  }
});

Deno.test("register() adds pipelines to an open engine: their event triggers start runs; a name is one pipeline", async () => {
  const triggered = pipeline("triggered", {
    on: { "thing.happened": { params: () => ({}) } },
    steps: [step("one", () => 1)],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [demo] });
  assert.deepEqual((await engine.send("thing.happened")).started, []);
  engine.register([triggered, demo]);
  assert.deepEqual([...engine.pipelines.keys()], ["demo", "triggered"]);
  const sent = await engine.send("thing.happened");
  assert.deepEqual(sent.started.map((r) => r.pipeline), ["triggered"]);
  const impostor = pipeline("demo", { steps: [step("other", () => 2)] });
  assert.throws(() => engine.register([impostor]), /Two pipelines are named 'demo'/);
});

Deno.test("a fresh worker takes over a dead process's run before it imports the rest of its registry, then runs that registry's schedule", async () => {
  await using box = await Sandbox.create();
  const importNote = `${box.dir}/late-imported`;
  const env = { GATED: "s3", IMPORT_NOTE: importNote, KVFLOW_POLL_MS: "200" };
  const first = box.spawn(["run", "five-steps"], { entry: LAZY_CLI, env });
  await box.waitForLedger("s3 started", (l) => l.step === "s3");
  first.kill("SIGKILL");
  const id = runIdOf((await first.exit()).stdout);
  await assert.rejects(Deno.stat(importNote), Deno.errors.NotFound, "run imported every pipeline");

  await box.openGate("s3");
  const worker = box.spawn(["worker"], { entry: LAZY_CLI, env });
  await worker.waitForOutput(/worker \S+ started/, 20_000);
  const run = await box.run(id);
  assert.equal(run.status, "succeeded");
  assert.equal(run.takeovers, 1);
  const importedAt = Number(await Deno.readTextFile(importNote));
  assert.ok(
    run.endedAt! <= importedAt,
    `the run ended at ${run.endedAt}, after the registry was imported at ${importedAt}`,
  );
  // the pipeline imported afterwards is the worker's as much as the run's was
  await waitFor("a run of the late pipeline's schedule", async () => {
    const page = await box.withStore((store) => store.listRuns({ pipeline: "late" }));
    return page.runs.some((r) => r.status === "succeeded");
  }, 20_000);
  worker.kill("SIGTERM");
  assert.equal((await worker.exit()).code, 0);
});

Deno.test("SIGTERM to a worker still taking up the runs it found, before its registry is imported, stops it gracefully", async () => {
  await using box = await Sandbox.create();
  const importNote = `${box.dir}/late-imported`;
  const env = {
    GATED: "s3",
    IMPORT_NOTE: importNote,
    KVFLOW_POLL_MS: "200",
    KVFLOW_GRACE_MS: "300",
  };
  const first = box.spawn(["run", "five-steps"], { entry: LAZY_CLI, env });
  await box.waitForLedger("s3 started", (l) => l.step === "s3");
  first.kill("SIGKILL");
  const id = runIdOf((await first.exit()).stdout);

  // the gate stays shut: the worker's run stays at s3, so its registry waits
  const worker = box.spawn(["worker"], { entry: LAZY_CLI, env });
  await waitFor("the worker to take the run over", async () => {
    return (await box.ledger()).filter((l) => l.step === "s3").length === 2;
  }, 20_000);
  worker.kill("SIGTERM");
  const exited = await worker.exit();
  assert.equal(exited.code, 0, `exit ${exited.code}: ${exited.stderr}`);
  assert.match(exited.stderr, /stopping: finishing running steps/);
  assert.doesNotMatch(exited.stderr, /worker \S+ started/);
  await assert.rejects(Deno.stat(importNote), Deno.errors.NotFound, "imported after the stop");
  // let go, not lost: the next worker finishes it
  const run = await box.run(id);
  assert.notEqual(run.status, "succeeded");
  assert.equal((await box.withStore(({ kv }) => kv.get(keys.lease(id)))).value, null);
});
