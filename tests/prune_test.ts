/**
 * Retention and pruning with real parts (KV files, engines on their own KV handles, the
 * CLI as a subprocess): after a prune by hand and after background retention, a scan of
 * the whole KV finds nothing of the pruned runs and every index agrees with the runs that
 * are left; active runs are untouched and still complete; a prune racing a resume leaves
 * the run whole or gone whole.
 */
import assert from "node:assert/strict";
import { z } from "zod";
import {
  type Engine,
  invoke,
  openEngine,
  type Pipeline,
  pipeline,
  step,
  waitFor,
} from "../lib/mod.ts";
import { TestClock } from "../lib/testing/mod.ts";
import { COUNTED } from "../lib/kv/indexes.ts";
import type { RunRecord, SlotHolder } from "../lib/model/records.ts";
import type { EventRecord } from "../lib/model/events.ts";
import { triggerDebounced } from "../lib/store/debounce.ts";
import { HeadSightings, pruneWaitHeads } from "../lib/store/events.ts";
import { deferred, tempKv, waitFor as until } from "./_support/helpers.ts";
import { Sandbox } from "./_support/harness.ts";
import { startService } from "./_support/http.ts";

const lines = (text: string) => text.split("\n").filter((l) => l.trim() !== "");

const DAY = 86_400_000;
const START = Date.parse("2026-11-02T03:00:00Z");

// ---- pipelines that own every kind of key --------------------------------------------

const load = step("load", async (_inputs, ctx) => {
  ctx.log.info("loading");
  // over the inline size: stored as blob chunks
  const bytes = new Uint8Array(150_000).fill(7);
  const file = await ctx.artifact("dump.bin", bytes);
  return { file, big: "x".repeat(70_000) };
});
const fan = step("fan", { needs: { load }, items: () => [1, 2, 3] }, (n: number) => n * 2);
const work = pipeline("work", {
  steps: [load, fan],
  retention: { succeeded: "1d", failed: "2d", cancelled: "1d" },
});

let failing = true;
const flakyStep = step("boom", { retry: { attempts: 1 } }, () => {
  if (failing) throw new Error("boom");
  return "fixed";
});
const flaky = pipeline("flaky", {
  steps: [flakyStep],
  retention: { succeeded: "1d", failed: "2d", cancelled: "1d" },
});

const approval = waitFor("approval", {
  events: { "p.approved": z.object({ key: z.string() }) },
  match: { field: "key", equals: (_inputs, run) => String(run.params.key) },
  timeout: "30d",
});
const gate = pipeline("gate", {
  params: z.object({ key: z.string() }),
  steps: [approval],
  retention: { succeeded: "1d" },
});

const kidStep = step("kid-step", (_inputs, ctx) => ctx.run.id);
const kid = pipeline("kid", { steps: [kidStep], result: kidStep, retention: { succeeded: "1d" } });
const callKid = invoke("call-kid", { pipeline: kid, params: () => ({}) });
const parent = pipeline("parent", { steps: [callKid], retention: { succeeded: "1d" } });

const held = { gate: deferred() };
const holdStep = step("hold", async () => {
  await held.gate.promise;
  return "held";
});
const hold = pipeline("hold", { steps: [holdStep], retention: { succeeded: "1d" } });

// flow control: a run limit and a run throttle per customer (from the params), and a step
// with a step limit and a step throttle per customer (from its inputs); a run with
// `hold` parks after its charge, keeping its run slot, until its customer's settlement
const customerOf = step("customer", (_inputs, ctx) => String(ctx.run.params.customer));
const charge = step("charge", {
  needs: { customer: customerOf },
  limit: { key: ({ customer }) => customer, max: 1 },
  throttle: { key: ({ customer }) => customer, max: 100, per: "1m" },
  retry: { attempts: 1 },
}, ({ customer }, ctx) => {
  if (ctx.run.params.decline) throw new Error(`card of ${customer} declined`);
  return `charged ${customer}`;
});
const settled = waitFor("settled", {
  needs: { charge },
  events: { "m.settled": z.object({ customer: z.string() }) },
  match: { field: "customer", equals: (_inputs, run) => String(run.params.customer) },
  when: (_inputs, run) => run.params.hold === true,
  timeout: "30d",
});
const metered = pipeline("metered", {
  params: z.object({
    customer: z.string(),
    hold: z.boolean().optional(),
    decline: z.boolean().optional(),
  }),
  steps: [customerOf, charge, settled],
  limit: { key: (p) => p.customer, max: 1 },
  throttle: { key: (p) => p.customer, max: 100, per: "1m" },
  priority: 2,
  retention: { succeeded: "1d", failed: "2d", cancelled: "1d" },
});

