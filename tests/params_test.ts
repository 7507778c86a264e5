import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, pipeline, step, UsageError } from "../lib/mod.ts";

const echo = step("echo", (_inputs, ctx) => ctx.run.params);
const withParams = pipeline("with-params", {
  params: z.object({ count: z.number().int().min(1), region: z.string().default("eu") }),
  steps: [echo],
});
const echoToo = step("echo", (_inputs, ctx) => ctx.run.params);
const noParams = pipeline("no-params", { steps: [echoToo] });

function usageError(code: string, message: RegExp) {
  return (e: unknown) => e instanceof UsageError && e.code === code && message.test(e.message);
}

Deno.test("createRun() rejects params that fail the schema, naming the field", async () => {
  await using engine = await openEngine({ path: ":memory:", pipelines: [withParams] });
  await assert.rejects(
    engine.store.createRun(withParams, { params: { count: "three" } }),
    usageError("invalid_params", /Invalid params for 'with-params': count: /),
  );
  await assert.rejects(
    engine.store.createRun(withParams, { params: { count: 0 } }),
    usageError("invalid_params", /count: .*(>=|greater|too small)/i),
  );
  await assert.rejects(
    engine.store.createRun(withParams, { params: {} }),
    usageError("invalid_params", /count/),
  );
  await assert.rejects(
    engine.store.createRun(withParams, { params: ["count", 1] }),
    usageError("invalid_params", /expected an object/),
  );
  await assert.rejects(
    engine.store.createRun(withParams, { params: "count=1" }),
    usageError("invalid_params", /expected an object/),
  );
  assert.deepEqual((await engine.store.listRuns()).runs, [], "a rejected run is not stored");
});

Deno.test("createRun() rejects an unknown param and lists the known ones", async () => {
  await using engine = await openEngine({ path: ":memory:", pipelines: [withParams] });
  await assert.rejects(
    engine.store.createRun(withParams, { params: { count: 1, regoin: "eu" } }),
    usageError("invalid_params", /unknown param regoin \(known: count, region\)/),
  );
  assert.deepEqual((await engine.store.listRuns()).runs, []);
});

Deno.test("createRun() rejects params for a pipeline that takes none", async () => {
  await using engine = await openEngine({ path: ":memory:", pipelines: [noParams] });
  await assert.rejects(
    engine.store.createRun(noParams, { params: { date: "2024-01-01" } }),
    usageError("invalid_params", /'no-params': it takes no params, got date/),
  );
  const run = await engine.store.createRun(noParams, {});
  assert.deepEqual(run.params, {});
});

Deno.test("createRun() rejects a malformed or impossible logical date", async () => {
  await using engine = await openEngine({ path: ":memory:", pipelines: [noParams] });
  for (
    const date of [
      "yesterday",
      "2024-02-30",
      "2023-02-29",
      "2024-13-01",
      "2024-00-10",
      "2024-1-05",
      "2024-01-05T00:00:00Z",
      "",
    ]
  ) {
    await assert.rejects(
      engine.store.createRun(noParams, { logicalDate: date }),
      usageError("usage", new RegExp(`Invalid date ${JSON.stringify(date)}: use YYYY-MM-DD`)),
      date,
    );
  }
  assert.deepEqual((await engine.store.listRuns()).runs, []);
});

Deno.test("createRun() rejects params too large to store with a usage error", async () => {
  const noted = pipeline("noted", {
    params: z.object({ note: z.string() }),
    steps: [step("echo", (_inputs, ctx) => ctx.run.params)],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [noted] });
  // 40,000 characters of JSON (under the HTTP body limit) that take 80,000 bytes in KV
  const note = "\u6f22".repeat(40_000);
  await assert.rejects(
    engine.store.createRun(noted, { params: { note } }),
    usageError("invalid_params", /Invalid params for 'noted': too large to store/),
  );
  assert.deepEqual((await engine.store.listRuns()).runs, [], "nothing half-stored");
  const run = await engine.store.createRun(noted, { params: { note: "short" } });
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
});

Deno.test("valid params reach the step as the schema parsed them, with the logical date given", async () => {
  await using engine = await openEngine({ path: ":memory:", pipelines: [withParams] });
  const run = await engine.store.createRun(withParams, {
    params: { count: 3 },
    logicalDate: "2024-02-29",
    trigger: "backfill",
  });
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  const stored = await engine.store.requireRun(run.id);
  assert.deepEqual(await engine.store.getOutput(run.id, "echo"), { count: 3, region: "eu" });
  assert.deepEqual(stored.params, { count: 3, region: "eu" });
  assert.equal(stored.logicalDate, "2024-02-29");
  assert.equal(stored.trigger, "backfill");
});

Deno.test("unknown run ids and pipelines are clear usage errors", async () => {
  await using engine = await openEngine({ path: ":memory:", pipelines: [noParams] });
  await assert.rejects(
    engine.store.requireRun("20240101-000000-nope"),
    usageError("not_found", /Unknown run: "20240101-000000-nope"/),
  );
  await assert.rejects(
    engine.store.requireRun("../../etc/passwd"),
    usageError("not_found", /Unknown run/),
  );
  assert.throws(
    () => engine.pipeline("nightly"),
    usageError("not_found", /Unknown pipeline 'nightly': known pipelines are no-params/),
  );
  await assert.rejects(
    engine.store.cancel("20240101-000000-nope"),
    usageError("not_found", /Unknown run/),
  );
});
