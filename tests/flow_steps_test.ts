/**
 * Step-level flow control in process: a step's concurrency limit per key (across runs and
 * steps sharing a scope), its throttle per period, its release on failure and retry, a
 * key function that throws, and a wait step that takes no slot.
 *
 * @module
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { type Engine, openEngine, pipeline, type RunRecord, sleep, step } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";
import { TERMINAL } from "../lib/model/records.ts";
import { SlotNotifier } from "../lib/engine/driver/slot_notifier.ts";
import { admit, BACKSTOP_MS } from "../lib/store/flow.ts";
import { accountingRate } from "../pipelines/nightly/config.ts";
import nightly from "../pipelines/nightly/mod.ts";
import { noSlots } from "./_support/helpers.ts";

/** Bodies running per key, and the most seen at once. */
class Ledger {
  readonly running = new Map<string, number>();
  readonly most = new Map<string, number>();
  readonly starts: { key: string; at: number }[] = [];
  ended = 0;

  start(key: string): void {
    const n = (this.running.get(key) ?? 0) + 1;
    this.running.set(key, n);
    this.most.set(key, Math.max(this.most.get(key) ?? 0, n));
    this.starts.push({ key, at: Date.now() });
  }

  end(key: string): void {
    this.running.set(key, this.running.get(key)! - 1);
    this.ended++;
  }
}

function limitedFan(name: string, ledger: Ledger, opts: { scope?: string; fail?: number } = {}) {
  const items = step(
    "items",
    () => Array.from({ length: 20 }, (_, i) => ({ i, key: `k${i % 3}` })),
  );
  const work = step("work", {
    needs: { items },
    items: ({ items }) => items,
    concurrency: 10,
    retry: { attempts: 3, delay: "5ms" },
    limit: { key: (item: { key: string }) => item.key, max: 2, scope: opts.scope },
  }, async (item: { i: number; key: string }, ctx) => {
    ledger.start(item.key);
    await new Promise((r) => setTimeout(r, 5 + (item.i % 4) * 3));
    ledger.end(item.key);
    if (opts.fail !== undefined && item.i % opts.fail === 0 && ctx.attempt === 1) {
      throw new Error(`flaky ${item.i}`);
    }
    return item.i;
  });
  return pipeline(name, { steps: [items, work] });
}

Deno.test("a fan-out step limited to 2 per key runs at most 2 items of a key at once, all succeed", async () => {
  const ledger = new Ledger();
  const p = limitedFan("limited", ledger);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(ledger.ended, 20);
  for (const [key, most] of ledger.most) assert.ok(most <= 2, `${key}: ${most} at once`);
  assert.ok([...ledger.most.values()].some((m) => m === 2), "the limit is used");
  assert.equal((await engine.store.getOutput(run.id, "work") as number[]).length, 20);
  await noSlots(engine.store.kv);
});

Deno.test("two runs share a step limit, and a limited item that fails and retries releases and re-takes its slot", async () => {
  const ledger = new Ledger();
  const p = limitedFan("shared", ledger, { fail: 5 });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const a = await engine.store.createRun(p);
  const b = await engine.store.createRun(p);
  const [ea, eb] = await Promise.all([engine.runToEnd(a.id), engine.runToEnd(b.id)]);
  assert.equal(ea.status, "succeeded");
  assert.equal(eb.status, "succeeded");
  assert.equal(ledger.ended, 2 * (20 + 4), "each run retried items 0, 5, 10, 15 once");
  for (const [key, most] of ledger.most) assert.ok(most <= 2, `${key}: ${most} at once`);
  const items = await engine.store.getItems(a.id, "work");
  assert.equal(items.get(5)!.attempt, 2);
  assert.equal(items.get(5)!.slot, null, "the slot went with the attempt's end");
  await noSlots(engine.store.kv);
});