// debounced: HTTP requests and events of a topic gather into one run per burst
const digestStep = step("digest", { retry: { attempts: 1 } }, (_inputs, ctx) => {
  if (ctx.run.params.fail) throw new Error("digest failed");
  return String(ctx.run.params.topic);
});
const digest = pipeline("digest", {
  params: z.object({ topic: z.string(), fail: z.boolean().optional() }),
  steps: [digestStep],
  on: { "d.changed": (data: { topic: string; fail?: boolean }) => data },
  debounce: { key: (p) => p.topic, quiet: "1m" },
  retention: { succeeded: "1d", failed: "2d", cancelled: "1d" },
});
const QUIET = 60_000;

const ALL = [work, flaky, gate, kid, parent, hold, metered, digest];

// ---- the audit ----------------------------------------------------------------------

/** Every key of the database, as stored. */
async function everything(kv: Deno.Kv): Promise<Deno.KvEntry<unknown>[]> {
  return await Array.fromAsync(kv.list({ prefix: ["kvflow"] }));
}

/** A stored value as text, bigints, `Deno.KvU64`s and bytes included. */
function text(value: unknown): string {
  return JSON.stringify(value, (_key, v) => {
    if (typeof v === "bigint") return `${v}n`;
    if (v instanceof Deno.KvU64) return `${v.value}n`;
    if (v instanceof Uint8Array) return new TextDecoder().decode(v);
    if (v instanceof Map || v instanceof Set) return [...v];
    return v;
  }) ?? String(value);
}

/**
 * What of a stored value must not name a pruned run: all of it, but for an event's list
 * of the runs it started. That list is the event's own history, not the run's: the event
 * is kept for the event retention (30 days) and pruned then with its indexes and effects
 * (`pruneEvents`), its effect entries on a pruned run go with the run, and the API shows
 * only the started runs that still exist (`GET /api/events/:id`).
 */
function ownText(e: Deno.KvEntry<unknown>): string {
  if (e.key[1] === "event") {
    const { started: _started, ...rest } = e.value as EventRecord;
    return text(rest);
  }
  return text(e.value);
}

/** Whether a due-index value is a limit key's gate (it names no run of its own). */
function isGate(value: unknown): boolean {
  return typeof value === "object" && value !== null && "gate" in value;
}

/**
 * Fails on any key of a pruned run, on any value that mentions one anywhere (deep), and on
 * indexes and flow-control entries that disagree with the runs left.
 */
async function audit(kv: Deno.Kv, pruned: string[]): Promise<void> {
  const entries = await everything(kv);
  for (const e of entries) {
    const value = ownText(e);
    for (const id of pruned) {
      assert.ok(
        !e.key.some((part) => typeof part === "string" && part.includes(id)),
        `key ${JSON.stringify(e.key)} belongs to pruned run ${id}`,
      );
      assert.ok(
        !value.includes(id),
        `the value of key ${JSON.stringify(e.key)} mentions pruned run ${id}: ${
          value.slice(0, 300)
        }`,
      );
    }
  }
  const runs = new Map<string, RunRecord>();
  for (const e of entries) {
    if (e.key[1] === "run") runs.set(e.key[2] as string, e.value as RunRecord);
  }
  const counted = new Map<string, number>();
  for (const e of entries) {
    const kind = e.key[1];
    const id = kind === "runs_by_time"
      ? e.key[3]
      : kind === "runs_by_pipeline" || kind === "runs_by_status"
      ? e.key[4]
      : kind === "runs_by_pipeline_status"
      ? e.key[5]
      : kind === "due" && !isGate(e.value)
      ? e.key[3]
      : kind === "active"
      ? e.key[3]
      : null;
    if (id !== null) assert.ok(runs.has(id as string), `${JSON.stringify(e.key)} has no run`);
    // flow control: slot holders, queued runs and bursts name runs that are left
    if (kind === "slot") {
      const holder = (e.value as SlotHolder).run;
      assert.ok(runs.has(holder), `${JSON.stringify(e.key)} is held by run ${holder}, gone`);
    }
    if (kind === "limit_queue" && e.key.length === 6) {
      assert.ok(runs.has(e.value as string), `${JSON.stringify(e.key)} queues no run`);
    }
    if (kind === "debounce") {
      const burst = (e.value as { runId: string }).runId;
      assert.ok(runs.has(burst), `${JSON.stringify(e.key)} gathers into run ${burst}, gone`);
    }
    if (kind === "runs_by_pipeline_status" && e.value === COUNTED) {
      const k = `${String(e.key[2])}/${String(e.key[3])}`;
      counted.set(k, (counted.get(k) ?? 0) + 1);
    }
    assert.notEqual(kind, "pruning", "a prune left its marker");
  }
  for (const e of entries) {
    if (e.key[1] !== "run_count") continue;
    const k = `${String(e.key[2])}/${String(e.key[3])}`;
    assert.equal(Number((e.value as Deno.KvU64).value), counted.get(k) ?? 0, `count of ${k}`);
  }
  for (const run of runs.values()) {
    assert.ok(
      entries.some((e) => e.key[1] === "runs_by_pipeline_status" && e.key[5] === run.id),
      `run ${run.id} lost its index`,
    );
  }
}

