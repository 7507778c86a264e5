/** The test-kit example of README.md, as it is printed there, in a temp world. */
import assert from "node:assert/strict";
import { testPipeline } from "../lib/testing/mod.ts";
import nightly from "../pipelines/nightly/mod.ts";
import { NightlyWorld } from "./_support/nightly.ts";

Deno.test("a mail server outage fails the run once, and resume sends only what is left", async () => {
  await using _world = await NightlyWorld.create(); // sample store and out dir in a temp dir
  await using t = await testPipeline(nightly, { clock: "2026-11-02T03:00:00Z" });
  t.fail("email", { item: 1 }); // one manager's mail bounces on every attempt
  const failed = await t.run({ date: "2026-11-01" });
  assert.equal(failed.status, "failed");
  assert.equal(failed.alerts.length, 1);
  assert.equal(failed.attempts("email").filter((a) => a.item === 1).length, 3);

  t.heal(); // the mail server is back
  const resumed = await t.resume(failed.id);
  assert.equal(resumed.status, "succeeded");
  // the other managers' mails were checkpointed: only item 1 ran again
  const again = resumed.attempts("email").filter((a) => a.n > 1 && a.status === "succeeded");
  assert.deepEqual(again.map((a) => a.item), [1]);
});
