/**
 * Queue hints: a commit that makes many runs due at once sends one message for all but
 * the first, and a worker that only has hints (no watch of the file, a sweep once a
 * minute) still starts every one of them at once.
 *
 * @module
 */
import assert from "node:assert/strict";
import { poll } from "./_support/harness.ts";
import five from "./fixtures/five.ts";
import { Store, type WakeMessage } from "../lib/store/store.ts";
import { openEngine, type RunRecord } from "../lib/mod.ts";

Deno.test(
  "100 runs created in one commit send two queue messages, and a worker with no watch and a sweep a minute starts all of them",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "kvflow_hints_" });
    const engine = await openEngine({
      path: `${dir}/kvflow.kv`,
      pipelines: [five],
      watch: false,
      pollMs: 60_000,
      maxRuns: 16,
    });
    try {
      engine.start();
      await poll("the first sweep", 10_000, () => engine.worker.lastSweepAt ?? undefined);
      const op = engine.kv.atomic();
      const messages: WakeMessage[] = [];
      const enqueue = op.enqueue.bind(op);
      op.enqueue = (message, options) => {
        messages.push(message as WakeMessage);
        return enqueue(message, options);
      };
      const runs: RunRecord[] = [];
      for (let i = 0; i < 100; i++) runs.push(engine.store.newRun(five, { params: {} }));
      for (const run of runs) engine.store.addRunCreation(op, run);
      assert.ok((await op.commit()).ok);
      assert.deepEqual(messages.map((m) => m.kvflow), ["run", "due"]);
      // the next sweep is a minute away: only the two messages can start the runs
      await poll("all 100 runs to succeed", 20_000, async () => {
        const ended = await Promise.all(runs.map((run) => engine.store.getRun(run.id)));
        return ended.every((run) => run?.status === "succeeded") || undefined;
      });
    } finally {
      await engine.close(0);
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test("a run's queue hint says when it is meant for: now, or after its delay", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const store = new Store(kv, { queues: true });
    const messages: WakeMessage[] = [];
    const op = kv.atomic();
    op.enqueue = (message) => {
      messages.push(message as WakeMessage);
      return op;
    };
    const before = Date.now();
    store.wake(op, "a", 0);
    store.wake(op, "b", 5000);
    store.wake(op, "c", 5000);
    const after = Date.now();
    assert.deepEqual(messages.map((m) => m.kvflow === "run" ? m.runId : m.kvflow), [
      "a",
      "b",
      "c",
    ]);
    const [a, b] = messages as Extract<WakeMessage, { kvflow: "run" }>[];
    assert.ok(a.at! >= before && a.at! <= after);
    assert.ok(b.at! >= before + 5000 && b.at! <= after + 5000);
  } finally {
    kv.close();
  }
});