async function ended(engine: Engine, pipelineName: string, params = {}): Promise<RunRecord> {
  const run = await engine.trigger(pipelineName, { params });
  return await engine.runToEnd(run.id);
}

/** Drives a run until it parks on its wait (a queue hint may be driving it already). */
async function parked(engine: Engine, runId: string): Promise<void> {
  await until(`run ${runId} parked`, async () => {
    await engine.worker.execute(runId);
    return (await engine.getRun(runId))?.status === "waiting";
  });
}

/** Drives a run until its claim finds its limit key full and queues it behind the holder. */
async function heldBack(engine: Engine, runId: string): Promise<void> {
  await until(`run ${runId} held back by its limit`, async () => {
    await engine.worker.execute(runId);
    return (await engine.getRun(runId))?.held?.by === "limit";
  });
}

/** An engine of `p` on `path` at `clock`, with events kept a day and no worker started. */
async function eventEngine(path: string, clock: TestClock, p: Pipeline<unknown>): Promise<Engine> {
  return await openEngine({ path, pipelines: [p], clock, queues: false, eventRetention: "1d" });
}

// ---- the tests ----------------------------------------------------------------------

Deno.test("prune() and background retention delete ended runs whole and leave active runs intact", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  // no queue hints: runs move only when this test drives them, or by the sweep below
  const engine = await openEngine({ path: tmp.path, pipelines: ALL, clock, queues: false });
  const other = await openEngine({ path: tmp.path, pipelines: ALL, clock, queues: false });
  try {
    // ended runs that own every kind of key
    failing = true;
    const done = [await ended(engine, "work"), await ended(engine, "work")];
    const keyed = await engine.trigger("work", { idempotencyKey: "order-17" });
    done.push(await engine.runToEnd(keyed.id));
    const failed = [await ended(engine, "flaky"), await ended(engine, "flaky")];
    const cancelled = await engine.store.cancel((await engine.trigger("work")).id);
    const withKid = await ended(engine, "parent");
    const approved = await engine.trigger("gate", { params: { key: "a" } });
    await parked(engine, approved.id);
    await engine.send("p.approved", { key: "a" });
    const approvedEnd = await engine.runToEnd(approved.id);
    for (const r of [...done, withKid, approvedEnd]) assert.equal(r.status, "succeeded");
    for (const r of failed) assert.equal(r.status, "failed");
    assert.equal(cancelled.status, "cancelled");
    const kidId = `${withKid.id}:call-kid`;
    assert.equal((await engine.getRun(kidId))?.status, "succeeded");

    // ended runs under flow control: two that ran one after the other under the customer's
    // run limit, one that failed in its limited, throttled step, one cancelled while it
    // held the customer's slot (parked) and one cancelled while queued behind it
    const charged = [
      await ended(engine, "metered", { customer: "c1" }),
      await ended(engine, "metered", { customer: "c1" }),
    ];
    for (const r of charged) assert.equal(r.status, "succeeded");
    const declined = await ended(engine, "metered", { customer: "c1", decline: true });
    assert.equal(declined.status, "failed");
    const slotHolder = await engine.trigger("metered", { params: { customer: "c1", hold: true } });
    await parked(engine, slotHolder.id);
    const behind = await engine.trigger("metered", { params: { customer: "c1" } });
    await heldBack(engine, behind.id);
    const cancelledBehind = await engine.store.cancel(behind.id);
    const cancelledHolder = await engine.store.cancel(slotHolder.id);
    const meteredCancelled = [cancelledBehind, cancelledHolder];
    for (const r of meteredCancelled) assert.equal(r.status, "cancelled");

    // debounced runs: two HTTP requests (each with its own Idempotency-Key) gather into
    // one run, as do two events; the events' burst ends with params that fail it
    const http = { params: { topic: "t1" }, trigger: "http" as const };
    const first = await triggerDebounced(engine.store, engine.pipeline("digest"), {
      ...http,
      idempotencyKey: "req-1",
    });
    const second = await triggerDebounced(engine.store, engine.pipeline("digest"), {
      ...http,
      idempotencyKey: "req-2",
    });
    assert.ok(!first.joined && second.joined);
    assert.equal(second.run.id, first.run.id);
    const sent = await engine.send("d.changed", { topic: "t2" });
    const joined = await engine.send("d.changed", { topic: "t2", fail: true });
    assert.equal(sent.started.length, 1);
    assert.deepEqual(joined.joined.map((r) => r.id), [sent.started[0].id]);
    clock.advance(QUIET + 1);
    const digested = await engine.runToEnd(first.run.id);
    assert.equal(digested.status, "succeeded");
    const digestFailed = await engine.runToEnd(sent.started[0].id);
    assert.equal(digestFailed.status, "failed");

    // active runs: queued, waiting on an event (parked), running in another engine
    const queued = await engine.trigger("hold");
    const waiting = await engine.trigger("gate", { params: { key: "b" } });
    await parked(engine, waiting.id);
    const running = await engine.trigger("hold");
    const holding = other.worker.execute(running.id);
    await until(
      "the hold run running",
      async () => (await engine.getRun(running.id))?.status === "running",
    );
    // active runs under flow control: one paused while it holds customer c2's run slot
    // (parked on its settlement), and one queued behind it under the run limit
    const paused = await engine.trigger("metered", { params: { customer: "c2", hold: true } });
    await parked(engine, paused.id);
    assert.equal((await engine.pause(paused.id)).kind, "run");
    assert.equal((await engine.getRun(paused.id))?.status, "paused");
    const limited = await engine.trigger("metered", { params: { customer: "c2" } });
    await heldBack(engine, limited.id);
    /** The paused run still holds c2's slot, and the limited run still waits for it. */
    const stillHeld = async () => {
      const all = await everything(engine.kv);
      assert.ok(
        all.some((e) => e.key[1] === "slot" && (e.value as SlotHolder).run === paused.id),
        "the paused run lost its slot",
      );
      assert.ok(
        all.some((e) => e.key[1] === "limit_queue" && e.value === limited.id),
        "the limited run left its queue",
      );
      assert.equal((await engine.getRun(paused.id))?.status, "paused");
      const queuedBehind = await engine.getRun(limited.id);
      assert.equal(queuedBehind?.status, "queued");
      assert.equal(queuedBehind?.held?.by, "limit");
    };
    await stillHeld();
    const active = [queued.id, waiting.id, running.id, paused.id, limited.id];
    const before = new Map<string, string>();
    for (const e of await everything(engine.kv)) {
      if (active.some((id) => e.key.some((p) => typeof p === "string" && p.includes(id)))) {
        before.set(JSON.stringify(e.key), e.versionstamp);
      }
    }

    // a dry run deletes nothing
    clock.advance(1.5 * DAY);
    const keysBefore = (await everything(engine.kv)).length;
    const dry = await engine.prune({ dryRun: true });
    assert.equal((await everything(engine.kv)).length, keysBefore);
    // by hand: succeeded (1d) and cancelled (1d) go, failed (2d) stays
    const report = await engine.prune();
    assert.deepEqual(report.byPipeline, dry.byPipeline);
    assert.equal(report.keys, dry.keys);
    assert.deepEqual(report.byPipeline, {
      work: { succeeded: 3, cancelled: 1 },
      parent: { succeeded: 1 },
      kid: { succeeded: 1 },
      gate: { succeeded: 1 },
      metered: { succeeded: 2, cancelled: 2 },
      digest: { succeeded: 1 },
    });
    const gone = [
      ...done.map((r) => r.id),
      cancelled.id,
      withKid.id,
      kidId,
      approved.id,
      ...charged.map((r) => r.id),
      ...meteredCancelled.map((r) => r.id),
      digested.id,
    ];
    await audit(engine.kv, gone);
    for (const r of [...failed, declined, digestFailed]) {
      assert.equal((await engine.getRun(r.id))?.status, "failed");
    }
    await stillHeld();
    // the idempotency keys are free again, the debounced burst's too
    const again = await engine.trigger("work", { idempotencyKey: "order-17" });
    await engine.store.cancel(again.id);
    const redigests: string[] = [];
    for (const idempotencyKey of ["req-1", "req-2"]) {
      const fresh = await triggerDebounced(engine.store, engine.pipeline("digest"), {
        ...http,
        idempotencyKey,
      });
      assert.notEqual(fresh.run.id, digested.id);
      redigests.push(fresh.run.id);
    }
    assert.equal(redigests[1], redigests[0]);
    const redigest = await engine.store.cancel(redigests[0]);

    // in the background: a worker's sweep prunes the failed runs once past 2 days
    clock.advance(1.2 * DAY);
    // (a worker that does not know 'hold', so its queued run stays queued)
    const background = await openEngine({
      path: tmp.path,
      pipelines: ALL.filter((p) => p !== hold),
      clock,
      queues: false,
      pollMs: 5,
    });
    try {
      background.start();
      const later = [...failed, declined, digestFailed, again, redigest].map((r) => r.id);
      await until("background prune", async () => {
        for (const id of later) if ((await engine.getRun(id)) !== null) return false;
        return true;
      }, 10_000);
    } finally {
      await background.close();
    }
    const goneLater = [
      ...failed.map((r) => r.id),
      declined.id,
      digestFailed.id,
      again.id,
      redigest.id,
    ];
    await audit(engine.kv, [...gone, ...goneLater]);
    await stillHeld();

    // the active runs were not touched, and still complete
    for (const e of await everything(engine.kv)) {
      const k = JSON.stringify(e.key);
      // the running run's lease renewals move its lease, due entry and record; a sweep's
      // claim of the limited run decides its hold again, rewriting its record, due entry
      // and queue entry
      if (
        before.has(k) && !["due", "lease", "run", "limit_queue"].includes(e.key[1] as string)
      ) {
        assert.equal(e.versionstamp, before.get(k), `active run's ${k} was rewritten`);
      }
    }
    // the queued run may have been claimed meanwhile (a worker sweeps), never pruned
    assert.ok(["queued", "running"].includes((await engine.getRun(queued.id))?.status ?? ""));
    assert.equal((await engine.getRun(waiting.id))?.status, "waiting");
    assert.equal((await engine.getRun(running.id))?.status, "running");
    held.gate.resolve();
    await holding;
    assert.equal((await other.runToEnd(running.id)).status, "succeeded");
    await engine.send("p.approved", { key: "b" });
    assert.equal((await engine.runToEnd(waiting.id)).status, "succeeded");
    // the paused run goes on where it parked once unpaused; its end frees the slot that
    // the run queued behind it takes
    assert.equal((await engine.unpause(paused.id)).kind, "run");
    await parked(engine, paused.id);
    await engine.send("m.settled", { customer: "c2" });
    assert.equal((await engine.runToEnd(paused.id)).status, "succeeded");
    assert.equal((await engine.runToEnd(limited.id)).status, "succeeded");
    await until(
      "the queued run's end",
      async () =>
        (await engine.getRun(queued.id))?.status === "succeeded" ||
        (await engine.worker.execute(queued.id), false),
      10_000,
    );
    await audit(engine.kv, [...gone, ...goneLater]);
  } finally {
    held.gate.resolve();
    await other.close();
    await engine.close();
  }
});

