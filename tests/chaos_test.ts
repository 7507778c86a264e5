/**
 * Chaos: three worker processes on one KV file run 300 runs of an eight-step pipeline
 * (a parallel branch, a fan-out of ten, a step that fails its first attempt) and a
 * schedule that ticks every two seconds, while a driver stops a random worker every
 * 0.3–1.5 s and starts a new one: two times in three with SIGKILL, once with SIGTERM and
 * a grace period shorter than most steps, so rolling restarts hand work back mid-step. Every step body writes to a side ledger outside KV
 * (SQLite) when it starts and ends; afterwards the ledger, the kills and KV together must
 * show every guarantee of DESIGN.md §3 that a crash can break.
 *
 * `KVFLOW_CHAOS_SECONDS` sets the storm's length (default 60) and `KVFLOW_CHAOS_RUNS` the
 * number of runs (default 300), for shorter iterations.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Cron } from "croner";
import * as keys from "../lib/kv/keys.ts";
import type { AttemptRecord, RunRecord, TaskRecord } from "../lib/mod.ts";
import type { ScheduleState } from "../lib/engine/scheduler.ts";
import { Store } from "../lib/store/store.ts";
import { TERMINAL } from "../lib/model/records.ts";
import { FIXTURE_CLI, poll, type Proc, Sandbox } from "./_support/harness.ts";
import chaos, { type ChaosRow, openLedger } from "./fixtures/chaos.ts";

const STORM_MS = 1000 * Number(Deno.env.get("KVFLOW_CHAOS_SECONDS") ?? 60);
const RUNS = Number(Deno.env.get("KVFLOW_CHAOS_RUNS") ?? 300);
const TICK_CRON = "*/2 * * * * *";
const TICK_MS = 2000;
const WORKERS = 3;
const ITEMS = 10;
/** Steps that fail their first attempt on purpose, with their retry delay. */
const FAILS_FIRST = new Map([["flaky", 50], ["tock", 5500]]);
/**
 * How long after a SIGTERM is sent a worker may still start a body: it has not handled the
 * signal yet (a few ms when idle; a busy event loop on a loaded machine takes longer).
 */
const SIGNAL_LAG_MS = 250;

/** A signal the driver sent: to whom, and the wall time just before and after. */
interface Kill {
  pid: number;
  before: number;
  after: number;
}

/** A step (item -1) or fan-out item of one run, with what KV and the ledger say of it. */
interface Task {
  run: string;
  step: string;
  item: number;
  record: TaskRecord | undefined;
  succeeded: AttemptRecord[];
  /** How each attempt ended, as KV recorded it. */
  ended: Map<number, AttemptRecord["status"]>;
  starts: ChaosRow[];
  ends: ChaosRow[];
}

