/**
 * Step limits across processes: three worker processes on one KV file run 40 runs of a
 * fan-out under a step limit of 2 per key (10 keys), while a driver SIGKILLs a random
 * worker every 0.3–1.2 s and starts a new one. Every body writes its start and end, with
 * its pid, to a side ledger outside KV. Afterwards: no key ever had more than 2 bodies
 * running at once (a killed body runs until its process's kill), every run succeeded,
 * and no slot is left held. The same again with a limit of 16 per key over 2 keys, runs
 * coming in waves through the storm: there a start picks its slot without reading KV
 * (`StepFlow.startNow`), the three workers' picks meet, and the ones that lose fall back.
 *
 * `KVFLOW_STEPLIMIT_SECONDS` sets the storm's length (default 15).
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Pipeline, RunRecord } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { TERMINAL } from "../lib/model/records.ts";
import { poll, type Proc, Sandbox } from "./_support/harness.ts";
import { noSlots } from "./_support/helpers.ts";
import steplimit, {
  type LimitRow,
  MAX,
  openLimitLedger,
  wide,
  WIDE_ITEMS,
  WIDE_MAX,
} from "./fixtures/steplimit.ts";

const STORM_MS = 1000 * Number(Deno.env.get("KVFLOW_STEPLIMIT_SECONDS") ?? 15);
const WORKERS = 3;
const ENTRY = "tests/fixtures/steplimit_cli.ts";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function runsOf(box: Sandbox, pipeline: string): Promise<RunRecord[]> {
  return await box.withStore(async (store) => {
    const page = await store.listRuns({ pipeline, limit: 1000 });
    return page.runs;
  });
}

/** A SIGKILL storm over `runs` runs of `pipeline`, created `wave` at a time, one wave a kill. */
async function storm(
  opts: { pipeline: Pipeline<unknown>; runs: number; wave: number; max: number; items: number },
): Promise<void> {
  const name = opts.pipeline.name;
  await using box = await Sandbox.create();
  const ledgerPath = `${box.dir}/limits.sqlite`;
  openLimitLedger(ledgerPath).close();
  const env = { STEPLIMIT_LEDGER: ledgerPath, KVFLOW_LEASE_MS: "3000", KVFLOW_POLL_MS: "200" };
  const spawn = () => box.spawn(["worker"], { entry: ENTRY, env });
  const workers: Proc[] = Array.from({ length: WORKERS }, spawn);
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));

  /** When each killed pid died: after this, none of its bodies runs. */
  const killedAt = new Map<number, number>();
  const kv = await Deno.openKv(box.kvPath);
  try {
    const store = new Store(kv, { queues: false });
    let created = 0;
    const wave = async () => {
      const n = Math.min(opts.wave, opts.runs - created);
      for (let i = 0; i < n; i++) await store.createRun(opts.pipeline);
      created += n;
    };
    await wave();
    const stormEnd = Date.now() + STORM_MS;
    while (Date.now() < stormEnd) {
      await sleep(300 + Math.random() * 900);
      await wave();
      const slot = Math.floor(Math.random() * WORKERS);
      const victim = workers[slot];
      victim.kill("SIGKILL");
      await victim.exit();
      killedAt.set(victim.pid, Date.now());
      workers[slot] = spawn();
    }
    while (created < opts.runs) await wave();
  } finally {
    kv.close();
  }
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));
  const runs = await poll("every run to end", 180_000, async () => {
    const runs = await runsOf(box, name);
    return runs.length === opts.runs && runs.every((r) => TERMINAL.has(r.status))
      ? runs
      : undefined;
  });
  for (const w of workers) w.kill("SIGTERM");
  for (const exit of await Promise.all(workers.map((w) => w.exit()))) {
    assert.equal(exit.code, 0, exit.stderr);
  }
  assert.deepEqual(
    runs.filter((r) => r.status !== "succeeded").map((r) => `${r.id} ${r.status}`),
    [],
    "every run succeeded",
  );

  // ---- the ledger: bodies per key at once ----------------------------------------------
  const db = openLimitLedger(ledgerPath);
  const rows = db.prepare("SELECT * FROM ledger ORDER BY id").all() as unknown as LimitRow[];
  db.close();
  const bodies = new Map<string, { key: string; pid: number; start: number; end?: number }>();
  for (const row of rows) {
    const id = `${row.run}/${row.item}/${row.attempt}`;
    if (row.event === "start") bodies.set(id, { key: row.key, pid: row.pid, start: row.at });
    else bodies.get(id)!.end = row.at;
  }
  let killedBodies = 0;
  const events: { key: string; at: number; delta: number }[] = [];
  for (const [id, body] of bodies) {
    let end = body.end;
    if (end === undefined) {
      end = killedAt.get(body.pid);
      assert.ok(end !== undefined, `body ${id} never ended, yet its worker ${body.pid} lived`);
      killedBodies++;
    }
    events.push({ key: body.key, at: body.start, delta: 1 }, { key: body.key, at: end, delta: -1 });
  }
  // at the same ms an end comes first: it was written before its slot was freed
  events.sort((a, b) => a.at - b.at || a.delta - b.delta);
  const running = new Map<string, number>();
  let most = 0;
  for (const e of events) {
    const n = (running.get(e.key) ?? 0) + e.delta;
    running.set(e.key, n);
    assert.ok(n <= opts.max, `key ${e.key} ran ${n} bodies at once at ${e.at}`);
    most = Math.max(most, n);
  }
  assert.equal(most, opts.max, "the limit was used");
  const succeeded = new Set(rows.filter((r) => r.event === "end").map((r) => `${r.run}/${r.item}`));
  assert.equal(succeeded.size, opts.runs * opts.items, "every item's body ended");

  // ---- KV: no slot left --------------------------------------------------------------
  await box.withStore(({ kv }) => noSlots(kv));
  console.log(
    `  ${opts.runs} runs, ${bodies.size} bodies, ${killedAt.size} SIGKILLs, ${killedBodies} bodies killed`,
  );
}

Deno.test("step limit: three workers SIGKILLed at random run 40 fan-outs; no key ever runs more than 2 bodies at once, no slot is left", async () => {
  await storm({ pipeline: steplimit, runs: 40, wave: 40, max: MAX, items: 12 });
});

Deno.test(`step limit of ${WIDE_MAX}, slots picked without a read: three workers SIGKILLed at random, their picks meeting; no key ever runs more than ${WIDE_MAX} bodies at once, no slot is left`, async () => {
  await storm({ pipeline: wide, runs: 48, wave: 4, max: WIDE_MAX, items: WIDE_ITEMS });
});
