/**
 * KV unavailable: a KV file kvflow may not write (a read-only mount, an immutable file, a
 * path through a regular file), a disk that fills up in the middle of a run, and a remote
 * KV that refuses connections. Each must end in one clear line on stderr and a non-zero
 * exit, never a stack trace or a retry loop, and must leave the stored runs as they were:
 * once there is room again, the run resumes from its checkpoints.
 *
 * Mounts are real tmpfs mounts (tests run as root); where mounting is not permitted (or
 * `KVFLOW_TEST_NO_MOUNT=1`), the disk-full test limits the file size with `prlimit`
 * instead, and the read-only cases fall back to what needs no privilege.
 *
 * @module
 */
import assert from "node:assert/strict";
import { lines, Proc, ROOT, runIdOf, Sandbox } from "./_support/harness.ts";
import { type AnyStep, KvUnavailableError, openEngine, pipeline, step } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { runAlerts } from "../lib/alerts/alert.ts";
import * as keys from "../lib/kv/keys.ts";
import { auditBlobs } from "./_support/helpers.ts";

/** A tmpfs mounted on a temp dir; unmounted and removed when disposed. */
interface Mount extends AsyncDisposable {
  dir: string;
  /** Remounts with other options, e.g. `ro` or `size=64m`. */
  remount(options: string): Promise<void>;
}

