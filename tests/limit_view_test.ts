/**
 * Claims under a run limit that commit without reading (`store/limit_view.ts`): a process
 * that knows a key to be unreached picks a slot from what it knows, and its commit checks
 * only the key's mark. Two stores on one KV stand for two processes: each has its own
 * view, and what the other does must make a stale view's pick fail, never let it start a
 * run past the limit or ahead of a queued one. And a claim and a wake-up of one queued
 * run in one process, which check the same run record, never share a grouped commit.
 *
 * @module
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";
import type { RunRecord, SlotHolder } from "../lib/model/records.ts";
import { Store } from "../lib/store/store.ts";
import { wakeQueued } from "../lib/store/flow.ts";
import { waitFor } from "./_support/helpers.ts";

const keyed = z.object({ key: z.string() });

const holder = (owner: string) => ({ owner, host: "test", pid: 0 });

/** A one-step pipeline under a run limit of `max` per `key` param. */
function limited(name: string, max: number) {
  return pipeline(name, {
    params: keyed,
    limit: { key: (params) => params.key, max },
    steps: [step("one", () => 1)],
  });
}

/** The run as a sweep would read it, for a claim without a read. */
async function seen(kv: Deno.Kv, runId: string): Promise<Deno.KvEntry<RunRecord>> {
  return await kv.get<RunRecord>(keys.run(runId)) as Deno.KvEntry<RunRecord>;
}

async function heldSlots(kv: Deno.Kv, scope: string, key: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of kv.list<SlotHolder>({ prefix: keys.slotPrefix(scope, key) })) {
    out.push(e.value.run);
  }
  return out;
}

Deno.test("a burst of claims of an unreached run limit reads each key once, and takes distinct slots", async () => {
  const p = limited("view-burst", 10);
  const kv = await Deno.openKv(":memory:");
  try {
    const store = new Store(kv);
    const runs: RunRecord[] = [];
    for (let i = 0; i < 24; i++) {
      runs.push(await store.createRun(p, { params: { key: `k${i % 3}` } }));
    }
    const entries = await Promise.all(runs.map((r) => seen(kv, r.id)));
    // all at once, as a sweep claims what it found due
    const claims = await Promise.all(
      runs.map((r, i) => store.claim(r.id, holder("a"), 60_000, p.name, entries[i])),
    );
    assert.ok(claims.every((c) => c !== null), "every claim of an unreached limit starts");
    assert.deepEqual(store.limits.stats, { reads: 3, picks: 24, missed: 0 });
    for (let k = 0; k < 3; k++) {
      const held = await heldSlots(kv, p.name, `k${k}`);
      assert.equal(held.length, 8, `key k${k}: ${held.length} slots held`);
    }
    const slots = claims.map((c) => `${(c!.run.params as { key: string }).key}:${c!.run.slot}`);
    assert.equal(new Set(slots).size, 24, "two claims took one slot");
  } finally {
    kv.close();
  }
});

Deno.test("a stale view never starts a run ahead of one another process queued, nor past the limit", async () => {
  const p = limited("view-fcfs", 1);
  const kv = await Deno.openKv(":memory:");
  try {
    const a = new Store(kv), b = new Store(kv);
    // A learns the key: its first run starts from its view, and ends (cancelled here)
    const first = await a.createRun(p, { params: { key: "k" } });
    assert.ok(await a.claim(first.id, holder("a"), 60_000, p.name, await seen(kv, first.id)));
    await a.cancel(first.id);
    a.limits.freed({ scope: p.name, key: "k" }, 0); // as the end of a run A drives tells it
    // B, another process: its run takes the one slot, and the next run queues behind it
    const other = await b.createRun(p, { params: { key: "k" } });
    const queued = await b.createRun(p, { params: { key: "k" } });
    assert.ok(await b.claim(other.id, holder("b"), 60_000, p.name));
    assert.equal(await b.claim(queued.id, holder("b"), 60_000, p.name), null);
    assert.equal((await b.getRun(queued.id))!.held?.by, "limit");
    // A's view still says the slot is free and nobody waits: its pick must fail
    const late = await a.createRun(p, { params: { key: "k" } });
    const claim = await a.claim(late.id, holder("a"), 60_000, p.name, await seen(kv, late.id));
    assert.equal(claim, null, "a stale view started a run");
    assert.equal(a.limits.stats.missed, 1);
    assert.deepEqual(await heldSlots(kv, p.name, "k"), [other.id]);
    const lateRun = (await a.getRun(late.id))!;
    assert.equal(lateRun.status, "queued");
    assert.equal(lateRun.held?.by, "limit", "the late run is held by the limit");
    // the slot frees: the run that queued first starts, the late one still waits
    await b.cancel(other.id);
    assert.ok(await b.claim(queued.id, holder("b"), 60_000, p.name), "the first queued starts");
    assert.equal(await a.claim(late.id, holder("a"), 60_000, p.name), null);
    assert.deepEqual(await heldSlots(kv, p.name, "k"), [queued.id]);
  } finally {
    kv.close();
  }
});