Deno.test("a prune racing a resume leaves the run complete or gone complete", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  const engine = await openEngine({ path: tmp.path, pipelines: ALL, clock });
  const pruner = await openEngine({ path: tmp.path, pipelines: ALL, clock });
  try {
    const outcomes = { resumed: 0, pruned: 0 };
    for (let i = 0; i < 12; i++) {
      failing = true;
      const run = await ended(engine, "flaky");
      assert.equal(run.status, "failed");
      clock.advance(3 * DAY);
      failing = false;
      // either one starts first, in turns
      const resuming = () => engine.store.resume(run, flaky);
      const pruning = () => pruner.prune({ pipeline: "flaky" });
      const [resume] = i % 2 === 0
        ? await Promise.allSettled([resuming(), pruning()])
        : await Promise.allSettled([pruning(), resuming()]).then(([p, r]) => [r, p]);
      const after = await engine.getRun(run.id);
      if (after === null) {
        outcomes.pruned++;
        assert.equal(resume.status, "rejected");
        await audit(engine.kv, [run.id]);
      } else {
        outcomes.resumed++;
        assert.equal(resume.status, "fulfilled");
        const end = await engine.runToEnd(run.id);
        assert.equal(end.status, "succeeded");
        const steps = await engine.store.getSteps(run.id);
        assert.equal(steps.get("boom")?.status, "succeeded");
        await audit(engine.kv, []);
        // a resumed run is pruned later, whole
        clock.advance(2 * DAY);
        await pruner.prune({ pipeline: "flaky" });
        await audit(engine.kv, [run.id]);
      }
    }
    assert.equal(outcomes.resumed + outcomes.pruned, 12);
    console.log(`race outcomes: ${JSON.stringify(outcomes)}`);
  } finally {
    await pruner.close();
    await engine.close();
  }
});

