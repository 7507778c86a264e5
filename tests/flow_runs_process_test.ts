/**
 * Run limits and throttles across worker processes. Three workers share one KV file; the
 * limit test SIGKILLs one every 150–500 ms and starts a new one while 200 runs over ten
 * keys (two at once per key) go through. Every body writes to a side ledger (SQLite)
 * when it starts and ends; afterwards the ledger and the kills show that no key ever
 * had more than two bodies running at once, and KV that every run succeeded and no slot
 * or queue entry is left behind. The throttle tests run 24 throttled runs, and 5 runs of a
 * fan-out whose 30 items share a step throttle, over three workers with the side ledger.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import type { Pipeline, RunRecord } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { pruneFlowKeys } from "../lib/store/flow_prune.ts";
import { TERMINAL } from "../lib/model/records.ts";
import { poll, type Proc, Sandbox } from "./_support/harness.ts";
import {
  flowLimited,
  flowMailerRuns,
  flowMailerSteps,
  type FlowRow,
  flowStepThrottled,
  flowThrottled,
  MAILER_MAX,
  openFlowLedger,
  POST_BUCKETS,
  STEP_THROTTLE_ITEMS,
  THROTTLE_MAX,
  THROTTLE_PER_MS,
} from "./fixtures/flow_runs.ts";

const ENTRY = "tests/fixtures/flow_runs_cli.ts";
const WORKERS = 3;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function leftovers(box: Sandbox): Promise<{ slots: number; queued: number }> {
  return await box.withStore(async ({ kv }) => {
    let slots = 0, queued = 0;
    for await (const _ of kv.list({ prefix: keys.allSlotsPrefix() })) slots++;
    for await (const e of kv.list({ prefix: [keys.allSlotsPrefix()[0], "limit_queue"] })) {
      if (!keys.isLimitQueueMark(e.key)) queued++;
    }
    return { slots, queued };
  });
}

async function allEnded(box: Sandbox, pipeline: string, n: number): Promise<RunRecord[]> {
  return await poll(`every ${pipeline} run to end`, 180_000, async () => {
    const runs = await box.runsOf(pipeline);
    return runs.length === n && runs.every((r) => TERMINAL.has(r.status)) ? runs : undefined;
  }).catch(async (error) => {
    const open = (await box.runsOf(pipeline)).filter((r) => !TERMINAL.has(r.status));
    const dump = await box.withStore(async ({ kv }) => {
      const out: string[] = [`${open.length} open`];
      const ids = new Set(open.map((r) => r.id));
      for await (const e of kv.list({ prefix: keys.duePrefix() })) {
        const id = String(e.key[3]);
        if (ids.has(id) || id.startsWith("limit")) {
          out.push(`due ${String(e.key[2])} ${id} ${JSON.stringify(e.value)}`);
        }
      }
      for (const r of open.slice(0, 5)) {
        out.push(
          `run ${r.id} status=${r.status} started=${r.startedAt} slot=${r.slot} flow=${
            JSON.stringify(r.flow)
          } due=${r.dueAt} created=${r.createdAt} prio=${r.priority} takeovers=${r.takeovers}`,
        );
        const lease = await kv.get(keys.lease(r.id));
        out.push(`  lease ${JSON.stringify(lease.value)}`);
      }
      for await (const e of kv.list({ prefix: keys.allSlotsPrefix() })) {
        out.push(`slot ${JSON.stringify(e.key)} ${JSON.stringify(e.value)}`);
      }
      for await (const e of kv.list({ prefix: [keys.allSlotsPrefix()[0], "limit_queue"] })) {
        out.push(`queue ${JSON.stringify(e.key)} ${JSON.stringify(e.value)}`);
      }
      return out.join("\n");
    });
    console.log(dump);
    throw new Error(
      `${error.message}: open: ${
        open.slice(0, 5).map((r) =>
          `${r.id} ${r.status} due ${r.dueAt} held ${JSON.stringify(r.held)}`
        ).join("; ")
      }`,
    );
  });
}

/** A body's time between its ledger rows (a killed one's: until its process died). */
interface BodyInterval {
  key: string;
  from: number;
  to: number;
  /** Its run and process, and whether its end is its process's kill. */
  run: string;
  pid: number;
  killed: boolean;
}

/**
 * Three workers run the runs `create` makes while one of them is SIGKILLed every 150–500
 * ms and replaced, until every run ended (or 60 s); then waits for as many runs of each
 * pipeline as `counts` says to end, stops the workers and checks that no slot or queue
 * entry is left.
 *
 * @returns the ended runs, and the bodies' intervals from the side ledger
 */
