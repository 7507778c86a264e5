/**
 * The lazy registry (`CliContext.loaders`, `pipelines/lazy.ts`): a command imports only
 * the pipelines it needs — `run <name>` and `resume <id>` the one, `pipelines` all — on a
 * real KV file, through `main()`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { EXIT, main, type PipelineLoaders } from "../lib/cli/cli.ts";
import { type Pipeline, pipeline, step } from "../lib/mod.ts";
import { pipelines } from "../pipelines/mod.ts";
import { loaders } from "../pipelines/lazy.ts";

Deno.test("pipelines/lazy.ts names the pipelines of pipelines/mod.ts, in order, each the same", async () => {
  assert.deepEqual(Object.keys(loaders), pipelines.map((p) => p.name));
  for (const p of pipelines) assert.equal(await loaders[p.name](), p, p.name);
});

/** Pipelines behind counting loaders; `one` fails while `failing.on`. */
function counted() {
  const failing = { on: true };
  const one = pipeline("lazy-one", {
    defaults: { retry: { attempts: 1 } },
    steps: [step("only", () => {
      if (failing.on) throw new Error("failing on purpose");
      return 1;
    })],
  }) as Pipeline<unknown>;
  const other = pipeline("lazy-other", { steps: [step("only", () => 2)] }) as Pipeline<unknown>;
  const loaded: string[] = [];
  const registry: PipelineLoaders = {
    "lazy-one": () => {
      loaded.push("lazy-one");
      return Promise.resolve(one);
    },
    "lazy-other": () => {
      loaded.push("lazy-other");
      return Promise.resolve(other);
    },
  };
  return { failing, loaded, registry };
}

async function cli(args: string[], registry: PipelineLoaders) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(args, {
    pipelines: [],
    loaders: registry,
    out: (l) => out.push(l),
    err: (l) => err.push(l),
  });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

Deno.test("run and resume import only the run's pipeline; pipelines imports all", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kvflow-lazy-" });
  const before = Deno.env.get("KVFLOW_KV_PATH");
  Deno.env.set("KVFLOW_KV_PATH", `${dir}/kvflow.kv`);
  try {
    const { failing, loaded, registry } = counted();
    const failed = await cli(["run", "lazy-one"], registry);
    assert.equal(failed.code, EXIT.failed, failed.err);
    assert.deepEqual(loaded, ["lazy-one"]);
    const id = failed.out.match(/run (\d{8}-\d{6}-\w+)/)?.[1];
    assert.ok(id, failed.out);

    loaded.length = 0;
    failing.on = false;
    const resumed = await cli(["resume", id], registry);
    assert.equal(resumed.code, EXIT.ok, resumed.err);
    assert.match(resumed.out, new RegExp(`✓ run ${id} succeeded`));
    assert.deepEqual(loaded, ["lazy-one"]);

    loaded.length = 0;
    const listed = await cli(["pipelines", "--json"], registry);
    assert.equal(listed.code, EXIT.ok, listed.err);
    assert.deepEqual(
      JSON.parse(listed.out).map((p: { name: string }) => p.name),
      ["lazy-one", "lazy-other"],
    );
    assert.deepEqual(loaded.sort(), ["lazy-one", "lazy-other"]);

    const unknown = await cli(["run", "nope"], registry);
    assert.equal(unknown.code, EXIT.usage);
    assert.match(unknown.err, /Unknown pipeline 'nope': known pipelines are lazy-one, lazy-other/);
  } finally {
    if (before === undefined) Deno.env.delete("KVFLOW_KV_PATH");
    else Deno.env.set("KVFLOW_KV_PATH", before);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a loader that gives another pipeline than its name is an error, not a wrong run", async () => {
  const { registry } = counted();
  const wrong: PipelineLoaders = { "lazy-one": registry["lazy-other"] };
  const result = await cli(["run", "lazy-one"], wrong);
  assert.equal(result.code, EXIT.failed);
  assert.match(result.err, /loader of 'lazy-one' gave pipeline 'lazy-other'/);
});