Deno.test("deno task prune reports what it removed; --dry-run removes nothing; bad input exits 2", async () => {
  await using box = await Sandbox.create();
  assert.equal((await box.cli(["run", "example"])).code, 0);
  const failed = await box.cli(["run", "example"], { env: { EXAMPLE_FAIL: "invoices" } });
  assert.equal(failed.code, 1);

  const listed = await box.cli(["pipelines", "--json"]);
  const example = JSON.parse(listed.stdout).find((p: { name: string }) => p.name === "example");
  assert.deepEqual(example.retention, { succeeded: "30d", failed: "90d", cancelled: "30d" });

  const kept = await box.cli(["prune"]);
  assert.equal(kept.code, 0, kept.stderr);
  assert.deepEqual(lines(kept.stdout), ["pruned 0 runs past their retention (0 keys)"]);

  // an event nobody waits for: a prune of every pipeline removes events too
  const sent = await box.cli(["send", "crm.synced", "--data", '{"n":1}']);
  assert.equal(sent.code, 0, sent.stderr);
  const before = await box.snapshot();
  const dry = await box.cli(["prune", "--older-than", "0ms", "--dry-run"]);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, /^would prune 2 runs ended more than 0ms ago \(\d+ keys\)/);
  assert.match(dry.stdout, /example\s+1 succeeded, 1 failed/);
  assert.match(dry.stdout, /^would prune 1 event stored more than 0ms ago$/m);
  assert.deepEqual(await box.snapshot(), before);

  const json = await box.cli(["prune", "--pipeline", "example", "--older-than", "0ms", "--json"]);
  assert.equal(json.code, 0, json.stderr);
  const report = JSON.parse(json.stdout);
  assert.equal(report.dryRun, false);
  assert.equal(report.runs, 2);
  assert.deepEqual(report.byPipeline, { example: { succeeded: 1, failed: 1 } });
  const left = [...(await box.snapshot()).keys()].filter((k) =>
    /"(run|step|item|attempt|runs_by_\w+)"/.test(k)
  );
  assert.deepEqual(left, []);
  // a prune of one pipeline leaves the events, which belong to none
  assert.equal(report.events, undefined);
  // the events' retention (30 days unless KVFLOW_EVENT_RETENTION says)
  const kept30d = await box.cli(["prune"]);
  assert.doesNotMatch(kept30d.stdout, /event/);
  const all = await box.cli(["prune"], { env: { KVFLOW_EVENT_RETENTION: "1ms" } });
  assert.equal(all.code, 0, all.stderr);
  assert.match(all.stdout, /^pruned 1 event past their retention$/m);
  assert.deepEqual(
    [...(await box.snapshot()).keys()].filter((k) => /"event/.test(k)),
    [],
    "nothing of the event is left",
  );

  for (
    const args of [
      ["prune", "--pipeline", "nope"],
      ["prune", "--older-than", "soon"],
      ["prune", "extra"],
    ]
  ) {
    const bad = await box.cli(args);
    assert.equal(bad.code, 2, args.join(" "));
    assert.equal(lines(bad.stderr).length, 1, bad.stderr);
  }
  {
    const bad = await box.cli(["prune"], { env: { KVFLOW_EVENT_RETENTION: "a month" } });
    assert.match(
      bad.stderr,
      /^kvflow: Invalid KVFLOW_EVENT_RETENTION="a month": use a duration like 30d/,
    );
    assert.equal(bad.code, 2, bad.stderr);
    assert.equal(lines(bad.stderr).length, 1, bad.stderr);
  }
});

