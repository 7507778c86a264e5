/**
 * Chaos for waits and events: three worker processes on one KV file run 300 runs that each
 * wait for their own event (`await-one`: `chaos.ready` with the run's key; `await-pair`:
 * `chaos.approved` or `chaos.rejected`, the first wins), while a sender process creates
 * the runs and sends their events with `engine.send`: some at once (before the wait
 * starts), some seconds later (the run is parked), some twice with the same id, some for
 * no run at all, approvals and rejections racing. A driver stops a random worker every
 * 0.3–1.5 s and starts a new one (two times in three SIGKILL, else SIGTERM with a grace
 * period shorter than the bodies), and now and then SIGKILLs the sender, which starts
 * again and repeats what was in flight with the same ids.
 *
 * Bodies write to a side ledger (SQLite) when they start and end, with their idempotency
 * key and the event id they got. Afterwards KV, the ledger, the sender's answers and the
 * kills must show: every run ended once (succeeded, or failed at `after` where a rejection
 * won); each wait output exactly its event; no step after a wait ran again unless a kill
 * explains it, none after its checkpoint; no wait, inbox, outbox, due or lease entry left.
 *
 * `KVFLOW_CHAOS_SECONDS` sets the storm's length (default 40) and `KVFLOW_CHAOS_RUNS` the
 * number of runs (default 300).
 *
 * @module
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import type { AttemptRecord, RunRecord, TaskRecord } from "../lib/mod.ts";
import type { EventEffect } from "../lib/model/events.ts";
import { TERMINAL } from "../lib/model/records.ts";
import { FIXTURE_CLI, poll, type Proc, Sandbox } from "./_support/harness.ts";
import type { SenderJob, SentLine } from "./_support/waits_sender.ts";
import { openWaitsLedger, type WaitsRow } from "./fixtures/waits.ts";

const STORM_MS = 1000 * Number(Deno.env.get("KVFLOW_CHAOS_SECONDS") ?? 40);
const RUNS = Number(Deno.env.get("KVFLOW_CHAOS_RUNS") ?? 300);
const ORPHANS = 40;
const WORKERS = 3;
const SENDER = "tests/_support/waits_sender.ts";
/** How long after a SIGTERM a worker may still start a body (it has not handled it yet). */
const SIGNAL_LAG_MS = 250;

interface Kill {
  pid: number;
  before: number;
  after: number;
}

