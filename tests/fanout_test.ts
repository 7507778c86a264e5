import assert from "node:assert/strict";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import { tempKv } from "./_support/helpers.ts";

function invoicePipeline(state: { broken: Set<number>; calls: number[]; maxRunning: number }) {
  let running = 0;
  const managers = step("managers", () => ["ada", "bo", "cy", "di", "ed"]);
  const invoices = step("invoices", {
    needs: { managers },
    items: ({ managers }) => managers,
    concurrency: 2,
    retry: { attempts: 2, delay: "5ms" },
  }, async (manager, ctx) => {
    state.calls[ctx.item.index] = (state.calls[ctx.item.index] ?? 0) + 1;
    running++;
    state.maxRunning = Math.max(state.maxRunning, running);
    // later items finish sooner, so completion order is not list order
    await new Promise((r) => setTimeout(r, (ctx.item.total - ctx.item.index) * 4));
    running--;
    if (state.broken.has(ctx.item.index)) throw new Error(`Renderer crashed on ${manager}`);
    return { manager, key: ctx.idempotencyKey, of: ctx.item.total };
  });
  const count = step("count", { needs: { invoices } }, ({ invoices }) => invoices.length);
  return pipeline("invoices", { steps: [managers, invoices, count] });
}

Deno.test("a fan-out step checkpoints each item and outputs them in list order", async () => {
  const state = { broken: new Set<number>(), calls: [] as number[], maxRunning: 0 };
  const p = invoicePipeline(state);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");

  const output = await engine.store.getOutput(run.id, "invoices");
  assert.deepEqual(
    output,
    ["ada", "bo", "cy", "di", "ed"].map((manager, i) => ({
      manager,
      key: `${run.id}:invoices:${i}`,
      of: 5,
    })),
  );
  assert.equal(await engine.store.getOutput(run.id, "count"), 5);
  const items = await engine.store.getItems(run.id, "invoices");
  assert.deepEqual([...items.keys()], [0, 1, 2, 3, 4]);
  assert.ok([...items.values()].every((r) => r.status === "succeeded" && r.attempt === 1));
  assert.equal((await engine.store.getSteps(run.id)).get("invoices")!.items, 5);
  assert.deepEqual(state.calls, [1, 1, 1, 1, 1]);
  assert.equal(state.maxRunning, 2, "items concurrency is respected and used");
  const itemAttempts = (await engine.store.getAttempts(run.id)).filter((a) =>
    a.step === "invoices"
  );
  assert.deepEqual(itemAttempts.map((a) => a.item).sort(), [0, 1, 2, 3, 4]);
});

Deno.test("resume after a partial fan-out failure re-runs only the failed item", async () => {
  const state = { broken: new Set([2]), calls: [] as number[], maxRunning: 0 };
  const p = invoicePipeline(state);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  const failed = await engine.runToEnd(run.id);
  assert.equal(failed.status, "failed");
  assert.equal(failed.error?.step, "invoices");
  assert.match(failed.error!.message, /1 of 5 items failed; item 2: Renderer crashed on cy/);
  assert.deepEqual(state.calls, [1, 1, 2, 1, 1], "item 2 spent its two attempts");
  const items = await engine.store.getItems(run.id, "invoices");
  assert.deepEqual(
    [...items.values()].map((r) => r.status),
    ["succeeded", "succeeded", "failed", "succeeded", "succeeded"],
  );
  assert.equal((await engine.store.getSteps(run.id)).get("count")!.status, "skipped");

  state.broken.clear();
  await engine.store.resume(await engine.store.requireRun(run.id), p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "succeeded");
  assert.deepEqual(state.calls, [1, 1, 3, 1, 1], "only the failed item ran again");
  const output = await engine.store.getOutput(run.id, "invoices") as { manager: string }[];
  assert.deepEqual(output.map((o) => o.manager), ["ada", "bo", "cy", "di", "ed"]);
  assert.equal(await engine.store.getOutput(run.id, "count"), 5);
});

Deno.test("rerun of a fan-out step runs every item again with new keys", async () => {
  const state = { broken: new Set<number>(), calls: [] as number[], maxRunning: 0 };
  const p = invoicePipeline(state);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  await engine.store.rerun(await engine.store.requireRun(run.id), p, "invoices");
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(state.calls, [2, 2, 2, 2, 2]);
  const output = await engine.store.getOutput(run.id, "invoices") as { key: string }[];
  assert.deepEqual(
    output.map((o) => o.key),
    [0, 1, 2, 3, 4].map((i) => `${run.id}:invoices:${i}:g1`),
  );
});

