/**
 * Wake-ups across processes: a worker process hears another process's commits to the
 * same KV file through its watch of the file, not only at its next sweep; and a file
 * written to without pause does not make an idle worker spin. Timing here only tells
 * "at once" from "at the next sweep a minute later"; the figures are in `bench/`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FIXTURE_CLI, type Proc, Sandbox } from "./_support/harness.ts";
import { delay } from "./_support/helpers.ts";
import five from "./fixtures/five.ts";
import { openEngine } from "../lib/mod.ts";

const STARTED = /worker \S+ started/;

/**
 * Starts a worker process that sweeps only once a minute, and lets its first sweep pass:
 * a run created before it started has ended, so that sweep read the due-index and is over
 * (a fixed pause was not enough on a slow machine: the first sweep found the next run).
 */
async function slowSweepingWorker(box: Sandbox, watch: "on" | "off"): Promise<Proc> {
  const canary = await createFive(box);
  const worker = box.spawn(["worker"], {
    entry: FIXTURE_CLI,
    env: { KVFLOW_POLL_MS: "60000", KVFLOW_WATCH: watch },
  });
  await worker.waitForOutput(STARTED, 30_000);
  await box.waitForRun(canary, (r) => r.status === "succeeded", 10_000);
  await delay(300);
  return worker;
}

/** Creates a run of `five` from this process, as another process's command would. */
async function createFive(box: Sandbox): Promise<string> {
  return await box.withStore(async (store) => (await store.createRun(five)).id);
}

Deno.test({
  name:
    "a worker that sweeps once a minute starts a run another process created, through its watch of the KV file",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    await using box = await Sandbox.create();
    await slowSweepingWorker(box, "on");
    const runId = await createFive(box);
    const run = await box.waitForRun(runId, (r) => r.status === "succeeded", 5_000);
    assert.equal(run.status, "succeeded");
  },
});

Deno.test({
  name: "with KVFLOW_WATCH=off the same worker leaves that run to its next sweep, a minute later",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    await using box = await Sandbox.create();
    await slowSweepingWorker(box, "off");
    // the worker's cron heartbeat sweeps at each minute of the clock: the three seconds
    // looked at must not hold one
    const toMinute = 60_000 - (Date.now() % 60_000);
    if (toMinute < 4_000) await delay(toMinute + 500);
    const runId = await createFive(box);
    await delay(3_000);
    assert.equal((await box.run(runId)).status, "queued");
  },
});

Deno.test({
  name:
    "a full worker, once a run of its ends, starts at once a run another process created while it was full",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    await using box = await Sandbox.create();
    // room for one run, held at gate s3; a sweep only once a minute
    const worker = box.spawn(["worker"], {
      entry: FIXTURE_CLI,
      env: { KVFLOW_POLL_MS: "60000", KVFLOW_MAX_RUNS: "1", GATED: "s3" },
    });
    await worker.waitForOutput(STARTED, 30_000);
    await delay(300);
    const first = await createFive(box);
    await box.waitForLedger("s3 of the first run", (l) => l.step === "s3" && l.event === "start");
    const second = await createFive(box);
    await delay(500);
    assert.equal((await box.run(second)).status, "queued", "a full worker took a second run");
    await box.openGate("s3");
    await box.waitForRun(first, (r) => r.status === "succeeded", 5_000);
    // when the first run leaves, the worker looks at once (its watch was paused while it
    // was full, and the sweep is a minute away)
    const run = await box.waitForRun(second, (r) => r.status === "succeeded", 5_000);
    assert.equal(run.status, "succeeded");
  },
});

/** CPU time (user + system, ms) of a process so far, from /proc. */
async function cpuMs(pid: number): Promise<number> {
  const stat = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1].split(" ");
  // fields 14 and 15 (utime, stime), counted from the state field (3); 100 ticks a second
  return (Number(stat[11]) + Number(stat[12])) * 10;
}

Deno.test({
  name:
    "an idle worker watching a KV file that another process commits to without pause does not spin",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    await using box = await Sandbox.create();
    const worker = box.spawn(["worker"], { entry: FIXTURE_CLI });
    await worker.waitForOutput(STARTED, 30_000);
    await delay(500);
    const kv = await Deno.openKv(box.kvPath);
    try {
      const before = await cpuMs(worker.child.pid);
      const began = Date.now();
      let commits = 0;
      while (Date.now() - began < 3_000) {
        await kv.set(["elsewhere", commits++], commits);
      }
      const wallMs = Date.now() - began;
      const spent = (await cpuMs(worker.child.pid)) - before;
      assert.ok(commits > 500, `only ${commits} commits: the file was not busy`);
      assert.ok(
        spent < 0.3 * wallMs,
        `the idle worker spent ${spent} ms of CPU in ${wallMs} ms beside ${commits} commits`,
      );
    } finally {
      kv.close();
    }
  },
});

Deno.test("an engine watching its KV file stops at close, its watch closed with it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kvflow_wake_" });
  try {
    const engine = await openEngine({ path: `${dir}/kvflow.kv`, pipelines: [five] });
    engine.start();
    // writes heard by the watch, so that it is looking when the close comes
    for (let i = 0; i < 5; i++) await engine.store.createRun(five, { params: {} });
    await delay(3);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const closed = await Promise.race([
      engine.close(0).then(() => true),
      new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), 10_000)),
    ]);
    clearTimeout(timer);
    assert.ok(closed, "close() did not return within 10 s");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
