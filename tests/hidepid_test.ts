/**
 * Two real worker processes of two users on one host whose `/proc` is mounted with
 * `hidepid=2` (as systemd's `ProtectProc=invisible` does): each user sees only its own
 * processes, so worker B finds no `/proc/<pid>` for worker A. B must not take that for
 * "A's process is gone" and take over the run A is driving; it waits for A's lease as for
 * any other host's worker, and the step body runs once.
 *
 * Needs root on Linux with `unshare`, `mount` and `setpriv`: each worker runs in a
 * private mount namespace (`unshare -m --propagation private`) with its own proc mounted
 * `hidepid=2`, which goes away with the process; nothing is mounted on the host's `/proc`.
 * Elsewhere the test is skipped, with the reason printed.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FIXTURE_CLI, lines, Proc, ROOT, Sandbox } from "./_support/harness.ts";

/** Worker A's user (nobody) and worker B's, two users who cannot see each other's pids. */
const UID_A = 65534;
const UID_B = 65533;
const LEASE_MS = 4000;
const ENV = { KVFLOW_LEASE_MS: String(LEASE_MS), KVFLOW_POLL_MS: "100" };
/** Runs the rest of its arguments as user $1, in a private mount namespace with /proc hidepid=2. */
const AS_USER_HIDEPID =
  'uid="$1"; shift; mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid="$uid" --regid="$uid" --clear-groups "$@"';

