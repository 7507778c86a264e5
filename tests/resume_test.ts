import assert from "node:assert/strict";
import { type AnyStep, openEngine, type Pipeline, pipeline, step, UsageError } from "../lib/mod.ts";
import { tempKv } from "./_support/helpers.ts";

interface World {
  broken: boolean;
  calls: Record<string, number>;
  keys: Record<string, string[]>;
}

function world(): World {
  return { broken: true, calls: {}, keys: {} };
}

/** extract → transform (fails while broken) → load; extract → audit; `extra` adds a step. */
function etl(w: World, extra = false): Pipeline<unknown> {
  const seen = (name: string, key: string) => {
    w.calls[name] = (w.calls[name] ?? 0) + 1;
    (w.keys[name] ??= []).push(key);
  };
  const extract = step("extract", (_inputs, ctx) => {
    seen("extract", ctx.idempotencyKey);
    return { rows: [1, 2, 3] };
  });
  const transform = step("transform", {
    needs: { extract },
    retry: { attempts: 2, delay: "5ms" },
  }, ({ extract }, ctx) => {
    seen("transform", ctx.idempotencyKey);
    if (w.broken) throw new Error("Bad column 'amount'");
    return extract.rows.map((r) => r * 10);
  });
  const load = step("load", { needs: { transform } }, ({ transform }, ctx) => {
    seen("load", ctx.idempotencyKey);
    return transform.length;
  });
  const audit = step("audit", { needs: { extract } }, ({ extract }, ctx) => {
    seen("audit", ctx.idempotencyKey);
    return extract.rows.length;
  });
  const steps: AnyStep[] = [extract, transform, load, audit];
  if (extra) {
    steps.push(step("notify", { needs: { load } }, ({ load }, ctx) => {
      seen("notify", ctx.idempotencyKey);
      return `loaded ${load}`;
    }));
  }
  return pipeline("etl", { steps }) as Pipeline<unknown>;
}

Deno.test("resume() resets failed and skipped steps and never re-runs checkpointed ones", async () => {
  const w = world();
  const p = etl(w);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.deepEqual(w.calls, { extract: 1, transform: 2, audit: 1 });

  const resumed = await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal(resumed.status, "queued");
  assert.equal(resumed.error, null);
  const steps = await engine.store.getSteps(run.id);
  assert.deepEqual(
    [...steps].map(([name, r]) => [name, r.status, r.attempt]).sort(),
    [
      ["audit", "succeeded", 1],
      ["extract", "succeeded", 1],
      ["load", "pending", 0],
      ["transform", "pending", 0],
    ],
  );
  assert.equal(steps.get("transform")!.error, null);

  w.broken = false;
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "succeeded");
  assert.deepEqual(w.calls, { extract: 1, transform: 3, audit: 1, load: 1 });
  assert.equal(await engine.store.getOutput(run.id, "load"), 3);
  // the resumed step keeps its idempotency key: it is the same piece of work
  assert.deepEqual(new Set(w.keys.transform), new Set([`${run.id}:transform`]));
});

Deno.test("resume() of a succeeded run is refused; resume of an active run changes nothing", async () => {
  const w = world();
  w.broken = false;
  const p = etl(w);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  // still queued: resume leaves it as it is
  assert.deepEqual(await engine.store.resume(run, p), run);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  await assert.rejects(
    engine.store.resume(await engine.store.requireRun(run.id), p),
    (e: unknown) =>
      e instanceof UsageError && e.code === "conflict" && /already succeeded/.test(e.message),
  );
  assert.deepEqual(w.calls, { extract: 1, transform: 1, load: 1, audit: 1 });
});

