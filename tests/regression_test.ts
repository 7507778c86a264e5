/** Bugs found in review, each kept from coming back. */
import assert from "node:assert/strict";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

Deno.test("a retry due soon is not held up by a long step on another branch", async () => {
  const t0 = Date.now();
  const starts: number[] = [];
  const flaky = step("flaky", { retry: { attempts: 3, delay: "50ms", jitter: 0 } }, (_i, ctx) => {
    starts.push(Date.now() - t0);
    if (ctx.attempt === 1) throw new Error("transient");
    return 1;
  });
  const slow = step("slow", async (_i, ctx) => {
    await abortableSleep(1500, ctx.signal);
    return 2;
  });
  const p = pipeline("branches", { steps: [flaky, slow] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.ok(starts[1] - starts[0] < 500, `the retry started ${starts[1] - starts[0]} ms later`);
});

Deno.test("a step whose start is being committed when the run is interrupted never runs", async () => {
  let bRan = false;
  const a = step("a", () => 1);
  const b = step("b", { needs: { a } }, () => {
    bRan = true;
    return 2;
  });
  const p = pipeline("ab", { steps: [a, b] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  const committer = engine.store.committer;
  const commit = committer.commit.bind(committer);
  let interrupted: Promise<void> | undefined;
  // Ctrl-C arrives while the commit with a's result and b's start marker is in flight.
  committer.commit = (batch) => {
    let startsB = false;
    const probe = new Proxy({}, {
      get: (_t, name) => (key: Deno.KvKey) => {
        if (name === "set" && key[1] === "step" && key[3] === "b") startsB = true;
        return probe;
      },
    }) as Deno.AtomicOperation;
    batch.apply(probe);
    const result = commit(batch);
    if (startsB && !interrupted) interrupted = engine.worker.interrupt("Ctrl-C");
    return result;
  };
  assert.equal(await engine.worker.execute(run.id), "interrupted");
  await interrupted;
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(bRan, false);
  assert.equal((await engine.store.getRun(run.id))?.status, "failed");
});

Deno.test("close(grace) while a run is being claimed hands it back within the grace", async () => {
  const slow = step("slow", async (_i, ctx) => {
    await abortableSleep(2000, ctx.signal);
    return 1;
  });
  const p = pipeline("slow", { steps: [slow] });
  const engine = await openEngine({ path: ":memory:", pipelines: [p] });
  await engine.trigger("slow"); // its execute() is between getRun and claim
  const t0 = Date.now();
  await engine.close(100);
  assert.ok(Date.now() - t0 < 1000, `close(100) took ${Date.now() - t0} ms`);
});

Deno.test("many long item errors finishing together stay within a commit's size limit", async () => {
  const message = "ошибка ".repeat(600); // two bytes a character in KV
  const items = step("items", {
    items: () => Array.from({ length: 100 }, (_, i) => i),
    concurrency: 100,
    retry: { attempts: 1 },
  }, () => {
    throw new Error(message);
  });
  const p = pipeline("errors", { steps: [items], concurrency: 100 });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    maxSteps: 200,
    onAlert: () => {},
  });
  const run = await engine.store.createRun(p);
  const end = await engine.runToEnd(run.id);
  assert.equal(end.status, "failed");
  assert.match(end.error?.message ?? "", /100 of 100 items failed/);
});

Deno.test("due-index entries that disagree with their run are dropped and hold back no due work", async () => {
  const only = step("only", () => 1);
  const p = pipeline("one", { steps: [only] });
  // No queues: the sweep alone finds due work, at most maxRuns entries a look.
  await using engine = await openEngine({
    path: ":memory:",
    queues: false,
    pipelines: [p],
    maxRuns: 2,
    pollMs: 20,
  });
  const ended = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(ended.id)).status, "succeeded");
  // Entries older than any due work: two of a run that ended, one of a run that is gone.
  const old = Date.now() - 60_000;
  await engine.kv.atomic()
    .set(keys.due(old, ended.id), ended.id)
    .set(keys.due(old + 1, "20200101-000000-gone00"), "20200101-000000-gone00")
    .set(keys.due(old + 2, ended.id), ended.id)
    .commit();
  const run = await engine.store.createRun(p);
  engine.worker.start();
  const deadline = Date.now() + 5000;
  while ((await engine.store.getRun(run.id))?.status !== "succeeded") {
    assert.ok(Date.now() < deadline, "the run behind the stale entries never ran");
    await new Promise((r) => setTimeout(r, 20));
  }
  const left = [];
  for await (const e of engine.kv.list({ prefix: keys.duePrefix() })) left.push(e.key);
  assert.deepEqual(left, []);
});

Deno.test("an output holding a small view of a large buffer is stored as its few bytes, and the body runs once", async () => {
  let calls = 0;
  const head = step("head", { retry: { attempts: 1 } }, () => {
    calls++;
    const big = new Uint8Array(10_000_000);
    big.set([1, 2, 3], 0);
    return { header: big.subarray(0, 16) };
  });
  const read = step("read", { needs: { head } }, ({ head }) => [...head.header.slice(0, 4)]);
  const p = pipeline("views", { steps: [head, read] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(calls, 1);
  const stored = await engine.store.getOutput(run.id, "head") as { header: Uint8Array };
  assert.equal(stored.header.byteLength, 16);
  assert.deepEqual(await engine.store.getOutput(run.id, "read"), [1, 2, 3, 0]);
});

Deno.test("a timeout no timer can wait for is refused at definition time", () => {
  assert.throws(
    () => step("slow", { timeout: "25d" }, () => 1),
    /timeout of step 'slow': "25d" is longer than the 24 days a timer can wait/,
  );
  assert.throws(
    () => pipeline("slow", { steps: [step("s", () => 1)], defaults: { timeout: "30d" } }),
    /default timeout of pipeline 'slow'/,
  );
  step("long", { timeout: "24d" }, () => 1);
});

Deno.test("an error with a huge name fails its step like any other, with the name clipped", async () => {
  let calls = 0;
  const s = step("s", { retry: { attempts: 2, delay: "1ms" } }, () => {
    calls++;
    const error = new Error("broken");
    error.name = "X".repeat(200_000);
    throw error;
  });
  const p = pipeline("named", { steps: [s] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.equal(calls, 2);
  const record = (await engine.store.getSteps(run.id)).get("s")!;
  assert.ok(record.error!.name.length <= 300, `name of ${record.error!.name.length} chars`);
  assert.equal(record.error!.message, "broken");
});

Deno.test("a rerun numbers its attempts after the earlier ones instead of overwriting them", async () => {
  let calls = 0;
  const s = step("s", { retry: { attempts: 2, delay: "1ms" } }, () => {
    if (++calls === 1) throw new Error("first try fails");
    return calls;
  });
  const p = pipeline("history", { steps: [s] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  const done = await engine.runToEnd(run.id);
  assert.equal(done.status, "succeeded");
  await engine.store.rerun(done, p, "s");
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  const attempts = (await engine.store.getAttempts(run.id)).filter((a) => a.step === "s");
  assert.deepEqual(attempts.map((a) => `${a.n}:${a.attempt}:${a.status}`), [
    "1:1:failed",
    "2:2:succeeded",
    "3:1:succeeded",
  ]);
});