Deno.test("a pipeline's retention is checked when its module loads, naming the pipeline and the field", () => {
  assert.deepEqual(
    { ...pipeline("defaults", { steps: [kidStep] }).retention },
    { succeeded: 30 * DAY, failed: 90 * DAY, cancelled: 30 * DAY },
  );
  assert.throws(
    () => pipeline("nightly", { steps: [kidStep], retention: { failed: "3 months" as "3d" } }),
    { name: "TypeError", message: /^Invalid pipeline 'nightly': retention\.failed "3 months"/ },
  );
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => pipeline("nightly", { steps: [kidStep], retention: { done: "3d" } as any }),
    { message: /^Invalid pipeline 'nightly': retention\.done is not a field/ },
  );
});

Deno.test("GET /api/pipelines shows the retention, and /metrics counts pruned runs", async () => {
  await using s = await startService({ pipelines: [work, flaky] });
  const list = await s.get("/api/pipelines"); // checked against its OpenAPI schema
  assert.deepEqual(list.find((p: { name: string }) => p.name === "work").retention, {
    succeeded: "1d",
    failed: "2d",
    cancelled: "1d",
  });
  failing = true;
  const run = await s.engine.trigger("flaky");
  await until("the run's end", async () => (await s.engine.getRun(run.id))?.status === "failed");
  await s.engine.prune({ olderThanMs: 0 });
  const metrics = await (await fetch(`${s.url}/metrics`)).text();
  assert.match(metrics, /^kvflow_runs_pruned_total\{pipeline="flaky"\} 1$/m);
});

Deno.test("a run too large for one commit is pruned in several, and wholly", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  const many = step("many", { items: () => Array.from({ length: 600 }, (_, i) => i) }, (i) => i);
  // it fails at the end: its alert is among the keys of a later commit
  const last = step("last", { needs: { many }, retry: { attempts: 1 } }, () => {
    throw new Error("the end of a wide run");
  });
  const wide = pipeline("wide", { steps: [many, last], retention: { failed: "1d" } });
  const engine = await openEngine({
    path: tmp.path,
    pipelines: [wide],
    clock,
    queues: false,
    onAlert: () => {},
  });
  try {
    const run = await ended(engine, "wide");
    assert.equal(run.status, "failed");
    clock.advance(2 * DAY);
    const report = await engine.prune();
    assert.equal(report.runs, 1);
    assert.ok(report.keys > 1200, `${report.keys} keys: more than one commit's budget`);
    await audit(engine.kv, [run.id]);
    // its alert is counted as pruned once, in the commit that deleted it
    const pruned = await engine.kv.get<Deno.KvU64>(["kvflow", "pruned_alerts", "wide", "failure"]);
    assert.equal(pruned.value?.value, 1n);
  } finally {
    await engine.close();
  }
});