async function underStorm(
  counts: Record<string, number>,
  create: (store: Store) => Promise<void>,
  opts: { forget?: boolean } = {},
): Promise<
  { runs: RunRecord[]; intervals: BodyInterval[]; kills: number; rows: number; forgot: number }
> {
  await using box = await Sandbox.create();
  const ledgerPath = `${box.dir}/flow.sqlite`;
  openFlowLedger(ledgerPath).close();
  const env = { FLOW_LEDGER: ledgerPath, KVFLOW_LEASE_MS: "5000", KVFLOW_POLL_MS: "100" };
  const spawned: Proc[] = [];
  const spawnWorker = () => {
    const p = box.spawn(["worker"], { entry: ENTRY, env });
    spawned.push(p);
    return p;
  };
  const workers: Proc[] = Array.from({ length: WORKERS }, spawnWorker);
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));

  const kills = new Map<number, number>();
  const kv = await Deno.openKv(box.kvPath);
  const creating = create(new Store(kv, { queues: false }));
  creating.catch(() => {}); // awaited below; a failure must not go unhandled meanwhile
  const stormEnd = Date.now() + 60_000;
  let created = false;
  creating.then(() => created = true, () => {});
  // `forget`: this process forgets idle limit keys over and over meanwhile, as a prune does
  let forgot = 0;
  let forgetting = opts.forget;
  const forgets = (async () => {
    while (forgetting) {
      // a busy file may refuse a read now and then: the next round tries again
      forgot += (await pruneFlowKeys(kv, Date.now()).catch(() => ({ limitKeys: 0 }))).limitKeys;
      await sleep(10);
    }
  })();
  while (Date.now() < stormEnd) {
    await sleep(150 + Math.random() * 350);
    const runs = (await Promise.all(Object.keys(counts).map((p) => box.runsOf(p)))).flat();
    if (created && runs.every((r) => TERMINAL.has(r.status))) break;
    const slot = Math.floor(Math.random() * WORKERS);
    const victim = workers[slot];
    victim.kill("SIGKILL");
    await victim.exit();
    kills.set(victim.pid, Date.now());
    workers[slot] = spawnWorker();
  }
  await creating;
  forgetting = false;
  await forgets;
  kv.close();
  const ended = await Promise.all(
    Object.entries(counts).map(([p, n]) => allEnded(box, p, n)),
  ).catch((e) => {
    for (const p of spawned) {
      const err = p.stderr.split("\n").filter((l) => l && !/started/.test(l));
      if (err.length) console.log(`worker ${p.pid}: ${err.slice(-8).join(" | ")}`);
    }
    throw e;
  });
  for (const w of workers) w.kill("SIGTERM");
  await Promise.all(workers.map((w) => w.exit()));
  assert.ok(kills.size >= 3, `only ${kills.size} kills`);
  assert.deepEqual(await leftovers(box), { slots: 0, queued: 0 });

  // A body is running from its start row to its end row; a killed one until its process died.
  const db = openFlowLedger(ledgerPath);
  const rows = db.prepare("SELECT * FROM ledger ORDER BY id").all() as unknown as FlowRow[];
  db.close();
  const open = new Map<string, FlowRow>();
  const intervals: BodyInterval[] = [];
  for (const row of rows) {
    const id = `${row.run} ${row.pid} ${row.key}`;
    if (row.event === "start") open.set(id, row);
    else {
      const start = open.get(id)!;
      open.delete(id);
      intervals.push({
        key: row.key,
        from: start.at,
        to: row.at,
        run: row.run,
        pid: row.pid,
        killed: false,
      });
    }
  }
  for (const start of open.values()) {
    const killedAt = kills.get(start.pid);
    assert.ok(killedAt !== undefined, `a body of ${start.run} never ended and was not killed`);
    intervals.push({
      key: start.key,
      from: start.at,
      to: killedAt,
      run: start.run,
      pid: start.pid,
      killed: true,
    });
  }
  const pipelineOf = new Map(ended.flat().map((r) => [r.id, r.pipeline]));
  for (const i of intervals) i.run = `${i.run} (${pipelineOf.get(i.run)})`;
  return { runs: ended.flat(), intervals, kills: kills.size, rows: rows.length, forgot };
}