/** What the storm left, counted. */
interface Counts {
  runs: number;
  succeeded: number;
  tickRuns: number;
  ticksExpected: number;
  kills: number;
  terms: number;
  workersStarted: number;
  takeovers: number;
  bodies: number;
  checkpoints: number;
  doubleCheckpoints: number;
  missingCheckpoints: number;
  extraStarts: number;
  plannedFailures: number;
  killedInBody: number;
  killedBeforeCheckpoint: number;
  handedBack: number;
  unexplained: number;
  startsAfterCheckpoint: number;
  stuck: number;
  staleDue: number;
  disagreeingDue: number;
  staleLeases: number;
  staleIndexes: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The `p`-quantile of `values` (nearest rank), or NaN when there are none. */
function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

function taskId(run: string, step: string, item: number): string {
  return `${run}\u0000${step}\u0000${item}`;
}

/** The ticks of {@linkcode TICK_CRON} from `first` to `last`, inclusive, by croner. */
function ticksFrom(first: number, last: number): number[] {
  const cron = new Cron(TICK_CRON, { timezone: "UTC", paused: true });
  const out: number[] = [];
  let next = cron.nextRun(new Date(first - 1));
  while (next && next.getTime() <= last) {
    out.push(next.getTime());
    next = cron.nextRun(next);
  }
  return out;
}

Deno.test("chaos: three workers SIGKILLed or SIGTERMed at random for 60 s run 300 runs and a schedule; no step runs after its checkpoint, none is lost", async () => {
  const t0 = Date.now();
  await using box = await Sandbox.create();
  const ledgerPath = `${box.dir}/ledger.sqlite`;
  openLedger(ledgerPath).close();
  const env = {
    CHAOS_LEDGER: ledgerPath,
    CHAOS_TICK_CRON: TICK_CRON,
    // Long enough that a live worker on a loaded machine keeps its leases: only kills
    // may make a body run again.
    KVFLOW_LEASE_MS: "5000",
    KVFLOW_POLL_MS: "200",
    // Shorter than most step bodies (10–60 ms): a SIGTERM interrupts steps and hands them back.
    KVFLOW_GRACE_MS: "30",
  };
  const started: Proc[] = [];
  // When each worker began serving (or never did): the fleet's availability, to tell a
  // machine too loaded to restart workers quickly from an engine that lost work.
  const serving = new Map<Proc, { spawned: number; up?: number; down?: number }>();
  const watching: Promise<void>[] = [];
  const spawnWorker = () => {
    const proc = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
    started.push(proc);
    const life: { spawned: number; up?: number; down?: number } = { spawned: Date.now() };
    serving.set(proc, life);
    watching.push(
      proc.waitForOutput(/worker \S+ started/, 300_000).then(() => {
        life.up = Date.now();
      }, () => {}),
    );
    return proc;
  };
  const workers = Array.from({ length: WORKERS }, spawnWorker);
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));