Deno.test("events past their retention go with their indexes, effects and the correlation heads they bumped last, and so do heads an old wait bumped last; matching still works after", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  const engine = await eventEngine(tmp.path, clock, gate);
  const heads = async () =>
    (await everything(engine.kv)).filter((e) => e.key[1] === "event_head")
      .map((e) => `${String(e.key[4])}=${e.value}`).sort();
  try {
    // x: a wait, then the event that ends it; y: an event nobody waits for; z: a wait
    const x = await engine.trigger("gate", { params: { key: "x" } });
    await parked(engine, x.id);
    const woke = (await engine.send("p.approved", { key: "x" })).event;
    assert.equal((await engine.runToEnd(x.id)).status, "succeeded");
    const stored = (await engine.send("p.approved", { key: "y" })).event;
    const z = await engine.trigger("gate", { params: { key: "z" } });
    await parked(engine, z.id);
    const zAt = clock.now();
    assert.deepEqual(await heads(), [`x=${woke.id}`, `y=${stored.id}`, `z=(wait) ${zAt}`]);

    // two days on, w starts a wait and an event is sent; then a pass of a worker's
    // background prune: the old events and x's run are past the retention, the new event
    // is not (the worker starts later, so that no pass of its own comes between these)
    clock.advance(2 * DAY);
    const w = await engine.trigger("gate", { params: { key: "w" } });
    await parked(engine, w.id);
    const young = (await engine.send("p.approved", { key: "v" })).event;
    const pass = await engine.prune({ maxRuns: 50 });
    assert.equal(pass.runs, 1);
    assert.equal(pass.events, 2);
    assert.equal(await engine.getRun(x.id), null);
    assert.deepEqual((await engine.listEvents({})).events.map((e) => e.id), [young.id]);
    const left = (await everything(engine.kv)).map((e) => JSON.stringify(e.key));
    for (const id of [woke.id, stored.id, x.id]) {
      assert.deepEqual(left.filter((k) => k.includes(id)), [], `nothing of ${id} is left`);
    }
    const wAt = clock.now();
    // z's head is old by the time its wait wrote, but this process saw it only now: a
    // head goes once the process that deletes it saw it unchanged for an hour (no clock
    // but its own counts), so a send that read it absent before it was written is long done
    const expected = [`v=${young.id}`, `w=(wait) ${wAt}`, `z=(wait) ${zAt}`];
    assert.deepEqual(await heads(), expected);
    clock.advance(59 * 60_000);
    assert.equal((await engine.prune({ olderThanMs: 0, dryRun: true })).waitHeads, 0);
    assert.equal((await engine.prune()).waitHeads, 0);
    // a worker of an older kvflow bumps z's head meanwhile (its heads say no time): the
    // hour starts over
    await engine.kv.set(["kvflow", "event_head", "p.approved", "key", "z"], "(wait)");
    clock.advance(2 * 60_000);
    assert.equal((await engine.prune({ dryRun: true })).waitHeads, 0);
    assert.equal((await engine.prune()).waitHeads, 0);
    assert.equal((await heads()).length, 3);
    clock.advance(60 * 60_000);
    assert.equal((await engine.prune({ dryRun: true })).waitHeads, 1);
    assert.equal((await heads()).length, 3, "a dry run deletes nothing");
    // z still waits: its head is a fence, not a record; w's wait is younger than the
    // retention, and the event v's head goes with v
    assert.equal((await engine.prune()).waitHeads, 1);
    assert.deepEqual(await heads(), [`v=${young.id}`, `w=(wait) ${wAt}`]);
    engine.worker.start();

    // matching goes on: z's event ends its wait though its head went, and x may be waited
    // for and sent again
    await engine.send("p.approved", { key: "z" });
    assert.equal((await engine.runToEnd(z.id)).status, "succeeded");
    await engine.send("p.approved", { key: "w" });
    assert.equal((await engine.runToEnd(w.id)).status, "succeeded");
    const again = await engine.trigger("gate", { params: { key: "x" } });
    await parked(engine, again.id);
    await engine.send("p.approved", { key: "x" });
    assert.equal((await engine.runToEnd(again.id)).status, "succeeded");
  } finally {
    await engine.close();
  }
});