Deno.test("rerun from a step re-executes it and its dependents with new idempotency keys", async () => {
  const w = world();
  w.broken = false;
  const p = etl(w);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");

  const requeued = await engine.store.rerun(await engine.store.requireRun(run.id), p, "transform");
  assert.equal(requeued.status, "queued");
  const steps = await engine.store.getSteps(run.id);
  assert.equal(steps.get("transform")!.status, "pending");
  assert.equal(steps.get("transform")!.generation, 1);
  assert.equal(steps.get("load")!.generation, 1);
  assert.equal(steps.get("extract")!.status, "succeeded");
  assert.equal(steps.get("extract")!.generation, 0);

  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(w.calls, { extract: 1, transform: 2, load: 2, audit: 1 });
  assert.deepEqual(w.keys.transform, [`${run.id}:transform`, `${run.id}:transform:g1`]);
  assert.deepEqual(w.keys.load, [`${run.id}:load`, `${run.id}:load:g1`]);
  assert.deepEqual(w.keys.extract, [`${run.id}:extract`]);

  // a second rerun moves to the next generation
  await engine.store.rerun(await engine.store.requireRun(run.id), p, "load");
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(w.calls, { extract: 1, transform: 2, load: 3, audit: 1 });
  assert.equal(w.keys.load.at(-1), `${run.id}:load:g2`);
});

Deno.test("rerun is refused for an unknown step and for a run that is still active", async () => {
  const w = world();
  w.broken = false;
  const p = etl(w);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  await assert.rejects(
    engine.store.rerun(run, p, "transform"),
    (e: unknown) => e instanceof UsageError && e.code === "conflict" && /is queued/.test(e.message),
  );
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  await assert.rejects(
    engine.store.rerun(await engine.store.requireRun(run.id), p, "transfrom"),
    (e: unknown) =>
      e instanceof UsageError && e.code === "not_found" &&
      /Unknown step 'transfrom' in pipeline 'etl': steps are extract, /.test(e.message),
  );
});

Deno.test("resume on a changed graph explains the change and needs force", async () => {
  await using file = await tempKv();
  const w = world();
  const before = etl(w);
  let runId: string;
  {
    await using engine = await openEngine({
      path: file.path,
      pipelines: [before],
      onAlert: () => {},
    });
    runId = (await engine.store.createRun(before)).id;
    assert.equal((await engine.runToEnd(runId)).status, "failed");
  }
  // the code was changed and deployed: same pipeline name, one more step
  const after = etl(w, true);
  assert.notEqual(after.version, before.version);
  await using engine = await openEngine({ path: file.path, pipelines: [after] });
  const failed = await engine.store.requireRun(runId);
  await assert.rejects(
    engine.store.resume(failed, after),
    (e: unknown) =>
      e instanceof UsageError && e.code === "version_changed" &&
      /Pipeline 'etl' changed since run/.test(e.message) &&
      /step 'notify' was added/.test(e.message) && /--force/.test(e.message),
  );
  assert.equal((await engine.store.requireRun(runId)).status, "failed", "refusal changes nothing");

  w.broken = false;
  const resumed = await engine.store.resume(failed, after, true);
  assert.equal(resumed.version, after.version);
  assert.equal((await engine.runToEnd(runId)).status, "succeeded");
  assert.equal(await engine.store.getOutput(runId, "notify"), "loaded 3");
  assert.deepEqual(w.calls, { extract: 1, transform: 3, audit: 1, load: 1, notify: 1 });
});

Deno.test("resume() keeps the attempt history: new attempts are added, none overwritten", async () => {
  const w = world();
  const p = etl(w);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  const failedRound = (await engine.store.getAttempts(run.id)).filter((a) =>
    a.step === "transform"
  );
  assert.deepEqual(failedRound.map((a) => [a.n, a.attempt, a.status]), [
    [1, 1, "failed"],
    [2, 2, "failed"],
  ]);

  w.broken = false;
  await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  const transform = (await engine.store.getAttempts(run.id)).filter((a) => a.step === "transform");
  // attempt numbers restart at 1 for the retry policy; the history continues at n = 3
  assert.deepEqual(transform.map((a) => [a.n, a.attempt, a.status]), [
    [1, 1, "failed"],
    [2, 2, "failed"],
    [3, 1, "succeeded"],
  ]);
  assert.equal(transform[0].error?.message, "Bad column 'amount'");
});