Deno.test("a view follows its own claims: a key's claims spread over several commits all start from one read", async () => {
  const p = limited("view-follow", 40);
  const kv = await Deno.openKv(":memory:");
  try {
    const store = new Store(kv);
    const claimOne = async () => {
      const run = await store.createRun(p, { params: { key: "k" } });
      return await store.claim(run.id, holder("a"), 60_000, p.name, await seen(kv, run.id));
    };
    // one after another: each commit moves the mark, and the view moves with it
    for (let i = 0; i < 5; i++) assert.ok(await claimOne(), `claim ${i}`);
    assert.deepEqual(store.limits.stats, { reads: 1, picks: 5, missed: 0 });
    // another process's take moves the mark too: the next pick fails and the key is read
    // again (after the pause of picks that a failure starts)
    const other = new Store(kv);
    const run = await other.createRun(p, { params: { key: "k" } });
    const taken = await other.claim(run.id, holder("b"), 60_000, p.name);
    assert.equal(taken?.run.slot, 5, "a claim that reads takes the lowest free slot");
    const next = await claimOne();
    assert.ok(next, "a failed pick falls back to a claim that reads");
    assert.equal(store.limits.stats.missed, 1);
    assert.notEqual(next.run.slot, 5);
    assert.equal((await heldSlots(kv, p.name, "k")).length, 7);
  } finally {
    kv.close();
  }
});

Deno.test("a step's start in a scope it names shared with a run limit moves the key's mark: a stale pick fails", async () => {
  const runs = pipeline("mark-runs", {
    params: keyed,
    limit: { key: (params) => params.key, max: 2, scope: "mailer" },
    steps: [step("send", () => 1)],
  });
  const entered = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const steps = pipeline("mark-steps", {
    steps: [
      step("send", { limit: { key: () => "k", max: 2, scope: "mailer" } }, async () => {
        entered.resolve();
        await release.promise;
      }),
    ],
  });
  // the engine knows only the step's pipeline: the runs under the run limit are this
  // test's to claim, as another process's would be
  await using engine = await openEngine({ path: ":memory:", pipelines: [steps], pollMs: 20 });
  const a = new Store(engine.kv);
  const first = await a.createRun(runs, { params: { key: "k" } });
  const claimed = await a.claim(
    first.id,
    holder("a"),
    60_000,
    runs.name,
    await seen(engine.kv, first.id),
  );
  assert.equal(claimed?.run.slot, 0);
  engine.start();
  const stepRun = await engine.trigger(steps.name);
  await entered.promise;
  // the step holds slot 1; A's view does not know it
  const late = await a.createRun(runs, { params: { key: "k" } });
  const claim = await a.claim(
    late.id,
    holder("a"),
    60_000,
    runs.name,
    await seen(engine.kv, late.id),
  );
  assert.equal(claim, null, "a pick took the slot a step holds");
  assert.equal(a.limits.stats.missed, 1);
  assert.equal((await a.getRun(late.id))!.held?.by, "limit");
  assert.deepEqual(
    (await heldSlots(engine.kv, "mailer", "k")).sort(),
    [first.id, stepRun.id].sort(),
  );
  release.resolve();
  assert.equal((await engine.runToEnd(stepRun.id)).status, "succeeded");
});

Deno.test("a run limit and a step limit sharing a named scope never hold more than its slots together", async () => {
  let now = 0, most = 0;
  const enter = async () => {
    most = Math.max(most, ++now);
    await new Promise((r) => setTimeout(r, 5 + Math.random() * 15));
    now--;
  };
  const runs = pipeline("shared-runs", {
    params: keyed,
    limit: { key: (params) => params.key, max: 2, scope: "mailer" },
    steps: [step("send", () => enter())],
  });
  const steps = pipeline("shared-steps", {
    params: keyed,
    steps: [
      step("send", {
        limit: { key: () => "k", max: 2, scope: "mailer" },
        retry: { attempts: 1 },
      }, () => enter()),
    ],
  });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [runs, steps],
    pollMs: 20,
  });
  const ids: string[] = [];
  for (let i = 0; i < 12; i++) {
    const p = i % 2 === 0 ? runs : steps;
    ids.push((await engine.trigger(p.name, { params: { key: "k" } })).id);
  }
  engine.start();
  await waitFor("every run ended", async () => {
    const all = await Promise.all(ids.map((id) => engine.getRun(id)));
    return all.every((r) => r?.status === "succeeded" || r?.status === "failed");
  }, 30_000);
  for (const id of ids) assert.equal((await engine.getRun(id))!.status, "succeeded");
  assert.ok(most <= 2, `${most} holders of the scope's 2 slots at once`);
  assert.equal(most, 2, "the limit was reached");
  assert.deepEqual(await heldSlots(engine.kv, "mailer", "k"), []);
});