Deno.test("a process forgets its sightings of heads another process deleted when its walk of the heads comes round", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  const engine = await eventEngine(tmp.path, clock, gate);
  try {
    // a head an older kvflow's wait wrote (no time: old by any measure)
    await engine.kv.set(["kvflow", "event_head", "p.approved", "key", "q"], "(wait)");
    const other = new HeadSightings(); // another worker's
    assert.equal(await pruneWaitHeads(engine.store, clock.now() - DAY, other), 0);
    assert.equal(other.seen.size, 1);
    assert.equal((await engine.prune()).waitHeads, 0, "seen for the first time");
    clock.advance(60 * 60_000);
    assert.equal((await engine.prune()).waitHeads, 1, "seen unchanged for an hour");
    assert.equal(await pruneWaitHeads(engine.store, clock.now() - DAY, other), 0);
    assert.equal(other.seen.size, 0, "the other worker no longer keeps the deleted head");
  } finally {
    await engine.close();
  }
});

// an event starts a run of it; its runs are kept longer than events
const book = step("book", (_inputs, ctx) => String(ctx.run.params.order));
const onOrder = pipeline("on-order", {
  params: z.object({ order: z.string() }),
  steps: [book],
  on: { "p.ordered": (data: { order: string }) => data },
  retention: { succeeded: "7d" },
});

Deno.test("an event id sent again after its event was pruned, while the run it started is kept, is refused at once; once the run goes too, the id starts a new run", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  const engine = await eventEngine(tmp.path, clock, onOrder);
  try {
    const first = await engine.send("p.ordered", { order: "a" }, { id: "order-a" });
    const [run] = first.started;
    assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
    clock.advance(2 * DAY);
    const pass = await engine.prune();
    assert.deepEqual([pass.events, pass.runs], [1, 0]);
    const t0 = performance.now();
    await assert.rejects(
      () => engine.send("p.ordered", { order: "a" }, { id: "order-a" }),
      {
        name: "UsageError",
        message:
          `Event id 'order-a' cannot start run ${run.id}: a run with that id exists (the id was sent before and its event is past its retention, or the run was started with that id); send it with a new id`,
      },
    );
    // (it used to retry for half a second and then ask to be sent again, for ever)
    assert.ok(performance.now() - t0 < 300, "refused without retrying");
    assert.deepEqual((await engine.listEvents({})).events, [], "nothing stored");

    clock.advance(7 * DAY);
    assert.equal((await engine.prune()).runs, 1);
    const again = await engine.send("p.ordered", { order: "a" }, { id: "order-a" });
    assert.equal(again.duplicate, false);
    assert.equal(again.started[0].id, run.id);
    assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  } finally {
    await engine.close();
  }
});

Deno.test("an event with more effects than one commit takes is pruned with all of them", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  const engine = await eventEngine(tmp.path, clock, gate);
  try {
    const { event } = await engine.send("p.approved", { key: "busy" });
    // what 1,700 woken waits would have left: one effect each
    for (let i = 0; i < 1700; i += 100) {
      const op = engine.kv.atomic();
      for (let j = i; j < i + 100; j++) {
        op.set(["kvflow", "event_effect", event.id, `run-${j}`, "approval", -1], {
          kind: "woke",
          runId: `run-${j}`,
          step: "approval",
          item: -1,
          at: clock.now(),
        });
      }
      await op.commit();
    }
    clock.advance(2 * DAY);
    assert.equal((await engine.prune()).events, 1);
    const left = (await everything(engine.kv)).map((e) => JSON.stringify(e.key));
    assert.deepEqual(left.filter((k) => k.includes(event.id)), []);
  } finally {
    await engine.close();
  }
});

Deno.test("a debounced run that many triggers with keys of their own joined is pruned with every key, which may be used again", async () => {
  await using tmp = await tempKv();
  const clock = new TestClock(START);
  const engine = await openEngine({ path: tmp.path, pipelines: [digest], clock, queues: false });
  try {
    const http = { params: { topic: "busy" }, trigger: "http" as const };
    const ids = new Set<string>();
    // more keys than one KV read takes (10)
    for (let i = 0; i < 14; i++) {
      const t = await triggerDebounced(engine.store, digest, { ...http, idempotencyKey: `k-${i}` });
      ids.add(t.run.id);
    }
    assert.equal(ids.size, 1, "one burst, one run");
    const [runId] = ids;
    clock.advance(QUIET);
    assert.equal((await engine.runToEnd(runId)).status, "succeeded");
    clock.advance(2 * DAY);
    assert.equal((await engine.prune()).runs, 1);
    await audit(engine.kv, [runId]);
    const again = await triggerDebounced(engine.store, digest, { ...http, idempotencyKey: "k-13" });
    assert.notEqual(again.run.id, runId, "the key is free again");
  } finally {
    await engine.close();
  }
});