/** What one run is planned to get, and which of its events must win. */
interface Planned {
  run: string;
  pipeline: "await-one" | "await-pair";
  key: string;
  mode: string;
  /** Event ids in the order they are sent (a repeated id appears twice). */
  sends: { id: string; name: string }[];
  winner: { id: string; name: string };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The plan: run `i` is created at its time in the first half of the storm and gets its
 * events at once, seconds later, twice, or two that race; orphan events match no run.
 */
function makePlan(start: number): { jobs: SenderJob[]; planned: Planned[]; orphans: string[] } {
  const jobs: SenderJob[] = [];
  const planned: Planned[] = [];
  const span = STORM_MS * 0.5;
  for (let i = 0; i < RUNS; i++) {
    const at = start + Math.round((i / RUNS) * span);
    const key = `k${i}`;
    const pair = i % 3 === 2;
    const run = `${pair ? "pair" : "one"}-${i}`;
    const later = (n: number) => 1000 + ((i * n) % 7000);
    const sends: { id: string; name: string; at: number }[] = [];
    const ev = (n: number, name: string, t: number) =>
      sends.push({ id: `r${i}-${n}-${name.split(".")[1]}`, name, at: t });
    let mode: string;
    if (!pair) {
      mode = ["early", "late", "twice", "early-then-again"][Math.floor(i / 3) % 4];
      if (mode === "early") ev(1, "chaos.ready", at);
      if (mode === "late") ev(1, "chaos.ready", at + later(37));
      if (mode === "twice" || mode === "early-then-again") {
        const first = mode === "twice" ? at + (i * 53) % 5000 : at;
        ev(1, "chaos.ready", first);
        sends.push({ ...sends[0], at: first + 50 + (i * 31) % 4000 });
      }
    } else {
      mode = ["approve", "reject", "approve-reject", "reject-approve", "early-approve"][
        Math.floor(i / 3) % 5
      ];
      if (mode === "approve") ev(1, "chaos.approved", at + later(41));
      if (mode === "reject") ev(1, "chaos.rejected", at + later(43));
      if (mode === "early-approve") ev(1, "chaos.approved", at);
      if (mode === "approve-reject" || mode === "reject-approve") {
        const [a, b] = mode === "approve-reject"
          ? ["chaos.approved", "chaos.rejected"]
          : ["chaos.rejected", "chaos.approved"];
        // the second follows the first closely: sometimes both before the wait, sometimes not
        const first = at + (i * 59) % 6000;
        ev(1, a, first);
        ev(2, b, first + (i * 7) % 300);
      }
    }
    jobs.push({
      actions: [
        { at, kind: "create", pipeline: pair ? "await-pair" : "await-one", id: run, key },
        ...sends.map((s) => ({ at: s.at, kind: "send" as const, name: s.name, id: s.id, key })),
      ],
    });
    planned.push({
      run,
      pipeline: pair ? "await-pair" : "await-one",
      key,
      mode,
      sends: sends.map(({ id, name }) => ({ id, name })),
      winner: { id: sends[0].id, name: sends[0].name },
    });
  }
  const orphans: string[] = [];
  const names = ["chaos.ready", "chaos.approved", "chaos.rejected"];
  for (let n = 0; n < ORPHANS; n++) {
    const at = start + Math.round((n / ORPHANS) * span) + 200;
    const id = `orphan-${n}`;
    const action = { at, kind: "send" as const, name: names[n % 3], id, key: `nobody-${n}` };
    orphans.push(id);
    jobs.push({ actions: n % 2 ? [action, { ...action, at: at + 500 }] : [action] });
  }
  return { jobs, planned, orphans };
}

/** Every run in the KV file. */
async function allRuns(box: Sandbox): Promise<RunRecord[]> {
  return await box.withStore(async (store) => {
    const runs: RunRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await store.listRuns({ limit: 1000, cursor });
      // only this test's runs: the registry's nightly may tick meanwhile (02:00 UTC)
      runs.push(
        ...page.runs.filter((r) => r.pipeline === "await-one" || r.pipeline === "await-pair"),
      );
      cursor = page.cursor;
    } while (cursor);
    return runs;
  });
}