/** The most bodies of `key` at once; fails as soon as there are more than `max`. */
function mostAtOnce(intervals: BodyInterval[], key: string, max: number): number {
  const mine = intervals.filter((i) => i.key === key);
  const points = mine.flatMap((i) => [[i.from, 1], [i.to, -1]]);
  assert.ok(points.length > 0, `no body of ${key}`);
  // an end and a start at the same ms do not overlap
  points.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0, most = 0;
  for (const [at, d] of points) {
    now += d;
    most = Math.max(most, now);
    if (now <= max) continue;
    const bodies = mine.filter((i) => i.from <= at && i.to > at).map((i) =>
      `${i.run} in ${i.pid} ${i.from}–${i.to}${i.killed ? " (killed)" : ""}`
    );
    assert.fail(`${now} bodies of ${key} at once at ${at}: ${bodies.join("; ")}`);
  }
  return most;
}

Deno.test("run and step limits under a SIGKILL storm: 200 runs over 10 keys never have more than 2 bodies of a key at once, nor 2 posts of a bucket; all succeed, no slot leaks", async () => {
  const RUNS = 200, KEYS = 10, MAX = 2;
  // runs arrive in batches of thirty (three per key: the limit of two binds at once, not
  // only when the storm delays runs) over 8 s
  const { runs, intervals, kills, rows } = await underStorm(
    { "flow-limited": RUNS },
    async (store) => {
      for (let i = 0; i < RUNS; i++) {
        await store.createRun(flowLimited, { params: { key: `k${i % KEYS}` } });
        if (i % 30 === 29) await sleep(1200);
      }
    },
  );
  for (const run of runs) assert.equal(run.status, "succeeded", `${run.id}: ${run.error?.message}`);
  let most = 0;
  for (let k = 0; k < KEYS; k++) most = Math.max(most, mostAtOnce(intervals, `k${k}`, MAX));
  assert.equal(most, MAX, "the limit was reached");
  // the step limit: one post at a time per bucket, across runs and workers
  let posts = 0;
  for (let b = 0; b < POST_BUCKETS; b++) {
    const key = `post:b${b}`;
    mostAtOnce(intervals, key, 1);
    posts += intervals.filter((i) => i.key === key).length;
  }
  assert.ok(posts >= RUNS, `${posts} posts for ${RUNS} runs`);
  console.log(
    `${kills} kills, ${rows} ledger rows, at most ${most} runs per key, one post per bucket`,
  );
});

Deno.test("a run limit and a step limit sharing a scope under a SIGKILL storm: 160 runs over 4 keys never hold more than its 2 slots of a key at once", async () => {
  const RUNS = 160, KEYS = 4;
  // Run claims that pick from their process's view of a key and step starts in the same
  // scope race for the same slots, across workers that die at random: the ledger counts
  // run bodies and step bodies of a key together.
  // Meanwhile the test forgets the keys' marks and releases whenever they look idle
  // (`store/flow_prune.ts`): the claims' views and the takes check the marks it deletes.
  const { runs, intervals, kills, forgot } = await underStorm(
    { "flow-mailer-runs": RUNS / 2, "flow-mailer-steps": RUNS / 2 },
    async (store) => {
      for (let i = 0; i < RUNS; i++) {
        const p = i % 2 === 0 ? flowMailerRuns : flowMailerSteps;
        await store.createRun(p, { params: { key: `m${Math.floor(i / 2) % KEYS}` } });
        if (i % 40 === 39) await sleep(1000);
      }
    },
    { forget: true },
  );
  assert.equal(runs.length, RUNS);
  for (const run of runs) assert.equal(run.status, "succeeded", `${run.id}: ${run.error?.message}`);
  let most = 0;
  for (let k = 0; k < KEYS; k++) {
    most = Math.max(most, mostAtOnce(intervals, `m${k}`, MAILER_MAX));
  }
  assert.equal(most, MAILER_MAX, "the limit was reached");
  assert.ok(forgot > 0, "no key was idle to forget during the storm");
  console.log(
    `${kills} kills, ${forgot} idle keys forgotten, at most ${most} bodies per key of the shared scope`,
  );
});

/**
 * Checks starts against a throttle of `max` per `perMs`, as recorded (the time its entry
 * was taken, in the commit that started it) and as observed (the body's first ledger row).
 * A body starts after that commit, at most `lag` later (the most measured): any window of
 * `perMs - lag` holds at most `max` observed starts, and any window of `perMs` at most
 * `max` recorded ones. Nothing is dropped: each start is observed once.
 */
