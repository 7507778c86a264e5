/**
 * Fencing (DESIGN.md §3.3) with real processes: worker A is stopped with SIGSTOP in the
 * middle of a step, worker B takes the run over once A's lease deadline passed and
 * finishes it, then A is woken with SIGCONT. Everything A's stale attempt tries to write
 * afterwards — the chunks of a large output, an artifact, log lines, the checkpoint —
 * must be rejected: the KV file is unchanged, byte for byte, by A's waking.
 *
 * The fixture pipeline (`tests/fixtures/fenced.ts`) puts its writer's pid in every value
 * it stores, so a late write of A would be seen by name.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  FIXTURE_CLI,
  type LedgerLine,
  lines,
  poll,
  type Proc,
  Sandbox,
} from "./_support/harness.ts";
import type { AttemptRecord } from "../lib/mod.ts";
import type { Lease } from "../lib/model/records.ts";
import { auditBlobs } from "./_support/helpers.ts";

const ENV = { KVFLOW_LEASE_MS: "1000", KVFLOW_POLL_MS: "100" };

/** What a fencing scenario left behind, for the assertions of each test. */
interface Scenario {
  box: Sandbox;
  id: string;
  a: Proc;
  b: Proc;
  /** A's lease when it was stopped. */
  lease: Lease;
  /** The ledger line of B's first attempt at the gated task. */
  takeover: LedgerLine;
}

/**
 * Queues a `fenced` run, lets worker A run it to the gate `gate` (the task `task` of the
 * ledger), stops A, lets B take over and finish, then wakes A and waits until A's stale
 * attempt got past the gate and A dropped the run. Asserts that waking A changed nothing
 * in KV.
 */
async function stopTakeOverWake(
  box: Sandbox,
  gate: string,
  task: (line: LedgerLine) => boolean,
  beforeStop: (id: string) => Promise<void> = async () => {},
): Promise<Scenario> {
  const env = { ...ENV, GATED: gate };
  const queued = await box.cli(["run", "fenced", "--detach"], { entry: FIXTURE_CLI });
  assert.equal(queued.code, 0, queued.stderr);
  const id = queued.stdout.trim();

  const a = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await box.waitForLedger("A at the gate", (l) => task(l) && l.pid === a.pid, 30_000);
  await beforeStop(id);
  a.kill("SIGSTOP");
  const lease = (await box.withStore((store) => store.getLease(id))).value;
  assert.equal(lease?.pid, a.pid, "A holds the run when it is stopped");

  const b = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  const takeover = await box.waitForLedger(
    "B's attempt at the gated task",
    (l) => task(l) && l.pid === b.pid,
    30_000,
  );
  await box.openGate(gate);
  await box.waitForRun(id, (run) => run.status === "succeeded", 30_000);
  const before = await box.snapshot();

  a.kill("SIGCONT");
  await box.waitForLedger(
    "A's stale attempt past the gate",
    (l) => task({ ...l, event: "start" }) && l.event === "done" && l.pid === a.pid,
    30_000,
  );
  await a.waitForOutput(new RegExp(`run ${id}: lost its lease`), 30_000);
  // Time for whatever A's attempt does after the gate: an artifact, logs, a return.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.deepEqual(await box.snapshot(), before, "waking the stopped worker changed KV");
  // Every chunk in KV belongs to a blob that an output or artifact refers to.
  const blobs = await box.withStore(({ kv }) => auditBlobs(kv));
  assert.deepEqual(blobs.unreferenced, []);
  assert.deepEqual(blobs.pending, []);
  assert.deepEqual(blobs.missing, []);
  return { box, id, a, b, lease, takeover };
}

/** Every stored value as text (bytes as Latin-1), to search for a writer's traces. */
async function storedText(box: Sandbox): Promise<string> {
  return await box.withStore(async ({ kv }) => {
    const parts: string[] = [];
    const latin1 = new TextDecoder("latin1");
    for await (const e of kv.list({ prefix: [] })) {
      parts.push(
        e.value instanceof Uint8Array ? latin1.decode(e.value) : JSON.stringify(
          e.value,
          (_k, v) => typeof v === "bigint" ? v.toString() : v,
        ),
      );
    }
    return parts.join("\n");
  });
}

/** Stops both workers with SIGTERM and checks that both exit cleanly. */
async function stopWorkers(a: Proc, b: Proc): Promise<void> {
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  const [exitA, exitB] = await Promise.all([a.exit(), b.exit()]);
  assert.equal(exitA.code, 0, `A: ${exitA.stderr}`);
  assert.equal(exitB.code, 0, `B: ${exitB.stderr}`);
  assert.doesNotMatch(exitA.stderr, /error: Uncaught|^\s+at /m, "A crashed");
}