Deno.test("when a grouped commit fails, the claims of one key picked from a view all still start: their parts are committed one after another", async () => {
  const p = limited("view-fallback", 10);
  const plain = pipeline("view-plain", { steps: [step("one", () => 1)] });
  const kv = await Deno.openKv(":memory:");
  try {
    const a = new Store(kv), b = new Store(kv);
    // A learns the key
    const first = await a.createRun(p, { params: { key: "k" } });
    assert.ok(await a.claim(first.id, holder("a"), 60_000, p.name, await seen(kv, first.id)));
    // a plain run A read as due, then claimed by B: A's claim of it will fail its check
    const stolen = await a.createRun(plain);
    const stale = await seen(kv, stolen.id);
    assert.ok(await b.claim(stolen.id, holder("b"), 60_000, plain.name));
    const runs: RunRecord[] = [];
    for (let i = 0; i < 5; i++) runs.push(await a.createRun(p, { params: { key: "k" } }));
    const entries = await Promise.all(runs.map((r) => seen(kv, r.id)));
    // one commit in flight, so that the others are grouped behind it: the stale claim and
    // the five picks share a commit, which fails, and each part is committed alone
    const busy = a.committer.commit({
      checks: 0,
      mutations: 1,
      bytes: 10,
      apply: (op) => op.set(["x"], 1),
    });
    const claims = await Promise.all([
      a.claim(stolen.id, holder("a"), 60_000, plain.name, stale),
      ...runs.map((r, i) => a.claim(r.id, holder("a"), 60_000, p.name, entries[i])),
    ]);
    await busy;
    assert.equal(a.committer.stats.fallbacks, 1, "the grouped commit did not fail");
    assert.equal(claims[0], null);
    assert.deepEqual(claims.slice(1).map((c) => c?.run.status), Array(5).fill("running"));
    assert.equal(a.limits.stats.missed, 0, "a pick failed after its group did");
    assert.equal(a.limits.stats.picks, 6);
  } finally {
    kv.close();
  }
});

Deno.test("a run's end tells its process's view of the key that its slot is free in the turn the end is durable", async () => {
  const p = limited("view-end", 1);
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    pollMs: 20,
    onAlert: () => {},
  });
  const limit = { scope: p.name, key: "k", max: 1 };
  // what a pick from the view finds free, looked at right after the end is told: before
  // any read of KV can end, and so before a take of this process could have read the slot
  // free and held it again (a view told later would then free a slot held)
  const found: (number | null)[] = [];
  engine.subscribe((event) => {
    if (event.type !== "run" || event.run.status !== "succeeded") return;
    queueMicrotask(() => {
      engine.store.limits.pick(engine.store.kv, limit, Date.now()).then((pick) => {
        found.push(pick?.index ?? null);
        pick?.done(false);
      });
    });
  });
  engine.start();
  const first = await engine.store.createRun(p, { params: { key: "k" } });
  await waitFor(
    "the run's end",
    async () => (await engine.getRun(first.id))?.status === "succeeded",
  );
  await waitFor("the pick after it", () => found.length === 1);
  // the sweep's claim picked from the view (one read of the key), and its end freed slot 0
  assert.deepEqual(engine.store.limits.stats, { reads: 1, picks: 1, missed: 1 });
  assert.deepEqual(found, [0]);
});

Deno.test("a queued run's wake-up and its claim in one process never share a commit: a claimed run is never recorded queued again", async () => {
  const p = limited("wake-claim", 1);
  const limit = { scope: p.name, key: "k", max: 1 };
  for (let i = 0; i < 12; i++) {
    const kv = await Deno.openKv(":memory:");
    try {
      const store = new Store(kv);
      const first = await store.createRun(p, { params: { key: "k" } });
      assert.ok(await store.claim(first.id, holder("a"), 60_000, p.name));
      const queued = await store.createRun(p, { params: { key: "k" } });
      assert.equal(await store.claim(queued.id, holder("a"), 60_000, p.name), null);
      await store.cancel(first.id); // its slot frees: the queued run may start
      // other commits keep the committer busy, so that the claim and the wake-up queue
      // behind one and would be grouped
      let busy = true;
      const filler = (async () => {
        while (busy) {
          await store.committer.commit({
            checks: 0,
            mutations: 1,
            bytes: 64,
            apply: (op) => op.set(["filler"], i),
          });
        }
      })();
      const [claim] = await Promise.all([
        store.claim(queued.id, holder("a"), 60_000, p.name),
        wakeQueued(kv, limit, Date.now()),
      ]);
      busy = false;
      await filler;
      const run = (await store.getRun(queued.id))!;
      const held = await heldSlots(kv, p.name, "k");
      if (claim) assert.equal(run.status, "running", `round ${i}: claimed, yet recorded queued`);
      if (held.includes(queued.id)) {
        assert.equal(run.slot, 0, `round ${i}: its slot is held, yet its record has none`);
      }
    } finally {
      kv.close();
    }
  }
});