  // The storm: runs arrive over its first 70 %, kills go on to its end.
  const kills: Kill[] = [];
  const killed = new Set<Proc>();
  const terms: Kill[] = [];
  const termed = new Set<Proc>();
  const stormStart = Date.now();
  const kv = await Deno.openKv(box.kvPath);
  try {
    const store = new Store(kv, { queues: false });
    const creating = (async () => {
      const batches = Math.ceil(RUNS / 5);
      for (let b = 0; b < batches; b++) {
        const at = stormStart + (b * 0.7 * STORM_MS) / batches;
        if (at > Date.now()) await sleep(at - Date.now());
        for (let i = b * 5; i < Math.min(RUNS, b * 5 + 5); i++) await store.createRun(chaos);
      }
    })();
    creating.catch(() => {}); // awaited below; a failure must not go unhandled meanwhile
    while (true) {
      await sleep(300 + Math.random() * 1200);
      if (Date.now() >= stormStart + STORM_MS) break;
      const slot = Math.floor(Math.random() * WORKERS);
      const victim = workers[slot];
      const before = Date.now();
      // Only a worker that said it started listens for SIGTERM; one still starting is killed.
      const graceful = serving.get(victim)!.up !== undefined && Math.random() < 1 / 3;
      victim.kill(graceful ? "SIGTERM" : "SIGKILL");
      (graceful ? terms : kills).push({ pid: victim.pid, before, after: Date.now() });
      serving.get(victim)!.down = before;
      (graceful ? termed : killed).add(victim);
      workers[slot] = spawnWorker();
    }
    await creating;
  } finally {
    kv.close();
  }
  const stormEnd = Date.now();
  // A worker started by the last kill listens for SIGTERM once it says so.
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));

  // After the storm the three workers (unharmed now) finish everything.
  const all = await poll("every chaos run to end", 180_000, async () => {
    const runs = await box.runsOf("chaos");
    return runs.length === RUNS && runs.every((r) => TERMINAL.has(r.status)) ? runs : undefined;
  }).catch(async (error) => {
    const runs = await box.runsOf("chaos");
    const open = runs.filter((r) => !TERMINAL.has(r.status));
    throw new Error(
      `${error.message}: ${runs.length} runs, open: ${
        open.slice(0, 5).map((r) => `${r.id} ${r.status} due ${r.dueAt}`).join("; ")
      }`,
    );
  });
  const drained = Date.now();
  // Ticks up to now must have run before the workers stop.
  const tickCutoff = Date.now();
  await poll("tick runs up to the cutoff to end", 60_000, async () => {
    const runs = await box.runsOf("chaos-tick");
    return runs.every((r) => r.tick! > tickCutoff || TERMINAL.has(r.status)) || undefined;
  });
  const stopAt = Date.now();
  for (const w of workers) w.kill("SIGTERM");
  for (const exit of await Promise.all(workers.map((w) => w.exit()))) {
    assert.equal(exit.code, 0, exit.stderr);
  }
  // Only the driver's signals ended workers; a SIGTERMed one handed its runs back, exit 0.
  for (const proc of started) {
    if (workers.includes(proc)) continue;
    const exit = await proc.exit();
    if (termed.has(proc)) assert.equal(exit.code, 0, `worker ${proc.pid}: ${exit.stderr}`);
    else {assert.ok(
        killed.has(proc) && exit.signal === "SIGKILL",
        `worker ${proc.pid}: ${exit.stderr}`,
      );}
  }
  await Promise.all(watching);
  const pids = started.map((p) => p.pid);
  assert.equal(new Set(pids).size, pids.length, "a pid was reused: kills would be ambiguous");

  // ---- what KV holds ------------------------------------------------------------------
  const ticks = (await box.runsOf("chaos-tick")).sort((a, b) => a.tick! - b.tick!);
  const finished = [...all, ...ticks.filter((r) => TERMINAL.has(r.status))];
  const tasks = new Map<string, Task>();
  const task = (run: string, step: string, item: number): Task => {
    const id = taskId(run, step, item);
    let t = tasks.get(id);
    if (!t) {
      t = {
        run,
        step,
        item,
        record: undefined,
        succeeded: [],
        ended: new Map(),
        starts: [],
        ends: [],
      };
      tasks.set(id, t);
    }
    return t;
  };
  const stale = await box.withStore(async ({ kv }) => {
    for (const run of finished) {
      for await (const e of kv.list<TaskRecord>({ prefix: keys.stepPrefix(run.id) })) {
        const step = e.key[3] as string;
        // A fan-out step's checkpoints are its items'.
        if (e.value.items === undefined) task(run.id, step, -1).record = e.value;
        else {
          assert.equal(e.value.status, "succeeded", `${run.id} ${step}`);
          assert.equal(e.value.items, ITEMS, `${run.id} ${step} items`);
        }
      }
      for await (const e of kv.list<TaskRecord>({ prefix: keys.itemRunPrefix(run.id) })) {
        task(run.id, e.key[3] as string, e.key[4] as number).record = e.value;
      }
      for await (const e of kv.list<AttemptRecord>({ prefix: keys.attemptPrefix(run.id) })) {
        const t = task(run.id, e.value.step, e.value.item);
        t.ended.set(e.value.n, e.value.status);
        if (e.value.status === "succeeded") {
          t.succeeded.push(e.value);
        }
      }
    }
    const byId = new Map(finished.map((r) => [r.id, r]));
    let due = 0;
    let disagreeing = 0;
    for await (const e of kv.list<string>({ prefix: keys.duePrefix() })) {
      if (byId.has(e.value)) due++;
      const run = (await kv.get<RunRecord>(keys.run(e.value))).value;
      if (run?.dueAt !== e.key[2]) disagreeing++;
    }
    let leases = 0;
    for (const run of finished) {
      if ((await kv.get(keys.lease(run.id))).value !== null) leases++;
    }
    let indexes = 0;
    for (const pipeline of ["chaos", "chaos-tick"]) {
      for await (const e of kv.list({ prefix: keys.activeRunPrefix(pipeline) })) {
        if (byId.has(e.key[3] as string)) indexes++;
      }
    }
    for (const status of ["queued", "running", "waiting"]) {
      for await (const e of kv.list({ prefix: keys.runsByStatusPrefix(status) })) {
        if (byId.has(e.key[4] as string)) indexes++;
      }
    }
    const schedule = (await kv.get<ScheduleState>(keys.schedule("chaos-tick"))).value;
    return { due, disagreeing, leases, indexes, schedule };
  });

  // ---- what the side ledger holds -----------------------------------------------------
  const db = openLedger(ledgerPath);
  const rows = db.prepare("SELECT * FROM ledger ORDER BY id").all() as unknown as ChaosRow[];
  db.close();
  for (const row of rows) {
    const t = task(row.run, row.step, row.item);
    (row.event === "start" ? t.starts : t.ends).push(row);
  }

  // ---- each task against the guarantees -----------------------------------------------
  const killOf = new Map(kills.map((k) => [k.pid, k]));
  const termOf = new Map(terms.map((k) => [k.pid, k]));
  const problems: string[] = [];
  const counts: Counts = {
    runs: all.length,
    succeeded: all.filter((r) => r.status === "succeeded").length,
    tickRuns: ticks.length,
    ticksExpected: 0,
    kills: kills.length,
    terms: terms.length,
    workersStarted: started.length,
    takeovers: finished.reduce((n, r) => n + r.takeovers, 0),
    bodies: rows.filter((r) => r.event === "start").length,
    checkpoints: 0,
    doubleCheckpoints: 0,
    missingCheckpoints: 0,
    extraStarts: 0,
    plannedFailures: 0,
    killedInBody: 0,
    killedBeforeCheckpoint: 0,
    handedBack: 0,
    unexplained: 0,
    startsAfterCheckpoint: 0,
    stuck: 0,
    staleDue: stale.due,
    disagreeingDue: stale.disagreeing,
    staleLeases: stale.leases,
    staleIndexes: stale.indexes,
  };
  const finishedIds = new Set(finished.map((r) => r.id));
  const retryLateness: number[] = [];
  for (const t of tasks.values()) {
    const where = `${t.run} ${t.step}${t.item >= 0 ? `[${t.item}]` : ""}`;
    if (!finishedIds.has(t.run)) continue;
    if (t.record?.status !== "succeeded" || t.succeeded.length === 0) {
      counts.missingCheckpoints++;
      problems.push(`${where}: no checkpoint (${t.record?.status})`);
      continue;
    }
    counts.checkpoints++;
    if (t.succeeded.length > 1) {
      counts.doubleCheckpoints++;
      problems.push(`${where}: ${t.succeeded.length} checkpoints`);
    }
    const winner = t.record.attempt;
    const endedAt = t.record.endedAt!;
    const starts = [...t.starts].sort((a, b) => a.attempt - b.attempt);
    if (new Set(starts.map((s) => s.attempt)).size !== starts.length) {
      problems.push(`${where}: two bodies ran as the same attempt`);
    }
    const won = starts.find((s) => s.attempt === winner);
    if (!won || !t.ends.some((e) => e.attempt === winner && e.outcome === "ok")) {
      problems.push(`${where}: the checkpointed attempt ${winner} has no ledger rows`);
    }
    for (const s of starts) {
      if (s.at > endedAt) {
        counts.startsAfterCheckpoint++;
        problems.push(
          `${where}: attempt ${s.attempt} started ${s.at - endedAt} ms after its checkpoint`,
        );
      }
    }
    for (const [i, s] of starts.entries()) {
      if (s.attempt >= winner) continue;
      counts.extraStarts++;
      const end = t.ends.find((e) => e.attempt === s.attempt);
      const next = starts[i + 1];
      const delay = FAILS_FIRST.get(t.step);
      // A planned failure, once KV recorded it (a kill may land between the two).
      const plannedFailure = end?.outcome === "error" && delay !== undefined &&
        s.attempt === 1 && t.ended.get(s.attempt) === "failed";
      if (plannedFailure) {
        counts.plannedFailures++;
        // A retry is durable and on time: never before its delay, whoever runs it.
        const late = next.at - (end.at + delay);
        if (late < 0) problems.push(`${where}: retried ${-late} ms early`);
        if (t.step === "tock") retryLateness.push(late);
        continue;
      }
      // Explained by a kill: the pid that ran it was killed after it started, the next
      // attempt began only after that kill, and KV recorded the attempt as crashed.
      const kill = killOf.get(s.pid);
      const crashed = t.ended.get(s.attempt) === "crashed";
      if (kill && kill.after >= s.at && (!next || next.at >= kill.before) && crashed) {
        if (end) counts.killedBeforeCheckpoint++;
        else counts.killedInBody++;
        continue;
      }
      // Explained by a SIGTERM: the worker was told to stop after the body started (or so
      // shortly before that it had not handled the signal yet), handed it back at the end
      // of the grace period, and KV recorded the attempt as interrupted.
      const term = termOf.get(s.pid);
      if (
        term && term.after + SIGNAL_LAG_MS >= s.at && (!next || next.at >= term.before) &&
        t.ended.get(s.attempt) === "interrupted"
      ) {
        counts.handedBack++;
        continue;
      }
      counts.unexplained++;
      problems.push(
        `${where}: attempt ${s.attempt} (pid ${s.pid}, ${end ? `ended ${end.outcome}` : "no end"}${
          kill ? `, killed ${kill.before - s.at} ms after it started` : ", never killed"
        }${term ? `, SIGTERM ${term.before - s.at} ms after it started` : ""}, recorded ${
          t.ended.get(s.attempt)
        }) ran again as attempt ${next?.attempt} at +${next ? next.at - s.at : "?"} ms`,
      );
    }
    // The formula of the issue, on top: starts ≤ 1 + planned failures + kills that hit it.
    const hits = starts.filter((s) => {
      const kill = killOf.get(s.pid);
      const term = termOf.get(s.pid);
      return s.attempt !== winner && (
        (kill !== undefined && kill.after >= s.at) ||
        (term !== undefined && term.after + SIGNAL_LAG_MS >= s.at)
      );
    }).length;
    const planned = FAILS_FIRST.has(t.step) && starts.some((s) => s.attempt === 1) &&
        t.ends.some((e) => e.attempt === 1 && e.outcome === "error")
      ? 1
      : 0;
    if (starts.length > 1 + planned + hits) {
      problems.push(`${where}: ${starts.length} bodies for ${hits} kills`);
    }
  }
  for (const run of all) {
    const expected = 7 + ITEMS;
    const have = [...tasks.values()].filter((t) => t.run === run.id && t.record).length;
    if (have !== expected) problems.push(`${run.id}: ${have} checkpointed tasks, not ${expected}`);
    if (run.status !== "succeeded") problems.push(`${run.id}: ${run.status} ${run.error?.message}`);
  }
  counts.stuck = all.filter((r) => !TERMINAL.has(r.status)).length;
  // From the end of `report` to the start of `finish`: the checkpoint commit between them.
  const handoffs = all.map((run) => {
    const report = task(run.id, "report", -1);
    const finish = task(run.id, "finish", -1);
    const ended = report.ends.find((e) => e.attempt === report.record?.attempt);
    const began = finish.starts.find((e) => e.attempt === finish.record?.attempt);
    return ended && began ? began.at - ended.at : NaN;
  }).filter((n) => !Number.isNaN(n));

  // ---- the schedule: one run per tick, every tick from the first to the last --------
  const seen = ticks.map((r) => r.tick!);
  const expected = ticksFrom(seen[0], seen[seen.length - 1]);
  counts.ticksExpected = expected.length;

  // What went wrong inside the workers, as they logged it (kills cut lines short).
  const kvErrors = started.flatMap((p) => p.stderr.split("\n"))
    .filter((l) => /could not write|database is locked|sweep failed/.test(l));
  const startMs = [...serving.values()].filter((l) => l.up).map((l) => l.up! - l.spawned);
  let idleMs = 0;
  for (let t = stormStart; t < stormEnd; t += 100) {
    const up = [...serving.values()].some((l) => l.up && l.up <= t && (l.down ?? Infinity) > t);
    if (!up) idleMs += 100;
  }
  console.log(
    [
      `chaos: storm ${((stormEnd - stormStart) / 1000).toFixed(1)} s, drained ${
        ((drained - stormEnd) / 1000).toFixed(1)
      } s later, test ${((Date.now() - t0) / 1000).toFixed(1)} s in all`,
      `  runs ${counts.runs} (${counts.succeeded} succeeded, ${counts.stuck} stuck), tick runs ${counts.tickRuns} for ${counts.ticksExpected} ticks`,
      `  SIGKILLs ${counts.kills}, SIGTERMs ${counts.terms}, workers started ${counts.workersStarted} (ready in p50 ${
        percentile(startMs, 0.5)
      } ms, max ${percentile(startMs, 1)} ms; none serving for ${
        (idleMs / 1000).toFixed(1)
      } s of the storm), lease takeovers ${counts.takeovers}`,
      `  bodies started ${counts.bodies}, checkpoints ${counts.checkpoints} (double ${counts.doubleCheckpoints}, missing ${counts.missingCheckpoints})`,
      `  extra starts ${counts.extraStarts}: planned failures ${counts.plannedFailures}, killed in body ${counts.killedInBody}, killed before checkpoint ${counts.killedBeforeCheckpoint}, handed back at a SIGTERM ${counts.handedBack}, unexplained ${counts.unexplained}`,
      `  retries of tock ${retryLateness.length}, late by p50 ${
        percentile(retryLateness, 0.5)
      } ms, max ${percentile(retryLateness, 1)} ms; report → finish p50 ${
        percentile(handoffs, 0.5)
      } ms, p99 ${percentile(handoffs, 0.99)} ms, max ${percentile(handoffs, 1)} ms`,
      `  KV errors logged by workers ${kvErrors.length}${
        kvErrors.length ? ` (first: ${kvErrors[0].slice(0, 160)})` : ""
      }`,
      `  starts after checkpoint ${counts.startsAfterCheckpoint}; due entries of finished runs ${counts.staleDue}, disagreeing with their run ${counts.disagreeingDue}, leases ${counts.staleLeases}, active/status index entries ${counts.staleIndexes}`,
    ].join("\n"),
  );

  assert.deepEqual(problems.slice(0, 20), [], `${problems.length} problems`);
  assert.equal(counts.succeeded, RUNS);
  // Work left by the storm is found by the sweep within a lease or two, not by a
  // once-a-minute heartbeat or a queue redelivery.
  assert.ok(drained - stormEnd < 30_000, `draining took ${drained - stormEnd} ms`);
  assert.equal(counts.staleDue, 0, "due entries of finished runs");
  assert.equal(counts.disagreeingDue, 0, "due entries that disagree with their run");
  assert.equal(counts.staleLeases, 0, "leases of finished runs");
  assert.equal(counts.staleIndexes, 0, "active or status index entries of finished runs");
  assert.ok(
    counts.kills + counts.terms >= STORM_MS / 1500 - 1,
    `only ${counts.kills + counts.terms} signals`,
  );
  assert.ok(counts.killedInBody > 0, "no kill landed in a body: the storm proved nothing");
  assert.equal(
    counts.plannedFailures + counts.killedInBody + counts.killedBeforeCheckpoint +
      counts.handedBack,
    counts.extraStarts,
  );

  assert.deepEqual(seen, expected, "one run per tick, none missing");
  assert.equal(new Set(ticks.map((r) => r.id)).size, ticks.length);
  assert.ok(seen[0] <= stormStart + 3 * TICK_MS, `first tick ${seen[0] - stormStart} ms in`);
  assert.ok(seen[seen.length - 1] >= stopAt - 3 * TICK_MS, "ticks before the stop were missed");
  assert.equal(stale.schedule?.skipped, 0, "the schedule dropped ticks");
  for (const run of ticks) {
    if (run.tick! <= tickCutoff) assert.equal(run.status, "succeeded", run.id);
  }
});