Deno.test("fencing: a worker stopped mid-step and woken after a takeover gets no chunk, artifact, log line or checkpoint into KV", async () => {
  await using box = await Sandbox.create();
  const { id, a, b, lease, takeover } = await stopTakeOverWake(
    box,
    "work",
    (l) => l.step === "work" && l.event === "start",
  );
  // A is alive, only stopped: B had to wait for the lease deadline, not the dead-holder check.
  assert.ok(takeover.at >= lease.deadline, `B took over ${lease.deadline - takeover.at} ms early`);
  assert.equal(takeover.attempt, 2);
  assert.equal(takeover.key, `${id}:work`);

  // Both attempts really ran to their end: A's result was made, and rejected.
  const ledger = await box.ledger();
  assert.deepEqual(lines(ledger, "work", "done").map((l) => l.pid).sort(), [a.pid, b.pid].sort());
  assert.deepEqual(lines(ledger, "prep").map((l) => l.pid), [a.pid], "prep ran once, in A");
  for (const item of [0, 1, 2]) {
    assert.deepEqual(lines(ledger, "spread", "start", item).map((l) => l.pid), [b.pid]);
  }

  const status = await box.status(id, { entry: FIXTURE_CLI });
  assert.equal(status.status, "succeeded");
  assert.equal(status.takeovers, 1);
  assert.deepEqual(
    status.attempts.filter((x) => x.step === "work").map((x) => `${x.n}:${x.status}`),
    ["1:crashed", "2:succeeded"],
  );
  const { work, finish, artifacts, attempts, leaseAfter } = await box.withStore(
    async (store) => ({
      work: await store.getOutput(id, "work") as Record<string, unknown>,
      finish: await store.getOutput(id, "finish"),
      artifacts: await store.getArtifacts(id),
      attempts: await store.getAttempts(id),
      leaseAfter: (await store.getLease(id)).value,
    }),
  );
  assert.equal(work.pid, b.pid);
  assert.equal(work.attempt, 2);
  assert.ok((work.big as string).startsWith(`${b.pid};`));
  assert.deepEqual(finish, { work: b.pid, items: [b.pid, b.pid, b.pid], by: b.pid });
  assert.deepEqual(artifacts.map((x) => x.name), [`report-${b.pid}.txt`]);
  assert.equal(
    new TextDecoder().decode(
      await box.withStore(async (s) => {
        return (await s.readArtifact(id, `report-${b.pid}.txt`)).bytes;
      }),
    ),
    `written by ${b.pid}`,
  );
  assert.deepEqual(logsOf(attempts, "work"), [
    [],
    [`work begun by ${b.pid}`, `work done by ${b.pid}`],
  ]);
  assert.equal(leaseAfter, null);

  // No value anywhere in KV was made by A's stale attempt.
  const text = await storedText(box);
  for (const trace of [`${a.pid};${a.pid};`, `report-${a.pid}`, `by ${a.pid}`]) {
    assert.ok(!text.includes(trace), `KV holds ${JSON.stringify(trace)}`);
  }
  await stopWorkers(a, b);
});

Deno.test("fencing: a worker stopped holding one fan-out item gets none of it into KV; the items it checkpointed before stay", async () => {
  await using box = await Sandbox.create();
  const { id, a, b, lease, takeover } = await stopTakeOverWake(
    box,
    "spread",
    (l) => l.step === "spread" && l.item === 1 && l.event === "start",
    // stop A only once items 0 and 2 are checkpointed
    (id) =>
      box.withStore(async (store) => {
        await poll("items 0 and 2 checkpointed", 30_000, async () => {
          const items = await store.getItems(id, "spread");
          return items.get(0)?.status === "succeeded" && items.get(2)?.status === "succeeded"
            ? true
            : undefined;
        });
      }),
  );
  assert.ok(takeover.at >= lease.deadline, `B took over ${lease.deadline - takeover.at} ms early`);
  assert.equal(takeover.attempt, 2);
  assert.equal(takeover.key, `${id}:spread:1`);

  const ledger = await box.ledger();
  assert.deepEqual(lines(ledger, "work").map((l) => l.pid), [a.pid], "work ran once, in A");
  assert.deepEqual(lines(ledger, "spread", "start", 0).map((l) => l.pid), [a.pid]);
  assert.deepEqual(lines(ledger, "spread", "start", 2).map((l) => l.pid), [a.pid]);
  assert.deepEqual(lines(ledger, "spread", "start", 1).map((l) => l.pid), [a.pid, b.pid]);
  assert.deepEqual(
    lines(ledger, "spread", "done", 1).map((l) => l.pid).sort(),
    [a.pid, b.pid].sort(),
  );

  const { spread, finish, artifacts, attempts, items } = await box.withStore(async (store) => ({
    spread: await store.getOutput(id, "spread") as { n: number; pid: number; attempt: number }[],
    finish: await store.getOutput(id, "finish"),
    artifacts: await store.getArtifacts(id),
    attempts: await store.getAttempts(id),
    items: await store.getItems(id, "spread"),
  }));
  assert.deepEqual(spread.map((x) => [x.n, x.pid, x.attempt]), [
    [0, a.pid, 1],
    [1, b.pid, 2],
    [2, a.pid, 1],
  ]);
  assert.deepEqual(finish, { work: a.pid, items: [a.pid, b.pid, a.pid], by: b.pid });
  assert.deepEqual([...items.values()].map((r) => r.attempt), [1, 2, 1]);
  assert.deepEqual(
    artifacts.map((x) => x.name),
    [`report-${a.pid}.txt`],
    "A's artifact from before",
  );
  const item1 = attempts.filter((x) => x.step === "spread" && x.item === 1);
  assert.deepEqual(item1.map((x) => `${x.n}:${x.status}`), ["1:crashed", "2:succeeded"]);
  assert.deepEqual(logsOf(attempts, "spread", 1), [
    [],
    [`item 1 begun by ${b.pid}`, `item 1 done by ${b.pid}`],
  ]);
  assert.ok(!(await storedText(box)).includes(`item 1 done by ${a.pid}`));
  await stopWorkers(a, b);
});

function logsOf(attempts: AttemptRecord[], step: string, item = -1): string[][] {
  return attempts.filter((x) => x.step === step && x.item === item).map((x) =>
    x.logs.map((l) => l.message)
  );
}