Deno.test("chaos: 300 runs wait for their events under SIGKILL/SIGTERM storms of three workers and the sender; each wait gets exactly its event, nothing runs after its checkpoint, no index entry is left", async () => {
  const t0 = Date.now();
  await using box = await Sandbox.create();
  const ledgerPath = `${box.dir}/ledger.sqlite`;
  openWaitsLedger(ledgerPath).close();
  const env = {
    WAITS_LEDGER: ledgerPath,
    KVFLOW_LEASE_MS: "5000",
    KVFLOW_POLL_MS: "200",
    KVFLOW_GRACE_MS: "15",
  };
  const started: Proc[] = [];
  const up = new Set<Proc>();
  const spawnWorker = () => {
    const proc = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
    started.push(proc);
    proc.waitForOutput(/worker \S+ started/, 300_000).then(() => up.add(proc), () => {});
    return proc;
  };
  const workers = Array.from({ length: WORKERS }, spawnWorker);
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));

  const stormStart = Date.now();
  const { jobs, planned, orphans } = makePlan(stormStart + 1500);
  const planPath = `${box.dir}/plan.json`;
  await Deno.writeTextFile(planPath, JSON.stringify(jobs));
  const senderEnv = {
    ...env,
    WAITS_PLAN: planPath,
    WAITS_DONE: `${box.dir}/done.txt`,
    WAITS_SENT: `${box.dir}/sent.jsonl`,
  };
  const senders: Proc[] = [];
  const spawnSender = () => {
    const proc = box.spawn([], { entry: SENDER, env: senderEnv });
    senders.push(proc);
    return proc;
  };
  let sender = spawnSender();

  const kills: Kill[] = [];
  const terms: Kill[] = [];
  let senderKills = 0;
  while (true) {
    await sleep(300 + Math.random() * 1200);
    if (Date.now() >= stormStart + STORM_MS) break;
    if (Math.random() < 0.12 && !/sender \d+ done/.test(sender.stderr)) {
      // the sender dies mid-send; started again, it repeats what was in flight
      const before = Date.now();
      sender.kill("SIGKILL");
      kills.push({ pid: sender.pid, before, after: Date.now() });
      senderKills++;
      sender = spawnSender();
      continue;
    }
    const slot = Math.floor(Math.random() * WORKERS);
    const victim = workers[slot];
    const before = Date.now();
    const graceful = up.has(victim) && Math.random() < 1 / 3;
    victim.kill(graceful ? "SIGTERM" : "SIGKILL");
    (graceful ? terms : kills).push({ pid: victim.pid, before, after: Date.now() });
    workers[slot] = spawnWorker();
  }
  const stormEnd = Date.now();
  const senderExit = await sender.exit();
  assert.equal(senderExit.code, 0, senderExit.stderr);
  await Promise.all(workers.map((w) => w.waitForOutput(/worker \S+ started/, 60_000)));

  const all = await poll("every run to end", 60_000, async () => {
    const runs = await allRuns(box);
    return runs.length === RUNS && runs.every((r) => TERMINAL.has(r.status)) ? runs : undefined;
  }).catch(async (error) => {
    const runs = await allRuns(box);
    const open = runs.filter((r) => !TERMINAL.has(r.status));
    throw new Error(
      `${error.message}: ${runs.length} runs, open: ${
        open.slice(0, 5).map((r) => `${r.id} ${r.status} due ${r.dueAt}`).join("; ")
      }`,
    );
  });
  const drained = Date.now();
  for (const w of workers) w.kill("SIGTERM");
  for (const exit of await Promise.all(workers.map((w) => w.exit()))) {
    assert.equal(exit.code, 0, exit.stderr);
  }
  for (const proc of [...started, ...senders]) await proc.exit();

  // ---- what KV holds ------------------------------------------------------------------
  const byRun = new Map(all.map((r) => [r.id, r]));
  const kv = await box.withStore(async (store) => {
    const { kv } = store;
    const count = async (prefix: Deno.KvKey) => {
      let n = 0;
      for await (const _ of kv.list({ prefix })) n++;
      return n;
    };
    const outputs = new Map<string, { id: string; event: string; at: number } | null>();
    const waitRecords = new Map<string, TaskRecord>();
    const attempts = new Map<string, AttemptRecord[]>();
    const records = new Map<string, TaskRecord>();
    for (const p of planned) {
      const wait = p.pipeline === "await-one" ? "gate" : "decision";
      const steps = await store.getSteps(p.run);
      for (const [name, record] of steps) records.set(`${p.run}\u0000${name}`, record);
      waitRecords.set(p.run, steps.get(wait)!);
      outputs.set(
        p.run,
        steps.get(wait)?.status === "succeeded"
          ? await store.getOutput(p.run, wait) as { id: string; event: string; at: number }
          : null,
      );
      for await (const e of kv.list<AttemptRecord>({ prefix: keys.attemptPrefix(p.run) })) {
        const id = `${p.run}\u0000${e.value.step}`;
        attempts.set(id, [...attempts.get(id) ?? [], e.value]);
      }
    }
    const effects = new Map<string, EventEffect[]>();
    const events = new Set<string>();
    for (const id of [...planned.flatMap((p) => p.sends.map((s) => s.id)), ...orphans]) {
      const event = await store.kv.get(keys.event(id));
      if (event.value) events.add(id);
      const list: EventEffect[] = [];
      for await (const e of kv.list<EventEffect>({ prefix: keys.eventEffectPrefix(id) })) {
        list.push(e.value);
      }
      effects.set(id, list);
    }
    const alerts = new Map<string, number>();
    for await (const e of kv.list({ prefix: keys.allAlertsPrefix() })) {
      const run = e.key[2] as string;
      alerts.set(run, (alerts.get(run) ?? 0) + 1);
    }
    const active = (await Promise.all(
      ["queued", "running", "waiting"].map((s) => count(keys.runsByStatusPrefix(s))),
    )).reduce((a, b) => a + b, 0);
    return {
      outputs,
      waitRecords,
      attempts,
      records,
      effects,
      events,
      alerts,
      left: {
        waits: await count(keys.waitEntryPrefix("", "", "").slice(0, 2)),
        inbox: await count(keys.inboxPrefix("").slice(0, 2)),
        outbox: await count(keys.eventOutboxPrefix()),
        due: await count(keys.duePrefix()),
        leases: await count(keys.leasePrefix()),
        activeIndexes: active,
      },
      bells: await count(keys.bell("").slice(0, 2)),
    };
  });

  // ---- the ledger and the sender's answers --------------------------------------------
  const db = openWaitsLedger(ledgerPath);
  const rows = db.prepare("SELECT * FROM ledger ORDER BY id").all() as unknown as WaitsRow[];
  db.close();
  const sentText = await Deno.readTextFile(senderEnv.WAITS_SENT);
  const sent: SentLine[] = sentText.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));

  const problems: string[] = [];
  const killOf = new Map(kills.map((k) => [k.pid, k]));
  const termOf = new Map(terms.map((k) => [k.pid, k]));
  let sentBeforeWait = 0;
  let parkedWhenSent = 0;
  let extraStarts = 0;
  let explained = 0;
  let afterTwice = 0;
  for (const p of planned) {
    const run = byRun.get(p.run);
    if (!run) {
      problems.push(`${p.run}: no run`);
      continue;
    }
    // every run ended once: succeeded, or failed at `after` where a rejection won
    const rejected = p.winner.name === "chaos.rejected";
    if (rejected) {
      if (run.status !== "failed" || run.error?.step !== "after") {
        problems.push(`${p.run}: ${run.status} at ${run.error?.step}, not failed at after`);
      } else if (!run.error.message.includes(`Rejected by ${p.winner.id}`)) {
        problems.push(`${p.run}: failed with '${run.error.message}'`);
      }
      if (kv.alerts.get(p.run) !== 1) problems.push(`${p.run}: ${kv.alerts.get(p.run)} alerts`);
    } else if (run.status !== "succeeded") {
      problems.push(`${p.run} (${p.mode}): ${run.status} ${run.error?.message}`);
    }
    // each wait got exactly its event: the first sent
    const output = kv.outputs.get(p.run);
    if (output?.id !== p.winner.id || output.event !== p.winner.name) {
      problems.push(
        `${p.run} (${p.mode}): the wait output ${output?.event} ${output?.id}, not ${p.winner.id}`,
      );
    }
    const wait = kv.waitRecords.get(p.run)!;
    if (output && wait.startedAt !== null && output.at < wait.startedAt) sentBeforeWait++;
    if (wait.attempt !== 1) problems.push(`${p.run}: the wait has attempt ${wait.attempt}`);
    // what the event did: it woke this run once; the losers woke nobody
    const woke = kv.effects.get(p.winner.id)!.filter((e) => e.kind === "woke");
    if (woke.length !== 1 || woke[0].runId !== p.run) {
      problems.push(`${p.winner.id}: woke ${JSON.stringify(woke.map((e) => e.runId))}`);
    }
    for (const s of p.sends) {
      if (s.id === p.winner.id) continue;
      const other = kv.effects.get(s.id)!.filter((e) => e.kind === "woke");
      if (other.length) problems.push(`${s.id} lost the race but woke ${other[0].runId}`);
    }
    // steps with bodies: more than one start only where a kill explains it, none after
    // the checkpoint, and the one that counts ran with the right event
    for (const step of ["before", "after"]) {
      const record = kv.records.get(`${p.run}\u0000${step}`);
      const starts = rows.filter((r) => r.run === p.run && r.step === step && r.event === "start");
      const ends = rows.filter((r) => r.run === p.run && r.step === step && r.event === "end");
      const recorded = new Map(
        (kv.attempts.get(`${p.run}\u0000${step}`) ?? []).map((a) => [a.n, a.status]),
      );
      if (!record || (record.status !== "succeeded" && record.status !== "failed")) {
        problems.push(`${p.run} ${step}: ${record?.status}`);
        continue;
      }
      if (step === "after" && starts.length > 1) afterTwice++;
      if (new Set(starts.map((s) => s.key)).size !== 1) {
        problems.push(`${p.run} ${step}: ${new Set(starts.map((s) => s.key)).size} keys`);
      }
      const final = starts.find((s) => s.attempt === record.attempt);
      if (!final) problems.push(`${p.run} ${step}: its attempt ${record.attempt} never started`);
      if (step === "after" && final && final.eventId !== p.winner.id) {
        problems.push(`${p.run} after ran with ${final.eventId}, not ${p.winner.id}`);
      }
      for (const s of starts) {
        if (s.at > record.endedAt!) {
          problems.push(`${p.run} ${step}: attempt ${s.attempt} started after its checkpoint`);
        }
      }
      const sorted = [...starts].sort((a, b) => a.attempt - b.attempt);
      for (const [i, s] of sorted.entries()) {
        if (s.attempt >= record.attempt) continue;
        extraStarts++;
        const next = sorted[i + 1];
        const kill = killOf.get(s.pid);
        const term = termOf.get(s.pid);
        const end = ends.find((e) => e.attempt === s.attempt);
        if (
          kill && kill.after >= s.at && (!next || next.at >= kill.before) &&
          recorded.get(s.attempt) === "crashed"
        ) {
          explained++;
          continue;
        }
        if (
          term && term.after + SIGNAL_LAG_MS >= s.at && (!next || next.at >= term.before) &&
          recorded.get(s.attempt) === "interrupted"
        ) {
          explained++;
          continue;
        }
        problems.push(
          `${p.run} ${step}: attempt ${s.attempt} (pid ${s.pid}, ${
            end ? `ended ${end.outcome}` : "no end"
          }, recorded ${recorded.get(s.attempt)}${kill ? ", killed" : ""}${
            term ? ", SIGTERM" : ""
          }) ran again as attempt ${next?.attempt}`,
        );
      }
    }
  }
  // the sender: a repeated id stored nothing and woke nobody; an orphan woke nobody
  const firstSend = new Map<string, SentLine>();
  for (const line of sent) {
    const first = firstSend.get(line.id);
    if (!first) {
      // a first answer is a duplicate only when a sender killed after its commit sent it
      if (line.duplicate && senderKills === 0) {
        problems.push(`${line.id}: the first send answered duplicate`);
      }
      firstSend.set(line.id, line);
      continue;
    }
    if (!line.duplicate || line.woke.length > 0) {
      problems.push(`${line.id} sent again: duplicate ${line.duplicate}, woke ${line.woke}`);
    }
  }
  for (const line of sent) parkedWhenSent += line.woke.length;
  for (const id of orphans) {
    if (!kv.events.has(id)) problems.push(`${id}: not stored`);
    if (kv.effects.get(id)!.length) problems.push(`${id}: woke ${kv.effects.get(id)![0].runId}`);
  }
  const senderPids = new Set(senders.map((s) => s.pid));
  const duplicates = sent.filter((l) => l.duplicate).length;

  console.log(
    [
      `chaos events: storm ${((stormEnd - stormStart) / 1000).toFixed(1)} s, drained ${
        ((drained - stormEnd) / 1000).toFixed(1)
      } s later, test ${((Date.now() - t0) / 1000).toFixed(1)} s in all`,
      `  runs ${all.length}: ${all.filter((r) => r.status === "succeeded").length} succeeded, ${
        all.filter((r) => r.status === "failed").length
      } failed (rejected), takeovers ${all.reduce((n, r) => n + r.takeovers, 0)}`,
      `  SIGKILLs ${kills.length} (sender ${senderKills}), SIGTERMs ${terms.length}, workers started ${started.length}, senders ${senders.length}`,
      `  sends ${sent.length} answered (${duplicates} duplicate), ${kv.events.size} events stored; waits that found their event stored before they started ${sentBeforeWait}, woken by a send ${parkedWhenSent}`,
      `  bodies ${rows.filter((r) => r.event === "start").length} (${
        rows.filter((r) => r.event === "start" && senderPids.has(r.pid)).length
      } in the sender), extra starts ${extraStarts} (explained by a kill ${explained}), runs whose after ran twice ${afterTwice}`,
      `  left: wait entries ${kv.left.waits}, inbox ${kv.left.inbox}, outbox ${kv.left.outbox}, due ${kv.left.due}, leases ${kv.left.leases}, active status indexes ${kv.left.activeIndexes}; bells ${kv.bells}`,
    ].join("\n"),
  );

  assert.deepEqual(problems.slice(0, 20), [], `${problems.length} problems`);
  assert.equal(all.length, RUNS);
  assert.deepEqual(kv.left, {
    waits: 0,
    inbox: 0,
    outbox: 0,
    due: 0,
    leases: 0,
    activeIndexes: 0,
  });
  assert.ok(sentBeforeWait > 10, `only ${sentBeforeWait} events came before their wait`);
  assert.ok(parkedWhenSent > 10, `only ${parkedWhenSent} sends woke a parked wait`);
  assert.ok(duplicates >= 40, `only ${duplicates} repeated sends`);
  assert.ok(kills.length + terms.length >= STORM_MS / 1500 - 1, "too few signals");
  assert.ok(drained - stormEnd < 30_000, `draining took ${drained - stormEnd} ms`);
});
