/**
 * The engine as an embedder uses it through `lib/mod.ts` alone: start working runs, trigger
 * one, wait for its end, and read it back.
 */
import assert from "node:assert/strict";
import { openEngine, pipeline, step, UsageError } from "../lib/mod.ts";

const load = step("load", () => [3, 4]);
const sum = step("sum", { needs: { load } }, ({ load }) => load[0] + load[1]);
const squares = step("squares", {
  needs: { load },
  items: ({ load }) => load,
}, (n: number) => n * n);
const add = pipeline("add", { steps: [load, sum, squares] });

Deno.test("Engine.start() works runs in this process; getRun, listRuns and output read them back", async () => {
  await using engine = await openEngine({ pipelines: [add], path: ":memory:", pollMs: 20 });
  engine.start();
  const run = await engine.trigger("add");
  let ended = await engine.getRun(run.id);
  for (let i = 0; i < 200 && ended?.status !== "succeeded"; i++) {
    await new Promise((r) => setTimeout(r, 10));
    ended = await engine.getRun(run.id);
  }
  assert.equal(ended?.status, "succeeded");
  assert.equal(await engine.output(run.id, "sum"), 7);
  assert.deepEqual(await engine.output(run.id, "squares"), [9, 16]);
  const page = await engine.listRuns({ pipeline: "add" });
  assert.deepEqual(page.runs.map((r) => r.id), [run.id]);
  assert.equal(await engine.getRun("no-such-run"), null);
});

Deno.test("Engine.output() of an unknown run or a step without output is a UsageError", async () => {
  await using engine = await openEngine({ pipelines: [add], path: ":memory:" });
  await assert.rejects(() => engine.output("no-such-run", "sum"), UsageError);
  const run = await engine.trigger("add");
  await assert.rejects(() => engine.output(run.id, "sum"), /has no output yet/);
});