function assertThrottled(
  starts: { id: string; recorded: number; observed: number[] }[],
  total: number,
): void {
  assert.equal(starts.length, total, "every start is recorded");
  for (const s of starts) assert.equal(s.observed.length, 1, `${s.id}: observed once`);
  const recorded = starts.map((s) => s.recorded).sort((a, b) => a - b);
  const observed = starts.map((s) => s.observed[0]).sort((a, b) => a - b);
  const lag = Math.max(...starts.map((s) => s.observed[0] - s.recorded));
  assert.ok(lag >= 0, "a body starts after its start was recorded");
  const most = (times: number[], window: number) =>
    Math.max(...times.map((from) => times.filter((t) => t >= from && t < from + window).length));
  // a start's recorded time is read just before the clock its throttle entry is picked by
  // (the same wall clock, a millisecond apart at most)
  assert.ok(
    most(recorded, THROTTLE_PER_MS - 2) <= THROTTLE_MAX,
    `at most ${THROTTLE_MAX} recorded starts per ${THROTTLE_PER_MS} ms`,
  );
  const window = Math.max(1, THROTTLE_PER_MS - lag);
  assert.ok(
    most(observed, window) <= THROTTLE_MAX,
    `at most ${THROTTLE_MAX} bodies started within ${window} ms (lag ${lag} ms)`,
  );
  const span = recorded[recorded.length - 1] - recorded[0];
  assert.ok(span >= (total / THROTTLE_MAX - 1) * THROTTLE_PER_MS, `all started in ${span} ms`);
}

/** Three workers with the side ledger; creates `runs` runs of `pipeline`, waits for them. */
async function throttledRuns(
  pipeline: Pipeline<unknown>,
  runs: number,
): Promise<{ box: Sandbox; ended: RunRecord[]; rows: FlowRow[] }> {
  const box = await Sandbox.create();
  const ledgerPath = `${box.dir}/flow.sqlite`;
  openFlowLedger(ledgerPath).close();
  const env = { KVFLOW_POLL_MS: "100", FLOW_LEDGER: ledgerPath };
  const workers = Array.from(
    { length: WORKERS },
    () => box.spawn(["worker"], { entry: ENTRY, env }),
  );
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));
  const kv = await Deno.openKv(box.kvPath);
  try {
    const store = new Store(kv, { queues: false });
    for (let i = 0; i < runs; i++) await store.createRun(pipeline, { params: { key: "all" } });
  } finally {
    kv.close();
  }
  const ended = await allEnded(box, pipeline.name, runs);
  for (const w of workers) w.kill("SIGTERM");
  await Promise.all(workers.map((w) => w.exit()));
  for (const r of ended) assert.equal(r.status, "succeeded");
  const db = openFlowLedger(ledgerPath);
  const rows = db.prepare("SELECT * FROM ledger ORDER BY id").all() as unknown as FlowRow[];
  db.close();
  return { box, ended, rows };
}

Deno.test("run throttle across 3 workers: no period has more than max starts, recorded or observed in a side ledger, and every run ends", async () => {
  const RUNS = 24;
  const { box, ended, rows } = await throttledRuns(flowThrottled as Pipeline<unknown>, RUNS);
  await using _ = box;
  // a run's start is its first claim, the commit that took its throttle entry
  assertThrottled(
    ended.map((r) => ({
      id: r.id,
      recorded: r.startedAt!,
      observed: rows.filter((l) => l.run === r.id && l.event === "start").map((l) => l.at),
    })),
    RUNS,
  );
});

Deno.test("step throttle across 3 workers: fan-out items of many runs never start more than max per period, recorded or observed, and none is dropped", async () => {
  const RUNS = 5;
  const { box, ended, rows } = await throttledRuns(flowStepThrottled as Pipeline<unknown>, RUNS);
  await using _ = box;
  const starts = [];
  for (const run of ended) {
    const items = await box.withStore((store) => store.getItems(run.id, "call"));
    assert.equal(items.size, STEP_THROTTLE_ITEMS);
    for (const [index, item] of items) {
      assert.equal(item.status, "succeeded");
      starts.push({
        id: `${run.id}#${index}`,
        recorded: item.startedAt!,
        observed: rows.filter((l) =>
          l.run === run.id && l.key === `${index}` && l.event === "start"
        )
          .map((l) => l.at),
      });
    }
  }
  assertThrottled(starts, RUNS * STEP_THROTTLE_ITEMS);
});
