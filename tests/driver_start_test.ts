/**
 * A driver is told of a delivery (an event, a child's end) while it is still loading its
 * run's steps: the claim put it in the worker's hands, and a notify from this process can
 * come before its step graph exists. KV here is a real file whose step reads the test can
 * hold for a moment, so the notify lands inside that window every time.
 *
 * @module
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, pipeline, step, waitFor } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";

const go = waitFor("go", {
  events: { "start.go": z.object({ n: z.number() }) },
  timeout: "1d",
});
const done = step("done", { needs: { go } }, ({ go }) => ({ got: go.data?.n ?? null }));
const gated = pipeline("start-gated", { steps: [go, done] });

/** A real KV whose list of one run's steps waits until the test lets it go. */
function holdingSteps(kv: Deno.Kv) {
  let held: { runId: string; entered: () => void; release: Promise<void> } | null = null;
  const list = kv.list.bind(kv);
  const wrapped = new Proxy(kv, {
    get(target, name) {
      if (name !== "list") {
        const value = Reflect.get(target, name, target);
        return typeof value === "function" ? value.bind(target) : value;
      }
      return (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
        const hold = held;
        const prefix = "prefix" in selector ? selector.prefix : undefined;
        if (!hold || JSON.stringify(prefix) !== JSON.stringify(keys.stepPrefix(hold.runId))) {
          return list(selector, options);
        }
        held = null;
        hold.entered();
        return (async function* () {
          await hold.release;
          yield* list(selector, options);
        })();
      };
    },
  });
  return {
    kv: wrapped,
    /** Holds the next list of the run's steps; resolves `entered` once it began. */
    hold(runId: string) {
      let release!: () => void;
      let entered!: () => void;
      const began = new Promise<void>((r) => (entered = r));
      held = { runId, entered, release: new Promise<void>((r) => (release = r)) };
      return { began, release };
    },
  };
}

Deno.test("a notify that comes while a claimed run's steps are loading neither ends the run nor drops its delivery", async () => {
  const dir = await Deno.makeTempDir();
  const raw = await Deno.openKv(`${dir}/kv.sqlite`);
  try {
    const { kv, hold } = holdingSteps(raw);
    await using engine = await openEngine({
      pipelines: [gated],
      kv,
      queues: false,
      pollMs: 20,
    });
    engine.start();
    const run = await engine.trigger("start-gated");
    for (let i = 0; i < 300 && (await engine.getRun(run.id))?.status !== "waiting"; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal((await engine.getRun(run.id))?.status, "waiting");
    // the event rings the run's bell: a worker claims it, and loads its steps (held here)
    const { began, release } = hold(run.id);
    let meanwhile;
    const inbox: Deno.KvKey[] = [];
    try {
      await engine.send("start.go", { n: 7 });
      await began;
      // the driver is in the worker's hands, its graph not built: a notify comes now
      engine.worker.notify(run.id);
      await new Promise((r) => setTimeout(r, 100));
      meanwhile = await engine.getRun(run.id);
      for await (const e of raw.list({ prefix: keys.inboxPrefix(run.id) })) inbox.push(e.key);
    } finally {
      release();
    }
    // nothing happened to the run meanwhile: still running, its delivery in its inbox
    assert.equal(meanwhile?.status, "running");
    assert.equal(inbox.length, 1, "the delivery is still in the inbox");
    let ended = await engine.getRun(run.id);
    for (let i = 0; i < 300 && ended?.status !== "succeeded" && ended?.status !== "failed"; i++) {
      await new Promise((r) => setTimeout(r, 10));
      ended = await engine.getRun(run.id);
    }
    assert.equal(ended?.status, "succeeded");
    assert.deepEqual(await engine.output(run.id, "done"), { got: 7 });
  } finally {
    raw.close();
    await Deno.remove(dir, { recursive: true });
  }
});
