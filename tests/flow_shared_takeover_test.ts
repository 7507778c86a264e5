/**
 * A step slot freed by a takeover, in a scope a step limit shares with a run limit, across
 * real processes: a worker runs a step that holds the scope's one slot, a run of another
 * pipeline queues behind it, the worker is SIGKILLed mid-step, and a second worker takes
 * the run over. The takeover's commit frees the slot with the key's release and a gate due
 * now (`slotFreedWrites` in `store/slots.ts`), so the queued run starts at the second
 * worker's next sweep, not after its 10 s backstop. The step's throttle keeps its re-run
 * off the freed slot for a while (else it takes the slot back at once, and its end, not
 * the takeover, starts the queued run). A side ledger outside KV shows that the slot never
 * had two bodies at once.
 *
 * @module
 */
import assert from "node:assert/strict";
import { BACKSTOP_MS } from "../lib/store/flow.ts";
import { lines, type Proc, Sandbox } from "./_support/harness.ts";
import { noSlots } from "./_support/helpers.ts";
import { digest, send, SEND_EVERY_MS } from "./fixtures/shared_takeover.ts";

const ENTRY = "tests/fixtures/shared_takeover.ts";
const ENV = { KVFLOW_LEASE_MS: "2000", KVFLOW_POLL_MS: "100" };
/**
 * How soon after the takeover the queued run must start: a few sweeps of the second
 * worker with room for a slow machine, and well under the backstop it would wait without
 * the gate.
 */
const PROMPT_MS = 3000;

async function started(worker: Proc): Promise<void> {
  await worker.waitForOutput(/worker \S+ started/, 60_000);
}

Deno.test("a takeover of a dead worker's run frees its step's slot in a scope shared with a run limit: the run queued for it starts at the next sweep, not after the backstop", async () => {
  await using box = await Sandbox.create();
  const first = box.spawn(["worker"], { entry: ENTRY, env: { ...ENV, GATED: "send" } });
  await started(first);
  const sending = await box.withStore((store) => store.createRun(send));
  await box.waitForLedger("send started by the first worker", (l) => {
    return l.step === "send" && l.pid === first.pid;
  });

  // its `send` does not wait at the gate
  const second = box.spawn(["worker"], { entry: ENTRY, env: ENV });
  await started(second);
  // the step holds the scope's one slot: the run queues
  const queued = await box.withStore((store) => store.createRun(digest));
  const held = await box.waitForRun(queued.id, (r) => r.held?.by === "limit");
  assert.equal(held.status, "queued");

  first.kill("SIGKILL");
  assert.equal((await first.exit()).signal, "SIGKILL");
  const killedAt = Date.now();

  const composed = await box.waitForRun(
    queued.id,
    (r) => r.status === "succeeded",
    BACKSTOP_MS * 2,
  );
  const crash = await box.withStore(async (store) => {
    return (await store.getAttempts(sending.id)).find((a) => a.status === "crashed");
  });
  assert.ok(crash, "the second worker recorded the first attempt of send as crashed");
  // the takeover's commit freed the slot; the crashed attempt ends at the takeover's time
  const waited = composed.startedAt! - crash.endedAt;
  assert.ok(
    waited >= 0 && waited < PROMPT_MS,
    `the queued run started ${waited} ms after the takeover freed the slot (backstop ${BACKSTOP_MS} ms)`,
  );

  // the re-run of send waits for its throttle, then for the slot
  const sent = await box.waitForRun(
    sending.id,
    (r) => r.status === "succeeded",
    SEND_EVERY_MS + BACKSTOP_MS,
  );
  assert.equal(sent.takeovers, 1);
  second.kill("SIGTERM");
  const exit = await second.exit();
  assert.equal(exit.code, 0, exit.stderr);

  // ---- the ledger: the slot's bodies one at a time -------------------------------------
  const ledger = await box.ledger();
  const sends = lines(ledger, "send");
  assert.deepEqual(sends.map((l) => `${l.attempt}:${l.pid}`), [
    `1:${first.pid}`,
    `2:${second.pid}`,
  ]);
  assert.deepEqual(lines(ledger, "send", "done").map((l) => l.attempt), [2]);
  const composes = lines(ledger, "compose");
  assert.equal(composes.length, 1);
  const bodies = [
    { name: "send 1", start: sends[0].at, end: killedAt },
    { name: "compose", start: composes[0].at, end: lines(ledger, "compose", "done")[0].at },
    { name: "send 2", start: sends[1].at, end: lines(ledger, "send", "done")[0].at },
  ];
  // one body at a time (the killed one ran until its process's kill)
  const byStart = [...bodies].sort((a, b) => a.start - b.start);
  for (let i = 1; i < byStart.length; i++) {
    const [before, after] = [byStart[i - 1], byStart[i]];
    assert.ok(
      after.start >= before.end,
      `${after.name} started at ${after.start}, before ${before.name} ended at ${before.end}`,
    );
  }
  // the queued run took the slot the takeover freed: the throttle kept the re-run off it
  assert.deepEqual(byStart.map((b) => b.name), ["send 1", "compose", "send 2"]);

  await box.withStore(({ kv }) => noSlots(kv));
  console.log(
    `  queued run started ${waited} ms after the takeover, ${
      crash.endedAt - killedAt
    } ms after the kill`,
  );
});
