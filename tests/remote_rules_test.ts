// The engine over a simulated remote KV (bench/remote_kv.ts: at most 10 checks a commit, no
// queues, a round trip on every call) runs a pipeline with a fan-out, a retry and a wait to
// success: it works within the remote's rules. Not timed.
import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, pipeline, step, type StepContext, waitFor } from "../lib/mod.ts";
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

Deno.test("six engines on one remote KV, racing for the same due runs, run each step once and pause a paused pipeline's runs", async () => {
  await using tmp = await tempKv();
  const local = await Deno.openKv(tmp.path);
  const ran = new Map<string, number>();
  const body = (name: string) => (_: unknown, ctx: StepContext) => {
    const key = `${ctx.run.id}/${name}`;
    ran.set(key, (ran.get(key) ?? 0) + 1);
    return name;
  };
  const a = step("a", body("a"));
  const b = step("b", { needs: { a } }, body("b"));
  const c = step("c", { needs: { b } }, body("c"));
  const chain = pipeline("remote-race", { steps: [a, b, c] });
  const held = pipeline("remote-held", { steps: [step("x", body("x"))] });
  const engines = [];
  try {
    for (let i = 0; i < 6; i++) {
      const { kv, counts } = remoteKv(local, { rttMs: 2 });
      engines.push({
        counts,
        engine: await openEngine({
          kv,
          queues: false,
          pipelines: [chain, held],
          pollMs: 50,
          maxRuns: 4,
          onAlert: () => {},
        }),
      });
    }
    const { engine: first } = engines[0];
    await first.pause("remote-held");
    const runs: string[] = [];
    for (let i = 0; i < 60; i++) runs.push((await first.trigger("remote-race")).id);
    const paused: string[] = [];
    for (let i = 0; i < 5; i++) paused.push((await first.trigger("remote-held")).id);
    for (const { engine } of engines) engine.start();
    await until("every run succeeds", async () => {
      for (const id of runs) {
        if ((await first.store.requireRun(id)).status !== "succeeded") return false;
      }
      return true;
    }, 30_000);
    for (const id of runs) {
      const run = await first.store.requireRun(id);
      assert.equal(run.takeovers, 0, `run ${id} was never taken over`);
      for (const name of ["a", "b", "c"]) {
        assert.equal(ran.get(`${id}/${name}`), 1, `${id}/${name} ran once`);
      }
    }
    for (const id of paused) {
      assert.equal((await first.store.requireRun(id)).status, "paused", `${id} is paused`);
      assert.equal(ran.get(`${id}/x`), undefined, `${id} started nothing`);
    }
    const lost = engines.reduce((n, { counts }) => n + counts.commitFailed, 0);
    assert.ok(lost > 0, "the engines raced for runs (some claims were lost)");
    for (const { counts } of engines) assert.equal(counts.refused, 0);
  } finally {
    await Promise.all(engines.map(({ engine }) => engine.close(1000)));
    local.close();
  }
});