/** Spawns `unshare … sh -c AS_USER_HIDEPID sh <uid> <command…>`; the pid stays the command's. */
function asUser(uid: number, command: string[], options: Deno.CommandOptions = {}) {
  return new Deno.Command("unshare", {
    args: [
      "-m",
      "--propagation",
      "private",
      "sh",
      "-c",
      AS_USER_HIDEPID,
      "sh",
      String(uid),
      ...command,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    ...options,
  });
}

/** Where the workers run the project from: the checkout, or a copy both users can read. */
let PROJECT = ROOT;

/** Whether both users can read the fixture CLI under `project` and run Deno. */
async function reachable(project: string): Promise<boolean> {
  for (const uid of [UID_A, UID_B]) {
    const cli = `${project}${FIXTURE_CLI}`;
    const reach = await asUser(uid, ["test", "-r", cli, "-a", "-x", Deno.execPath()]).output();
    if (!reach.success) return false;
  }
  return true;
}

/** Why this machine cannot run the scenario, or undefined when it can. */
async function unsupported(): Promise<string | undefined> {
  if (Deno.build.os !== "linux") return "needs Linux";
  if (Deno.uid() !== 0) return "needs root (to mount a private /proc and switch users)";
  try {
    // The whole setup at once: a private /proc with hidepid=2, and a user to whom this
    // (root's) process is invisible while its own is there.
    const probe = await asUser(UID_B, [
      "sh",
      "-c",
      `test -e /proc/self && ! test -e /proc/${Deno.pid}`,
    ]).output();
    if (!probe.success) {
      return `unshare/mount -t proc -o hidepid=2/setpriv failed (exit ${probe.code}): ${
        new TextDecoder().decode(probe.stderr).trim() || "a hidden pid is still visible"
      }`;
    }
    // Both users must reach the project and Deno. A checkout under /root is closed to
    // them: they get a copy of the project's code, open to all.
    if (!await reachable(ROOT)) {
      PROJECT = await Deno.makeTempDir({ prefix: "kvflow-hidepid-project-" });
      await Deno.chmod(PROJECT, 0o755);
      for (const part of ["deno.json", "deno.lock", "main.ts", "lib", "pipelines", "tests"]) {
        const copy = await new Deno.Command("cp", { args: ["-a", `${ROOT}${part}`, PROJECT] })
          .output();
        if (!copy.success) return `cannot copy ${ROOT}${part} to ${PROJECT}`;
      }
      PROJECT += "/";
      if (!await reachable(PROJECT)) return `the users cannot reach a copy in ${PROJECT}`;
    }
  } catch (error) {
    return `cannot run unshare: ${error instanceof Error ? error.message : error}`;
  }
}

const SKIP = await unsupported();
if (SKIP) console.warn(`hidepid_test: skipped: ${SKIP}`);

/** A copy of this process's npm cache for `uid`, which cannot read root's DENO_DIR. */
async function denoDirFor(box: Sandbox, uid: number): Promise<string> {
  const info = await new Deno.Command(Deno.execPath(), { args: ["info", "--json"] }).output();
  const { npmCache } = JSON.parse(new TextDecoder().decode(info.stdout)) as { npmCache: string };
  const dir = `${box.dir}/deno-${uid}`;
  await Deno.mkdir(dir, { mode: 0o777 });
  await Deno.chmod(dir, 0o777);
  // Hard links where possible: the files stay root's and read-only to `uid`.
  for (const flags of ["-al", "-a"]) {
    const copy = await new Deno.Command("cp", { args: [flags, npmCache, `${dir}/npm`] }).output();
    if (copy.success) return dir;
    await Deno.remove(`${dir}/npm`, { recursive: true }).catch(() => {});
  }
  throw new Error(`cannot copy ${npmCache} for uid ${uid}`);
}

/** Starts a `worker` of the fixture CLI as `uid`, under a hidepid /proc. */
async function workerAs(
  box: Sandbox,
  uid: number,
  env: Record<string, string>,
  started: Set<Proc>,
): Promise<Proc> {
  const denoDir = await denoDirFor(box, uid);
  const args = [Deno.execPath(), "run", "-A", FIXTURE_CLI, "worker"];
  const child = asUser(uid, args, {
    cwd: PROJECT,
    env: box.env({ ...env, HOME: box.dir, DENO_DIR: denoDir }),
  }).spawn();
  const proc = new Proc(child, [`uid ${uid}:`, ...args]);
  started.add(proc);
  return proc;
}

/** Whether `pid` is invisible to `uid` under a hidepid /proc (the premise of the test). */
async function hiddenFrom(uid: number, pid: number): Promise<boolean> {
  const probe = await asUser(uid, ["sh", "-c", `test -e /proc/self && ! test -e /proc/${pid}`])
    .output();
  return probe.success;
}

/** The mounts of this process's /proc: the test must leave them as they were. */
async function procMounts(): Promise<string[]> {
  return (await Deno.readTextFile("/proc/self/mountinfo")).split("\n")
    .filter((l) => l.split(" ")[4] === "/proc");
}

Deno.test({
  name:
    "hidepid: a worker of another user, to whom the holder's pid is invisible, does not take over the live holder's run; the step runs once",
  ignore: SKIP !== undefined,
  async fn() {
    const mountsBefore = await procMounts();
    await using box = await Sandbox.create();
    const started = new Set<Proc>();
    // One budget for every wait: the test fails within 25 s, however it goes wrong.
    const deadline = Date.now() + 25_000;
    const left = () => Math.max(1, deadline - Date.now());
    try {
      // Both users read and write the KV file, the ledger and the gates.
      await Deno.chmod(box.dir, 0o777);
      await Deno.chmod(box.gateDir, 0o777);
      await Deno.writeTextFile(box.ledgerPath, "");
      await Deno.chmod(box.ledgerPath, 0o666);
      const queued = await box.cli(["run", "fenced", "--detach"], { entry: FIXTURE_CLI });
      assert.equal(queued.code, 0, queued.stderr);
      const id = queued.stdout.trim();
      // SQLite gives its -wal and -shm files the mode of the database file.
      for await (const entry of Deno.readDir(box.dir)) {
        if (entry.name.startsWith("kvflow.kv")) await Deno.chmod(`${box.dir}/${entry.name}`, 0o666);
      }

      // A (one run at most) takes the run and waits inside step `work` at its gate.
      const a = await workerAs(
        box,
        UID_A,
        { ...ENV, GATED: "work", KVFLOW_MAX_RUNS: "1" },
        started,
      );
      const inA = await box.waitForLedger(
        "A in step work",
        (l) => l.step === "work" && l.event === "start",
        left(),
      );
      assert.equal(inA.pid, a.pid, `work started in A (${a.pid}), ${a.stderr}`);
      const leaseA = (await box.withStore((store) => store.getLease(id))).value;
      assert.equal(leaseA?.pid, a.pid, "A holds the run's lease");
      assert.ok(await hiddenFrom(UID_B, a.pid), `A's pid ${a.pid} is visible to uid ${UID_B}`);

      // B starts while A is alive and mid-step; B's first sweeps look for dead local holders.
      const b = await workerAs(box, UID_B, ENV, started);
      await b.waitForOutput(/kvflow: worker \S+ started/, left());
      const bStarted = Date.now();
      // B is really sweeping and working: it is given a run that A has no room for.
      const other = await box.cli(["run", "five-steps", "--detach"], { entry: FIXTURE_CLI });
      assert.equal(other.code, 0, other.stderr);
      const otherId = other.stdout.trim();
      // B sweeps (every 100 ms) for a whole lease length of A's, which A keeps renewing.
      const until = bStarted + LEASE_MS + 500;
      while (Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.deepEqual(
        lines(await box.ledger(), "work").map((l) => l.pid),
        [a.pid],
        `B started step work while A was alive and in it; B: ${b.stderr}`,
      );
      const leaseLater = (await box.withStore((store) => store.getLease(id))).value;
      assert.equal(leaseLater?.owner, leaseA!.owner, "the run's lease changed hands");
      assert.ok(leaseLater!.deadline > leaseA!.deadline, "A renewed its lease");
      assert.equal((await box.run(id)).takeovers, 0);
      await box.waitForRun(otherId, (run) => run.status === "succeeded", left());
      assert.deepEqual(lines(await box.ledger(), "s1").map((l) => l.pid), [b.pid]);

      // A finishes the run; the body of `work` started once, in A, and is recorded once.
      await box.openGate("work");
      const done = await box.waitForRun(id, (run) => run.status === "succeeded", left());
      assert.equal(done.takeovers, 0);
      const ledger = await box.ledger();
      assert.deepEqual(lines(ledger, "work").map((l) => l.pid), [a.pid]);
      assert.deepEqual(lines(ledger, "work", "done").map((l) => l.pid), [a.pid]);
      const attempts = await box.withStore((store) => store.getAttempts(id));
      assert.deepEqual(
        attempts.filter((x) => x.step === "work").map((x) => `${x.n}:${x.status}`),
        ["1:succeeded"],
      );
      const work = await box.withStore((store) => store.getOutput(id, "work")) as { pid: number };
      assert.equal(work.pid, a.pid);

      a.kill("SIGTERM");
      b.kill("SIGTERM");
      const [exitA, exitB] = await Promise.all([a.exit(), b.exit()]);
      assert.equal(exitA.code, 0, `A: ${exitA.stderr}`);
      assert.equal(exitB.code, 0, `B: ${exitB.stderr}`);
      for (const [name, exit] of [["A", exitA], ["B", exitB]] as const) {
        assert.doesNotMatch(
          exit.stderr,
          /lost its lease|error|^\s+at /im,
          `${name}: ${exit.stderr}`,
        );
      }
    } finally {
      for (const proc of started) {
        proc.kill("SIGKILL");
        await proc.exit();
      }
      if (PROJECT !== ROOT) await Deno.remove(PROJECT, { recursive: true });
    }
    // Each private /proc went with its namespace; this process's /proc is as it was.
    assert.deepEqual(await procMounts(), mountsBefore);
  },
});
