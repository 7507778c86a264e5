/**
 * What a process does before its first step, kept small: a new database carries its
 * schema version from its first run, so a restart has nothing to migrate.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import { migrate, SCHEMA_VERSION } from "../lib/kv/migrations.ts";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { tempKv } from "./_support/helpers.ts";

const demo = pipeline("demo", { steps: [step("one", () => 1)] });

Deno.test("a new database is left as it is by an open, and gets its schema version with its first run", async () => {
  await using temp = await tempKv();
  {
    await using engine = await openEngine({ path: temp.path, pipelines: [demo] });
    assert.deepEqual(await Array.fromAsync(engine.kv.list({ prefix: [] })), []);
    await engine.store.createRun(demo);
    assert.equal((await engine.kv.get(keys.schema())).value, SCHEMA_VERSION);
  }
  // the next process (a restart) finds the database current: one read, nothing counted
  const kv = await Deno.openKv(temp.path);
  try {
    assert.deepEqual(await migrate(new Store(kv, { queues: false })), {
      from: SCHEMA_VERSION,
      to: SCHEMA_VERSION,
      counted: 0,
    });
  } finally {
    kv.close();
  }
});
