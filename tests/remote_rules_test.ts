// The engine over a simulated remote KV (bench/remote_kv.ts: at most 10 checks a commit, no
// queues, a round trip on every call) runs a pipeline with a fan-out, a retry and a wait to
// success: it works within the remote's rules. Not timed.
import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, pipeline, step, waitFor } from "../lib/mod.ts";
import { remoteKv } from "../bench/remote_kv.ts";
import { tempKv, waitFor as until } from "./_support/helpers.ts";

function remotePipeline(state: { tries: number }) {
  const list = step("list", () => Array.from({ length: 30 }, (_, i) => i));
  const squares = step("squares", {
    needs: { list },
    items: ({ list }) => list,
    concurrency: 8,
  }, (n) => n * n);
  const flaky = step("flaky", {
    needs: { squares },
    retry: { attempts: 3, delay: "20ms", jitter: 0 },
  }, ({ squares }) => {
    if (++state.tries < 2) throw new Error("the first try fails");
    return squares.reduce((a, b) => a + b, 0);
  });
  const approval = waitFor("approval", {
    needs: { flaky },
    events: { "remote.approved": z.object({ id: z.string() }) },
    match: { field: "id", equals: (_inputs, run) => String(run.params.id) },
    timeout: "1h",
  });
  const done = step("done", { needs: { flaky, approval } }, ({ flaky, approval }) => {
    return `${flaky} approved by ${approval.event}`;
  });
  return pipeline("remote-rules", {
    params: z.object({ id: z.string() }),
    steps: [list, squares, flaky, approval, done],
  });
}

Deno.test("over a remote KV (10 checks a commit, no queues, 5 ms a round trip) a fan-out, a retry and a wait run to success", async () => {
  await using tmp = await tempKv();
  const local = await Deno.openKv(tmp.path);
  try {
    const { kv, counts } = remoteKv(local, { rttMs: 5 });
    const state = { tries: 0 };
    const p = remotePipeline(state);
    await using engine = await openEngine({
      kv,
      queues: false,
      pipelines: [p],
      pollMs: 50,
      onAlert: () => {},
    });
    engine.start();
    const run = await engine.trigger("remote-rules", { params: { id: "r1" } });
    await until(
      "the run waits for its event",
      async () => (await engine.store.requireRun(run.id)).status === "waiting",
      20_000,
    );
    const sent = await engine.send("remote.approved", { id: "r1" });
    assert.deepEqual(sent.woke.map((w) => w.runId), [run.id]);
    await until(
      "the run succeeds",
      async () => (await engine.store.requireRun(run.id)).status === "succeeded",
      20_000,
    );
    const squares = Array.from({ length: 30 }, (_, i) => i * i);
    assert.deepEqual(await engine.store.getOutput(run.id, "squares"), squares);
    const sum = squares.reduce((a, b) => a + b, 0);
    assert.equal(
      await engine.store.getOutput(run.id, "done"),
      `${sum} approved by remote.approved`,
    );
    assert.equal(state.tries, 2, "the retry ran");
    assert.equal(counts.refused, 0, "no call broke a remote rule");
    assert.ok(counts.maxChecks <= 10, `at most 10 checks a commit (saw ${counts.maxChecks})`);
    assert.ok(counts.commit > 0 && counts.trips > counts.commit);
  } finally {
    local.close();
  }
});

Deno.test("the simulated remote refuses what a remote KV refuses", async () => {
  const local = await Deno.openKv(":memory:");
  try {
    const { kv, counts } = remoteKv(local, { rttMs: 0 });
    const op = kv.atomic();
    for (let i = 0; i < 11; i++) op.check({ key: ["k", i], versionstamp: null });
    await assert.rejects(() => op.commit(), /too many checks/);
    await assert.rejects(() => kv.enqueue("x"), /no queues/);
    assert.throws(() => kv.atomic().enqueue("x"), /no queues/);
    const ten = kv.atomic();
    for (let i = 0; i < 10; i++) ten.check({ key: ["k", i], versionstamp: null });
    assert.equal((await ten.set(["k", 0], 1).commit()).ok, true);
    assert.equal(counts.refused, 3);
    assert.equal(counts.commit, 1);
  } finally {
    local.close();
  }
});