async function run(command: string, args: string[]): Promise<Deno.CommandOutput | null> {
  try {
    return await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/** Mounts a tmpfs with `options`, or returns null where mounting is not permitted. */
async function tmpfs(options: string): Promise<Mount | null> {
  if (Deno.env.get("KVFLOW_TEST_NO_MOUNT") === "1") return null;
  const dir = await Deno.makeTempDir({ prefix: "kvflow_mnt_" });
  const mounted = await run("mount", ["-t", "tmpfs", "-o", options, "tmpfs", dir]);
  if (!mounted?.success) {
    await Deno.remove(dir);
    return null;
  }
  return {
    dir,
    async remount(more: string) {
      const result = await run("mount", ["-o", `remount,${more}`, dir]);
      assert.ok(result?.success, `remount ${more}: ${new TextDecoder().decode(result?.stderr)}`);
    },
    async [Symbol.asyncDispose]() {
      const result = await run("umount", [dir]);
      if (!result?.success) await run("umount", ["-l", dir]);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Opens the KV file at `path` in this process for `fn`, then closes it. */
async function withStore<T>(path: string, fn: (store: Store) => Promise<T>): Promise<T> {
  const kv = await Deno.openKv(path);
  try {
    return await fn(new Store(kv, { queues: false }));
  } finally {
    kv.close();
  }
}

/** The non-empty lines of a process's stderr. */
function errLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.trim() !== "");
}

/** Asserts that a process said why in exactly one line, with no stack trace. */
function assertOneLine(exit: { code: number; stderr: string }, pattern: RegExp): string {
  const said = errLines(exit.stderr);
  assert.equal(said.length, 1, `expected one line on stderr, got:\n${exit.stderr}`);
  assert.match(said[0], pattern);
  assert.match(said[0], /^kvflow: /);
  assert.doesNotMatch(exit.stderr, /^\s+at |Uncaught|Stack backtrace/m);
  return said[0];
}

Deno.test("a KV path through a regular file: run, status and worker exit 1 at once with one line; openEngine throws KvUnavailableError", async () => {
  await using box = await Sandbox.create();
  const env = { KVFLOW_KV_PATH: `${box.ledgerPath}/kvflow.kv` };
  await Deno.writeTextFile(box.ledgerPath, "");
  for (const args of [["run", "tests/fixtures/five.ts"], ["status", "x"], ["worker"]]) {
    const t0 = Date.now();
    const exit = await box.cli(args, { env });
    assert.equal(exit.code, 1, `${args[0]}: ${exit.stderr}`);
    assertOneLine(
      exit,
      /Cannot open the KV database at ".*": part of ".*" is a file, not a directory/,
    );
    assert.ok(Date.now() - t0 < 30_000);
  }
  await assert.rejects(
    openEngine({ path: `${box.ledgerPath}/kvflow.kv`, pipelines: [] }),
    (error) => error instanceof KvUnavailableError && /not a directory/.test(error.message),
  );
  assert.equal(await Deno.readTextFile(box.ledgerPath), "", "nothing was written there");
});

Deno.test("a KV file on a mount made read-only: one clear line, exit 1, and the stored runs are intact once it is writable again", async (t) => {
  await using box = await Sandbox.create();
  await using disk = await tmpfs("size=16m");
  if (!disk) {
    await t.step({ name: "mounting a tmpfs is not permitted here", ignore: true, fn() {} });
    return;
  }
  const kvPath = `${disk.dir}/kvflow.kv`;
  const env = { KVFLOW_KV_PATH: kvPath };
  const first = await box.cli(["run", "tests/fixtures/five.ts"], { env });
  assert.equal(first.code, 0, first.stderr);
  const id = runIdOf(first.stdout);

  await disk.remount("ro");
  const t0 = Date.now();
  const refused = await box.cli(["run", "tests/fixtures/five.ts"], { env });
  assert.equal(refused.code, 1, refused.stdout + refused.stderr);
  assertOneLine(refused, /Cannot open the KV database at ".*": unable to open database file/);
  assert.equal(refused.stdout, "", "no run was announced");
  assert.ok(Date.now() - t0 < 30_000);
  await assert.rejects(
    openEngine({ path: kvPath, pipelines: [] }),
    (error) => error instanceof KvUnavailableError && error.problem === "cannot-open",
  );

  await disk.remount("rw");
  const runs = await withStore(kvPath, (store) => store.listRuns());
  assert.deepEqual(runs.runs.map((r) => [r.id, r.status]), [[id, "succeeded"]]);
});

Deno.test("an immutable KV file (chattr +i) opens but refuses writes: run exits 1 with one line naming it read-only, status still reads", async (t) => {
  await using box = await Sandbox.create();
  const env = { KVFLOW_KV_PATH: box.kvPath };
  const first = await box.cli(["run", "tests/fixtures/five.ts"], { env });
  assert.equal(first.code, 0, first.stderr);
  const id = runIdOf(first.stdout);
  if (!(await run("chattr", ["+i", box.kvPath]))?.success) {
    await t.step({ name: "chattr +i is not supported here", ignore: true, fn() {} });
    return;
  }
  try {
    const blocked = await box.cli(["run", "tests/fixtures/five.ts"], { env });
    assert.equal(blocked.code, 1, blocked.stdout + blocked.stderr);
    assertOneLine(blocked, /Cannot write to the KV database: it is read-only/);
    const status = await box.cli(["status", id], { env });
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /status +succeeded/);
  } finally {
    await run("chattr", ["-i", box.kvPath]);
  }
  const after = await withStore(box.kvPath, (store) => store.listRuns());
  assert.deepEqual(after.runs.map((r) => [r.id, r.status]), [[id, "succeeded"]]);
});

Deno.test("a disk that fills up mid-run: one line naming the full disk, exit 1, no retries; nothing half-written, and resume finishes once there is room", async () => {
  await using box = await Sandbox.create();
  await using disk = await tmpfs("size=2m");
  const kvPath = disk ? `${disk.dir}/kvflow.kv` : box.kvPath;
  const args = ["run", "tests/fixtures/bulky.ts", "--param", "kb=400"];
  const t0 = Date.now();
  let stopped: { code: number; signal: Deno.Signal | null; stdout: string; stderr: string };
  if (disk) {
    stopped = await box.cli(args, { env: { KVFLOW_KV_PATH: kvPath } });
  } else {
    // No mount: RLIMIT_FSIZE caps the file instead. The kernel then kills the writer with
    // SIGXFSZ, so there is no message to check, only what was left behind.
    const child = new Deno.Command("prlimit", {
      args: ["--fsize=2000000", Deno.execPath(), "run", "-A", "main.ts", ...args],
      cwd: ROOT,
      env: box.env(),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    stopped = await new Proc(child, args).exit();
  }
  const took = Date.now() - t0;
  const id = runIdOf(stopped.stdout);
  assert.notEqual(stopped.code, 0, stopped.stdout + stopped.stderr);
  assert.match(stopped.stdout, /✓ b2 /, "the disk filled up in the middle, after b2");
  if (disk) {
    assert.equal(stopped.code, 1);
    const line = assertOneLine(stopped, /disk is full/);
    assert.ok(line.includes(`deno task resume ${id}`), line);
    assert.ok(took < 30_000, `took ${took} ms: the full disk was retried`);
    await disk.remount("size=64m");
  }

  // The file opens, and the run is exactly as its last commit left it.
  const left = await withStore(kvPath, async (store) => {
    const run = await store.requireRun(id);
    const steps = await store.getSteps(id);
    const outputs = new Map<string, unknown>();
    for (const [name, record] of steps) {
      if (record.status === "succeeded") outputs.set(name, await store.getOutput(id, name));
    }
    return {
      run,
      steps,
      outputs,
      attempts: await store.getAttempts(id),
      alerts: await runAlerts(store.kv, id),
      blobs: await blobIds(store.kv, id),
      audit: await auditBlobs(store.kv),
    };
  });
  assert.equal(left.run.status, "running", "not failed: the run is resumable");
  assert.equal(left.run.failures, 0);
  assert.deepEqual(left.alerts, []);
  const order = ["b1", "b2", "b3", "b4", "b5", "b6"];
  const statuses = order.map((name) => left.steps.get(name)?.status ?? "pending");
  const done = statuses.filter((s) => s === "succeeded").length;
  assert.ok(done >= 2 && done < 6, statuses.join());
  // checkpointed steps first, then at most the one that was being stored, then pending
  assert.match(statuses.join(","), /^(succeeded,)+(running,)?(pending,?)*$/);
  for (const name of order.slice(0, done)) {
    const output = left.outputs.get(name) as { step: string; text: string };
    assert.equal(output.step, name);
    assert.ok(output.text.length >= 400 * 1024, `${name}'s output is whole`);
  }
  assert.deepEqual(
    left.attempts.map((a) => `${a.step}:${a.status}`),
    order.slice(0, done).map((name) => `${name}:succeeded`),
    "the full disk was not recorded as a failed attempt",
  );
  const referenced = [...left.steps.values()].flatMap((r) =>
    r.output && "blob" in r.output ? [r.output.blob.id] : []
  );
  for (const blob of referenced) assert.ok(left.blobs.has(blob));
  // At most the one blob being stored when the disk filled is left unreferenced: a
  // failed commit writes nothing, and earlier chunks of that blob are dropped if the disk
  // lets them be. If not, its pending marker is left for the next claim to reclaim it.
  const unreferenced = [...left.blobs].filter((blob) => !referenced.includes(blob));
  assert.ok(unreferenced.length <= 1, `unreferenced blobs: ${unreferenced.join()}`);
  for (const blob of left.audit.unreferenced) assert.ok(left.audit.pending.includes(blob));

  const env = { KVFLOW_KV_PATH: kvPath };
  const resumed = await box.cli(["resume", id], { env });
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  assert.match(resumed.stdout, new RegExp(`✓ run ${id} succeeded`));
  const ledger = await box.ledger();
  for (const name of order.slice(0, done)) {
    assert.equal(lines(ledger, name).length, 1, `${name} ran again after its checkpoint`);
  }
  const finished = await withStore(kvPath, async (store) => {
    const outputs = [];
    for (const name of order) outputs.push(await store.getOutput(id, name));
    return { run: await store.requireRun(id), outputs, blobs: await auditBlobs(store.kv) };
  });
  assert.equal(finished.run.status, "succeeded");
  assert.deepEqual(
    (finished.outputs as { step: string }[]).map((o) => o.step),
    order,
  );
  // The blob cut short by the full disk was reclaimed when the resumed run was claimed.
  assert.deepEqual(finished.blobs.unreferenced, [], "no chunks left that nothing refers to");
  assert.deepEqual(finished.blobs.pending, []);
  assert.deepEqual(finished.blobs.missing, []);
  assert.equal(finished.blobs.stored.size, order.length);
});

Deno.test("openEngine on a disk that fills up: runToEnd rejects with KvUnavailableError at the first refused commit, checkpoints kept", async (t) => {
  await using disk = await tmpfs("size=1m");
  if (!disk) {
    await t.step({ name: "mounting a tmpfs is not permitted here", ignore: true, fn() {} });
    return;
  }
  let bodies = 0;
  const steps: AnyStep[] = [];
  for (const name of ["f1", "f2", "f3", "f4", "f5", "f6"]) {
    const after = steps.at(-1);
    steps.push(step(name, { needs: after ? { after } : {} }, () => {
      bodies++;
      let text = "";
      while (text.length < 400_000) text += crypto.randomUUID();
      return text;
    }));
  }
  const p = pipeline("filling", { steps });
  const path = `${disk.dir}/kvflow.kv`;
  const engine = await openEngine({ path, pipelines: [p], queues: false, onAlert: () => {} });
  let stored: string[];
  try {
    const created = await engine.store.createRun(p);
    const t0 = Date.now();
    await assert.rejects(
      engine.runToEnd(created.id),
      (error) => error instanceof KvUnavailableError && error.problem === "full",
    );
    assert.ok(Date.now() - t0 < 20_000);
    await disk.remount("size=64m");
    const steps = await engine.store.getSteps(created.id);
    stored = [...steps].filter(([, r]) => r.status === "succeeded").map(([name]) => name);
    for (const name of stored) {
      assert.equal(
        (await engine.store.getOutput(created.id, name) as string).length >= 400_000,
        true,
      );
    }
    assert.equal((await engine.store.requireRun(created.id)).status, "running");
  } finally {
    await engine.close();
  }
  assert.ok(stored.length >= 1 && stored.length < 6, stored.join());
  // each checkpointed body once, and the one whose output did not fit: no retry
  assert.equal(bodies, stored.length + 1);
});

Deno.test("a remote KV that refuses connections: run and worker exit 1 within seconds with one line; openEngine throws KvUnavailableError", async () => {
  await using box = await Sandbox.create();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${listener.addr.port}/`;
  listener.close();
  const env = { KVFLOW_KV_PATH: url, DENO_KV_ACCESS_TOKEN: "kvflow-test-token" };
  for (const args of [["run", "tests/fixtures/five.ts"], ["worker"]]) {
    const t0 = Date.now();
    const exit = await box.cli(args, { env });
    assert.equal(exit.code, 1, `${args[0]}: ${exit.stdout}${exit.stderr}`);
    assertOneLine(exit, /Cannot open the KV database at "http:\/\/127\.0\.0\.1:\d+\/": .*refused/i);
    assert.ok(Date.now() - t0 < 20_000, `${args[0]} took ${Date.now() - t0} ms`);
  }
  const before = Deno.env.get("DENO_KV_ACCESS_TOKEN");
  Deno.env.set("DENO_KV_ACCESS_TOKEN", "kvflow-test-token");
  try {
    await assert.rejects(
      openEngine({ path: url, pipelines: [] }),
      (error) => error instanceof KvUnavailableError && error.problem === "unreachable",
    );
  } finally {
    if (before === undefined) Deno.env.delete("DENO_KV_ACCESS_TOKEN");
    else Deno.env.set("DENO_KV_ACCESS_TOKEN", before);
  }
});

/** The ids of the blobs stored for a run, whether or not anything refers to them. */
async function blobIds(kv: Deno.Kv, runId: string): Promise<Set<string>> {
  const ids = new Set<string>();
  for await (const e of kv.list({ prefix: keys.blobPrefix(runId, "").slice(0, 3) })) {
    ids.add(e.key[3] as string);
  }
  return ids;
}
