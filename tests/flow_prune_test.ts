/**
 * Forgetting idle flow-control keys (`store/flow_prune.ts`): a prune deletes the mark and
 * last release of limit keys with nothing held or queued, and throttle entries older than
 * two days; it keeps what busy keys need, and the limits hold as before afterwards. The
 * same under a SIGKILL storm is in `flow_runs_process_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, pipeline, type RunRecord, step } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";
import type { Kv } from "../lib/kv/kv.ts";
import { type FlowPruneCursor, FORGET_AFTER_MS, pruneFlowKeys } from "../lib/store/flow_prune.ts";

const pause = () => new Promise((r) => setTimeout(r, 5));

/** Which of the keys of scope `tenant` have a mark, and which a last release. */
async function limitState(
  kv: Kv,
  names: string[],
): Promise<{ marks: string[]; releases: string[] }> {
  const marks: string[] = [];
  const releases: string[] = [];
  for (const name of names) {
    const [mark, last] = await kv.getMany([
      keys.limitQueueMark("tenant", name),
      keys.limitRelease("tenant", name),
    ]);
    if (mark.versionstamp !== null) marks.push(name);
    if (last.versionstamp !== null) releases.push(name);
  }
  return { marks, releases };
}

Deno.test("a prune forgets the state of idle limit keys and old throttle entries, keeps what busy keys need, and the limits hold after", async () => {
  let release!: () => void;
  const holding = new Promise<void>((r) => release = r);
  let running = 0;
  let most = 0;
  const tenant = pipeline("tenant", {
    params: z.object({ key: z.string() }),
    limit: { key: (params: { key: string }) => params.key, max: 1 },
    throttle: { key: (params: { key: string }) => params.key, max: 5, per: "1h" },
    steps: [
      step("work", async (_inputs, ctx) => {
        running++;
        most = Math.max(most, running);
        if ((ctx.run.params as { key: string }).key === "busy") await holding;
        else await new Promise((r) => setTimeout(r, 20));
        running--;
        return 1;
      }),
    ],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [tenant] });
  engine.start();
  const kv = engine.store.kv;
  const until = async (id: string, done: (r: RunRecord) => boolean) => {
    let run = (await engine.getRun(id))!;
    const giveUp = Date.now() + 20_000;
    while (!done(run) && Date.now() < giveUp) {
      await pause();
      run = (await engine.getRun(id))!;
    }
    assert.ok(done(run), `run ${id} is ${run.status}`);
    return run;
  };
  // five keys that had a run each and are idle now
  const idle = ["k0", "k1", "k2", "k3", "k4"];
  for (const key of idle) {
    const run = await engine.store.createRun(tenant, { params: { key } });
    await until(run.id, (r) => r.status === "succeeded");
  }
  // a busy key: a run holds its one slot, and one waits in its queue
  const holder = await engine.store.createRun(tenant, { params: { key: "busy" } });
  await until(holder.id, (r) => r.status === "running");
  const waiter = await engine.store.createRun(tenant, { params: { key: "busy" } });
  await until(waiter.id, (r) => r.held?.by === "limit");
  // a throttle entry whose last start was three days ago
  const old = keys.throttleSlot("tenant", "gone", 0);
  await kv.set(old, Date.now() - FORGET_AFTER_MS - 86_400_000);

  const names = [...idle, "busy"];
  const before = await limitState(kv, names);
  for (const key of idle) {
    assert.ok(before.marks.includes(key), `no mark of ${key} to forget`);
    assert.ok(before.releases.includes(key), `no release of ${key} to forget`);
  }
  assert.ok(before.marks.includes("busy"), "the busy key has no mark");

  const dry = await engine.prune({ dryRun: true });
  assert.deepEqual(dry.flow, { limitKeys: idle.length, throttleEntries: 1 });
  assert.deepEqual(await limitState(kv, names), before, "a dry prune deleted something");

  const report = await engine.prune();
  assert.deepEqual(report.flow, { limitKeys: idle.length, throttleEntries: 1 });
  const after = await limitState(kv, names);
  assert.deepEqual(after.marks, ["busy"], "an idle key's mark is left, or the busy one's went");
  assert.equal((await kv.get(old)).versionstamp, null, "the old throttle entry is left");
  // the idle keys' own throttle entries are minutes old: kept
  assert.notEqual((await kv.get(keys.throttleSlot("tenant", "k0", 0))).versionstamp, null);

  // the queued run starts once the holder ends, and a forgotten key limits as before
  release();
  await until(holder.id, (r) => r.status === "succeeded");
  await until(waiter.id, (r) => r.status === "succeeded");
  most = 0;
  const again = [];
  for (let i = 0; i < 4; i++) {
    again.push(await engine.store.createRun(tenant, { params: { key: "k0" } }));
  }
  for (const run of again) await until(run.id, (r) => r.status === "succeeded");
  assert.equal(most, 1, "two runs of a forgotten key ran at once");
  // the throttle of the key whose entry was forgotten still counts: five start in its
  // hour, the sixth waits
  const gone: RunRecord[] = [];
  for (let i = 0; i < 6; i++) {
    gone.push(await engine.store.createRun(tenant, { params: { key: "gone" } }));
  }
  // (which five: the order their claims took the key's one slot)
  const states = async () => {
    const runs = await Promise.all(gone.map((r) => engine.getRun(r.id)));
    return runs.map((r) => r!.status === "queued" ? `held by ${r!.held?.by}` : r!.status).sort();
  };
  const giveUp = Date.now() + 20_000;
  let seen = await states();
  const expected = [...Array(5).fill("succeeded"), "held by throttle"].sort();
  while (JSON.stringify(seen) !== JSON.stringify(expected) && Date.now() < giveUp) {
    await pause();
    seen = await states();
  }
  assert.deepEqual(seen, expected);
  // and with everything idle, a prune leaves no limit key's state behind
  await engine.prune();
  assert.deepEqual(await limitState(kv, [...names, "gone"]), { marks: [], releases: [] });
  for (const run of gone) {
    if ((await engine.getRun(run.id))!.status === "queued") await engine.store.cancel(run.id);
  }
});

Deno.test("a prune with a budget looks at that many keys and the next goes on where it stopped", async () => {
  const quick = pipeline("quick", {
    params: z.object({ key: z.string() }),
    limit: { key: (params: { key: string }) => params.key, max: 1 },
    steps: [step("work", () => 1)],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [quick] });
  const names = ["a", "b", "c", "d", "e"];
  for (const key of names) {
    const run = await engine.store.createRun(quick, { params: { key } });
    assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  }
  const kv = engine.store.kv;
  const released = async () => {
    const left = [];
    for (const key of names) {
      if ((await kv.get(keys.limitRelease("quick", key))).versionstamp !== null) left.push(key);
    }
    return left;
  };
  assert.deepEqual(await released(), names);
  const cursor: FlowPruneCursor = {};
  const forgot = [];
  for (let round = 0; round < 4; round++) {
    forgot.push((await pruneFlowKeys(kv, Date.now(), { budget: 2, cursor })).limitKeys);
    if (round === 0) assert.deepEqual(await released(), ["c", "d", "e"], "not the first two");
  }
  assert.deepEqual(forgot, [2, 2, 1, 0]);
  assert.deepEqual(await released(), []);
  assert.equal(cursor.limit, undefined, "the last round reached the end: the next starts over");
});