Deno.test("rerun of a fan-out step keeps its items' earlier attempt records and numbers new ones after them", async () => {
  const state = { broken: new Set([2]), calls: [] as number[], maxRunning: 0 };
  const p = invoicePipeline(state);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  state.broken.clear();
  await engine.store.rerun(await engine.store.requireRun(run.id), p, "invoices");
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  await engine.store.rerun(await engine.store.requireRun(run.id), p, "invoices");
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");

  const history = (item: number) =>
    engine.store.getAttempts(run.id).then((all) =>
      all.filter((a) => a.step === "invoices" && a.item === item)
        .map((a) => [a.n, a.attempt, a.status])
    );
  assert.deepEqual(await history(0), [[1, 1, "succeeded"], [2, 1, "succeeded"], [
    3,
    1,
    "succeeded",
  ]]);
  // item 2 failed both attempts of the first round; each rerun adds one attempt after them
  assert.deepEqual(await history(2), [
    [1, 1, "failed"],
    [2, 2, "failed"],
    [3, 1, "succeeded"],
    [4, 1, "succeeded"],
  ]);
  const items = await engine.store.getItems(run.id, "invoices");
  assert.deepEqual([...items.values()].map((r) => r.generation), [2, 2, 2, 2, 2]);
  const output = await engine.store.getOutput(run.id, "invoices") as { key: string }[];
  assert.equal(output[2].key, `${run.id}:invoices:2:g2`);
});

Deno.test("a fan-out over an empty list succeeds with an empty output", async () => {
  let calls = 0;
  const none = step("none", () => [] as string[]);
  const each = step("each", { needs: { none }, items: ({ none }) => none }, (x) => {
    calls++;
    return x;
  });
  const after = step("after", { needs: { each } }, ({ each }) => each.length);
  const p = pipeline("empty-fan", { steps: [none, each, after] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(await engine.store.getOutput(run.id, "each"), []);
  assert.equal(await engine.store.getOutput(run.id, "after"), 0);
  assert.equal(calls, 0);
});

Deno.test("a fan-out whose items function does not return a list fails clearly", async () => {
  const source = step("source", () => ({ not: "a list" }));
  const each = step("each", {
    needs: { source },
    // deno-lint-ignore no-explicit-any
    items: ({ source }) => source as any,
  }, (x) => x);
  const p = pipeline("bad-items", { steps: [source, each] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.match(ended.error!.message, /items of step 'each' must return an array/);
});

Deno.test("a fan-out item's later retry survives a restart; finished items do not run again", async () => {
  await using file = await tempKv();
  const calls: number[] = [];
  const list = step("list", () => [0, 1, 2]);
  const each = step("each", {
    needs: { list },
    items: ({ list }) => list,
    retry: { attempts: 2, delay: 200, jitter: 0 },
  }, (i, ctx) => {
    calls.push(i);
    if (i === 1 && ctx.attempt === 1) throw new Error("rate limited");
    return i * 10;
  });
  const p = pipeline("fan-restart", { steps: [list, each] });
  let runId: string;
  {
    await using first = await openEngine({ path: file.path, pipelines: [p], holdMs: 10 });
    runId = (await first.store.createRun(p)).id;
    assert.equal(await first.worker.execute(runId), "waiting");
    const item = (await first.store.getItems(runId, "each")).get(1)!;
    assert.equal(item.status, "retrying");
    assert.equal((await first.store.requireRun(runId)).dueAt, item.nextAt);
  }
  await using second = await openEngine({ path: file.path, pipelines: [p], holdMs: 10 });
  assert.equal((await second.runToEnd(runId)).status, "succeeded");
  assert.deepEqual(calls.sort(), [0, 1, 1, 2]);
  assert.deepEqual(await second.store.getOutput(runId, "each"), [0, 10, 20]);
});

Deno.test("a fan-out whose items() never returns fails at the step's timeout instead of holding the run", async () => {
  let hang = true;
  const source = step("source", () => 3);
  const lines = step("lines", {
    needs: { source },
    timeout: "150ms",
    items: ({ source }) =>
      hang ? new Promise<number[]>(() => {}) : Array.from({ length: source }, (_, i) => i),
  }, (item) => item * 2);
  const p = pipeline("hanging-items", { steps: [source, lines] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  const failed = await engine.runToEnd(run.id);
  assert.equal(failed.status, "failed");
  const steps = await engine.store.getSteps(run.id);
  assert.equal(steps.get("lines")?.error?.name, "TimeoutError");
  assert.match(
    steps.get("lines")!.error!.message,
    /items of step 'lines' did not return within 150 ms/,
  );
  assert.equal(steps.get("source")?.status, "succeeded");

  hang = false;
  await engine.store.resume(failed, p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(await engine.store.getOutput(run.id, "lines"), [0, 2, 4]);
});