Deno.test("a scope shared by two steps limits both together", async () => {
  const ledger = new Ledger();
  const body = (tag: string) => async (item: number) => {
    ledger.start("api");
    await new Promise((r) => setTimeout(r, 4));
    ledger.end("api");
    return `${tag}${item}`;
  };
  const list = step("list", () => [1, 2, 3, 4, 5, 6]);
  const limit = { max: 2, scope: "accounting-api" };
  const one = step(
    "one",
    { needs: { list }, items: ({ list }) => list, concurrency: 6, limit },
    body("a"),
  );
  const two = step(
    "two",
    { needs: { list }, items: ({ list }) => list, concurrency: 6, limit },
    body("b"),
  );
  const p = pipeline("scoped", { steps: [list, one, two] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(ledger.ended, 12);
  assert.equal(ledger.most.get("api"), 2);
  await noSlots(engine.store.kv);
});

Deno.test("a limit key function that throws fails the step with a clear, final error", async () => {
  let calls = 0;
  const charge = step("charge", {
    retry: { attempts: 3, delay: "1ms" },
    limit: {
      key: () => {
        throw new Error("no customer");
      },
      max: 1,
    },
  }, () => calls++);
  const p = pipeline("badkey", { steps: [charge] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.equal(calls, 0, "the body never ran");
  const record = (await engine.store.getSteps(run.id)).get("charge")!;
  assert.equal(record.error?.retryable, false);
  assert.match(
    record.error!.message,
    /limit key of step 'charge' of pipeline 'badkey' could not be computed: no customer/,
  );
  await noSlots(engine.store.kv);
});

Deno.test("a step throttle lets at most N starts through per period, and drops none", async () => {
  const ledger = new Ledger();
  const list = step("list", () => Array.from({ length: 9 }, (_, i) => i));
  const call = step("call", {
    needs: { list },
    items: ({ list }) => list,
    concurrency: 9,
    throttle: { max: 3, per: "300ms" },
  }, (i: number) => {
    ledger.start("t");
    ledger.end("t");
    return i;
  });
  const p = pipeline("throttled", { steps: [list, call] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(ledger.starts.length, 9, "none dropped");
  // any window of one period holds at most 3 starts
  const at = ledger.starts.map((s) => s.at).sort((a, b) => a - b);
  for (let i = 0; i + 3 < at.length; i++) {
    assert.ok(at[i + 3] - at[i] >= 300 - 5, `starts ${i}..${i + 3} within a period: ${at}`);
  }
});

/** Processes that keep every core busy until disposed: the load CI machines run under. */
function busyCores(): AsyncDisposable {
  const busy = Array.from(
    { length: navigator.hardwareConcurrency },
    () =>
      new Deno.Command(Deno.execPath(), {
        args: ["eval", "for (;;) {}"],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn(),
  );
  return {
    async [Symbol.asyncDispose]() {
      for (const child of busy) child.kill("SIGKILL");
      await Promise.all(busy.map((child) => child.status));
    },
  };
}

Deno.test("a throttled step's items start in item order, also when they waited for the throttle on a loaded machine", async () => {
  // Under load a timer fires late: an item that finished let the next item take a freed
  // entry before the items already waiting for it, so a throttled API was called out of
  // order (the nightly's ledger rows came out of order in CI). Several runs, each spending
  // its throttle six times over.
  await using _busy = busyCores();
  for (let r = 0; r < 8; r++) {
    const order: number[] = [];
    const list = step("list", () => Array.from({ length: 20 }, (_, i) => i));
    const call = step("call", {
      needs: { list },
      items: ({ list }) => list,
      concurrency: 4,
      throttle: { max: 3, per: "100ms", scope: `ordered-${r}` },
    }, (i: number) => {
      order.push(i);
      return i;
    });
    const p = pipeline("in-order", { steps: [list, call] });
    await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
    const run = await engine.store.createRun(p);
    assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
    assert.deepEqual(order, Array.from({ length: 20 }, (_, i) => i), `round ${r}`);
  }
});

Deno.test("a wait step is not held by step flow control", async () => {
  const nap = sleep("nap", { for: "1ms" });
  const after = step("after", { needs: { nap }, limit: { max: 1 } }, () => "done");
  const p = pipeline("waits", { steps: [nap, after] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(await engine.store.getOutput(run.id, "after"), "done");
  await noSlots(engine.store.kv);
});

Deno.test("a cancel frees the step limit slot of a running attempt, and a waiting run then takes it", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  let bodies = 0;
  const slow = step("slow", { limit: { max: 1, scope: "one-at-a-time" } }, async (_i, ctx) => {
    bodies++;
    if (bodies === 1) {
      await Promise.race([gate, new Promise((r) => ctx.signal.addEventListener("abort", r))]);
    }
    return bodies;
  });
  const p = pipeline("cancelled", { steps: [slow] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const first = await engine.store.createRun(p);
  const firstEnd = engine.runToEnd(first.id);
  const kv = engine.store.kv;
  const slots = async () => {
    const out = [];
    for await (const e of kv.list({ prefix: keys.allSlotsPrefix() })) out.push(e);
    return out;
  };
  while ((await slots()).length === 0) await new Promise((r) => setTimeout(r, 5));
  const second = await engine.store.createRun(p);
  const secondEnd = engine.runToEnd(second.id);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(bodies, 1, "the second run waits for the slot");
  assert.notEqual((await engine.store.getSteps(second.id)).get("slow")?.status, "running");
  await engine.store.cancel(first.id);
  assert.ok(
    (await slots()).every((e) => (e.value as { run: string }).run !== first.id),
    "the cancel's commit freed the slot",
  );
  assert.equal((await firstEnd).status, "cancelled");
  assert.equal((await secondEnd).status, "succeeded");
  release();
  assert.equal(bodies, 2);
  assert.deepEqual(await slots(), []);
});

Deno.test("a cancel of a run holding slots of a large step limit clears them from its worker's record, so blind picks go on", async () => {
  const MAX = 16;
  let started = 0;
  const list = step("list", () => Array.from({ length: 8 }, (_, i) => i));
  const hold = step("hold", {
    needs: { list },
    items: ({ list }) => list,
    concurrency: 8,
    limit: { key: () => "k", max: MAX, scope: "wide" },
  }, async (i: number, ctx) => {
    started++;
    await new Promise((r) => ctx.signal.addEventListener("abort", r));
    return i;
  });
  const p = pipeline("held-wide", { steps: [list, hold] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const slots = engine.worker.slots;
  // a blind pick with nothing held is the worker's starting point
  const start = slots.blindPick("wide", "k", MAX, Date.now());
  const run = await engine.store.createRun(p);
  const end = engine.runToEnd(run.id);
  while (started < 8) await new Promise((r) => setTimeout(r, 5));
  // half the slots held here: blind picks stop, takes read KV
  assert.equal(slots.blindPick("wide", "k", MAX, Date.now()), -1);
  await engine.store.cancel(run.id);
  assert.equal((await end).status, "cancelled");
  assert.equal(
    slots.blindPick("wide", "k", MAX, Date.now()),
    start,
    "the cancelled run's slots still look held by this worker",
  );
});

Deno.test("KVFLOW_ACCOUNTING_RATE sets the nightly's accounting throttle; a bad value is a clear TypeError", () => {
  const before = Deno.env.get("KVFLOW_ACCOUNTING_RATE");
  try {
    Deno.env.delete("KVFLOW_ACCOUNTING_RATE");
    assert.equal(accountingRate(), 10);
    Deno.env.set("KVFLOW_ACCOUNTING_RATE", "3");
    assert.equal(accountingRate(), 3);
    for (const bad of ["0", "2.5", "fast", "1001"]) {
      Deno.env.set("KVFLOW_ACCOUNTING_RATE", bad);
      assert.throws(
        () => accountingRate(),
        (e: unknown) =>
          e instanceof TypeError &&
          /Invalid KVFLOW_ACCOUNTING_RATE of pipeline 'nightly'.*from 1 to 1000/.test(e.message),
      );
    }
  } finally {
    if (before === undefined) Deno.env.delete("KVFLOW_ACCOUNTING_RATE");
    else Deno.env.set("KVFLOW_ACCOUNTING_RATE", before);
  }
  const throttle = nightly.flow.steps.get("update-accounting")!.throttle!;
  assert.deepEqual([throttle.scope, throttle.max, throttle.perMs], ["accounting-api", 10, 1000]);
});

Deno.test("a run limit and a step limit sharing a scope hold its one slot one at a time, though claims and starts share grouped commits", async () => {
  const ledger = new Ledger();
  const body = async () => {
    ledger.start("shared");
    await new Promise((r) => setTimeout(r, 2));
    ledger.end("shared");
    return 1;
  };
  // a run of `whole` holds the slot from its claim to its end; a `part` attempt while it runs
  const whole = pipeline("whole", {
    limit: { key: () => "k", max: 1, scope: "shared" },
    steps: [step("all", body)],
  });
  const part = pipeline("part", {
    steps: [step("one", { limit: { key: () => "k", max: 1, scope: "shared" } }, body)],
  });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [whole, part],
    maxRuns: 64,
    onAlert: () => {},
  });
  const runs = [];
  for (let i = 0; i < 30; i++) {
    runs.push(await engine.store.createRun(whole), await engine.store.createRun(part));
  }
  const ended = await Promise.all(runs.map((r) => engine.runToEnd(r.id)));
  assert.deepEqual(ended.filter((r) => r.status !== "succeeded").map((r) => r.id), []);
  assert.equal(ledger.ended, 60);
  assert.equal(ledger.most.get("shared"), 1, "two holders of the one slot ran at once");
  await noSlots(engine.store.kv);
});

Deno.test("a run's claim does not pick a slot of a shared scope that a step start of this process is taking", async () => {
  const whole = pipeline("whole", {
    limit: { key: () => "k", max: 2, scope: "shared" },
    steps: [step("all", () => 1)],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [whole] });
  const run = engine.store.newRun(whole, {});
  // a step's start under a step limit of the same scope picked slot 0, its commit in flight
  const steps = new SlotNotifier();
  assert.ok(steps.reserve("slot", "shared", "k", 0));
  try {
    const admission = await admit(engine.kv, run, Date.now());
    assert.ok(admission.start);
    assert.equal(admission.slot, 1, "the claim picked the slot the start is taking");
    // and the claim's pick is reserved for the step starts in turn, until its commit is done
    assert.equal(steps.reserve("slot", "shared", "k", 1), false);
    admission.done();
    assert.ok(steps.reserve("slot", "shared", "k", 1));
    steps.unreserve("slot", "shared", "k", 1);
  } finally {
    steps.unreserve("slot", "shared", "k", 0);
  }
});

Deno.test("a large limit's slot is picked without a read; a pick that meets another holder's slot starts on a free one and turns picks of the key off", async () => {
  const MAX = 16;
  const scope = "wide-miss";
  const held: unknown[] = [];
  const one = step("one", { limit: { key: () => "k", max: MAX, scope } }, async () => {
    for await (const e of engine.store.kv.list({ prefix: keys.slotPrefix(scope, "k") })) {
      held.push(e.key[e.key.length - 1]);
    }
    return "ran";
  });
  const two = step("two", { needs: { one }, limit: { key: () => "k", max: MAX, scope } }, () => 2);
  const p = pipeline("wide-miss", { steps: [one, two] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const slots = engine.worker.slots;
  // the slot this worker picks first, held by a holder elsewhere
  const taken = slots.blindPick(scope, "k", MAX, Date.now());
  assert.ok(taken >= 0);
  const foreign = { run: "elsewhere", step: "one", item: -1, attempt: 1, at: 0 };
  await engine.store.kv.set(keys.slot(scope, "k", taken), foreign);
  const run = await engine.store.createRun(p);
  const end = await engine.runToEnd(run.id);
  assert.equal(end.status, "succeeded");
  const steps = await engine.store.getSteps(run.id);
  // the conflict cost no attempt
  assert.deepEqual([steps.get("one")?.attempt, steps.get("two")?.attempt], [1, 1]);
  assert.equal(held.length, 2, "the foreign slot and the one the step took");
  assert.ok(held.includes(taken) && held.some((i) => i !== taken));
  assert.equal(slots.blindPick(scope, "k", MAX, Date.now()), -1, "picks of the key are off");
  // the foreign holder's slot is untouched; the steps' slots were freed at their ends
  const left = [];
  for await (const e of engine.store.kv.list({ prefix: keys.slotPrefix(scope, "k") })) {
    left.push([e.key[e.key.length - 1], e.value]);
  }
  assert.deepEqual(left, [[taken, foreign]]);
});

/**
 * A scope with three slots for runs, of which a step may hold one: two runs and the step
 * hold all three, and a third run queues. `free` lets the step's slot go (its end, or a
 * cancel of its run) and tells when; the queued run must start long before its backstop.
 */
async function queuedBehindSharedStep(
  free: (
    engine: Engine,
    part: { id: string },
    releaseStep: () => void,
    freedAt: () => number,
  ) => Promise<number>,
): Promise<void> {
  let releaseStep!: () => void;
  const stepHolds = new Promise<void>((r) => releaseStep = r);
  let releaseRuns!: () => void;
  const runsHold = new Promise<void>((r) => releaseRuns = r);
  let partEnded = 0;
  const part = pipeline("part", {
    steps: [
      step("one", { limit: { key: () => "k", max: 1, scope: "shared" } }, async (_i, ctx) => {
        await Promise.race([
          stepHolds,
          new Promise((r) => ctx.signal.addEventListener("abort", r)),
        ]);
        partEnded = Date.now();
        return 1;
      }),
    ],
  });
  const whole = pipeline("whole", {
    params: z.object({ hold: z.boolean() }),
    limit: { key: () => "k", max: 3, scope: "shared" },
    steps: [
      step("all", async (_inputs, ctx) => {
        if ((ctx.run.params as { hold: boolean }).hold) await runsHold;
        return 1;
      }),
    ],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [whole, part] });
  engine.start();
  const pause = () => new Promise((r) => setTimeout(r, 5));
  const until = async (id: string, done: (r: RunRecord) => boolean) => {
    let run = (await engine.getRun(id))!;
    const giveUp = Date.now() + 2 * BACKSTOP_MS;
    while (!done(run) && Date.now() < giveUp) {
      await pause();
      run = (await engine.getRun(id))!;
    }
    assert.ok(done(run), `run ${id} is ${run.status}`);
    return run;
  };
  const first = await engine.store.createRun(part);
  await until(first.id, (r) => r.status === "running");
  const holders = [];
  for (let i = 0; i < 2; i++) {
    const run = await engine.store.createRun(whole, { params: { hold: true } });
    await until(run.id, (r) => r.status === "running");
    holders.push(run);
  }
  // the runs and the step hold the scope's three slots: the next run queues
  const queued = await engine.store.createRun(whole, { params: { hold: false } });
  await until(queued.id, (r) => r.held?.by === "limit");
  const freed = await free(engine, first, releaseStep, () => partEnded);
  // the worker starts it (runToEnd would drive it at once, whatever held it)
  const ended = await until(queued.id, (r) => r.status === "succeeded");
  const waited = ended.startedAt! - freed;
  assert.ok(
    waited < BACKSTOP_MS / 2,
    `the queued run started ${waited} ms after the step's slot was freed (backstop ${BACKSTOP_MS} ms)`,
  );
  releaseRuns();
  releaseStep();
  for (const run of [first, ...holders]) await until(run.id, (r) => TERMINAL.has(r.status));
  await noSlots(engine.store.kv);
}

Deno.test("a step's end in a scope shared with a run limit starts the run that queued for its slot at once, not after the backstop", async () => {
  await queuedBehindSharedStep(async (_engine, _part, releaseStep, freedAt) => {
    releaseStep();
    while (freedAt() === 0) await new Promise((r) => setTimeout(r, 1));
    return freedAt();
  });
});

Deno.test("a cancel of a run whose step holds a slot of a scope shared with a run limit starts the run queued for it, not after the backstop", async () => {
  await queuedBehindSharedStep(async (engine, part) => {
    const at = Date.now();
    await engine.store.cancel(part.id);
    return at;
  });
});
