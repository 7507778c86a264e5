/**
 * The guarantees of durable waits, each tried with real worker processes on a KV file:
 * a timeout and a sleep end on time after their worker is SIGKILLed; a child run started
 * by a step whose worker dies mid-start exists once; and 10,000 parked runs hold no lease
 * and no slot, and leave their worker's CPU idle and its memory flat.
 *
 * `KVFLOW_PARKED_RUNS` sets the number of parked runs (default 10,000).
 *
 * @module
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import type { RunRecord, TaskRecord } from "../lib/mod.ts";
import type { Lease } from "../lib/model/records.ts";
import { childRunId } from "../lib/model/events.ts";
import { TERMINAL } from "../lib/model/records.ts";
import { openEngine } from "../lib/mod.ts";
import { FIXTURE_CLI, poll, type Proc, Sandbox } from "./_support/harness.ts";
import {
  fanParent,
  nap,
  napParked,
  openWaitsLedger,
  timeoutFail,
  timeoutParked,
  timeoutValue,
  WAITS_PIPELINES,
  type WaitsRow,
} from "./fixtures/waits.ts";

const STARTED = /worker \S+ started/;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Every run in the KV file. */
async function allRuns(box: Sandbox): Promise<RunRecord[]> {
  return await box.withStore(async (store) => {
    const runs: RunRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await store.listRuns({ limit: 1000, cursor });
      // only the test's runs: the registry's nightly may tick meanwhile (02:00 UTC)
      runs.push(...page.runs.filter((r) => r.pipeline !== "nightly" && r.pipeline !== "example"));
      cursor = page.cursor;
    } while (cursor);
    return runs;
  });
}

/** What KV holds of a parent: its run, its steps, its items by status, its children. */
async function dumpParent(box: Sandbox, id: string, items: number): Promise<string> {
  return await box.withStore(async (store) => {
    const run = await store.getRun(id);
    const out: string[] = [
      `run ${id} ${run?.status} takeovers=${run?.takeovers} ended=${run?.endedAt}`,
    ];
    for (const step of ["list", "children", "sum"]) {
      const e = await store.kv.get<TaskRecord>(keys.step(id, step));
      const r = e.value;
      out.push(
        `step ${step}: ${r?.status} items=${r?.items} attempt=${r?.attempt} gen=${r?.generation} start=${r?.startedAt} end=${r?.endedAt} out=${!!r
          ?.output} vs=${e.versionstamp}`,
      );
    }
    const byStatus: Record<string, number> = {};
    const kinds: string[] = [];
    for await (const e of store.kv.list<TaskRecord>({ prefix: keys.itemPrefix(id, "children") })) {
      byStatus[e.value.status] = (byStatus[e.value.status] ?? 0) + 1;
      if (e.value.status !== "succeeded") kinds.push(`${String(e.key[4])}:${e.value.status}`);
    }
    out.push(`items ${JSON.stringify(byStatus)} ${kinds.slice(0, 10).join(",")}`);
    let there = 0;
    const missing: number[] = [];
    for (let i = 0; i < items; i++) {
      if (await store.getRun(childRunId(id, "children", i))) there++;
      else missing.push(i);
    }
    out.push(`child records ${there}, missing ${missing.slice(0, 20).join(",")}`);
    const attempts: string[] = [];
    for await (
      const e of store.kv.list<
        {
          step: string;
          item: number;
          n: number;
          status?: string;
          startedAt?: number;
          endedAt?: number;
        }
      >({ prefix: keys.attemptPrefix(id) })
    ) {
      if (e.value.step !== "children") {
        attempts.push(
          `${e.value.step}#${e.value.n} ${e.value.status} ${e.value.startedAt}-${e.value.endedAt}`,
        );
      }
    }
    out.push(`attempts ${attempts.join("; ")}`);
    return out.join("\n");
  });
}

/** How many entries KV holds under each prefix. */
async function countEntries(
  box: Sandbox,
  prefixes: Record<string, Deno.KvKey>,
): Promise<Record<string, number>> {
  return await box.withStore(async ({ kv }) => {
    const out: Record<string, number> = {};
    for (const [name, prefix] of Object.entries(prefixes)) {
      out[name] = 0;
      for await (const _ of kv.list({ prefix })) out[name]++;
    }
    return out;
  });
}

/** Index entries that must be gone once every run ended. */
const LEFTOVERS = {
  waits: keys.waitEntryPrefix("", "", "").slice(0, 2),
  inbox: keys.inboxPrefix("").slice(0, 2),
  outbox: keys.eventOutboxPrefix(),
  due: keys.duePrefix(),
  leases: keys.leasePrefix(),
};

Deno.test("a timeout fires on time, and a sleep ends on time, after the worker that held or parked them was SIGKILLed", async () => {
  await using box = await Sandbox.create();
  const ledgerPath = `${box.dir}/ledger.sqlite`;
  openWaitsLedger(ledgerPath).close();
  const env = { WAITS_LEDGER: ledgerPath, KVFLOW_POLL_MS: "200" };
  const first = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await first.waitForOutput(STARTED, 60_000);

  const pipelines = [timeoutFail, timeoutValue, timeoutParked, nap, napParked];
  const runs = await box.withStore(async (store) => {
    const out: RunRecord[] = [];
    for (const p of pipelines) out.push(await store.createRun(p, { params: { key: p.name } }));
    return out;
  });
  const waitStep = (run: RunRecord) => run.pipeline.startsWith("nap") ? "nap" : "wait";
  // every wait has started in the first worker
  const waiting = await poll("every wait to start", 20_000, async () => {
    const tasks = await box.withStore(async (store) =>
      await Promise.all(runs.map(async (r) => (await store.getSteps(r.id)).get(waitStep(r))))
    );
    return tasks.every((t) => t?.status === "waiting") ? tasks as TaskRecord[] : undefined;
  });
  const until = new Map(runs.map((r, i) => [r.id, waiting[i].wait!.until]));
  // a fresh worker, started while the first still holds them
  const second = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
  await second.waitForOutput(STARTED, 60_000);
  // a run waiting for an event is parked however soon its timeout; one that sleeps less
  // than the worker's hold time (5 s) is kept in process, with its lease, on a timer
  const heldHere = (r: RunRecord) => r.pipeline === "nap";
  const held = await poll("every run to park or be held", 20_000, async () => {
    const now = await box.withStore(async (store) =>
      await Promise.all(runs.map(async (r) => ({
        run: await store.requireRun(r.id),
        lease: (await store.getLease(r.id)).value as Lease | null,
      })))
    );
    return now.every((r) => r.run.status === (heldHere(r.run) ? "running" : "waiting"))
      ? now
      : undefined;
  });
  const killedAt = Date.now();
  first.kill("SIGKILL");
  assert.equal((await first.exit()).signal, "SIGKILL");
  for (const { run, lease } of held) {
    if (heldHere(run)) {
      assert.equal(lease?.pid, first.pid, run.id);
    } else {
      assert.equal(run.status, "waiting", run.id);
      assert.equal(lease, null, run.id);
      assert.equal(run.dueAt, until.get(run.id), run.id);
    }
  }

  const ended = await poll("every run to end", 30_000, async () => {
    const now = await Promise.all(runs.map((r) => box.run(r.id)));
    return now.every((r) => TERMINAL.has(r.status)) ? now : undefined;
  });
  const db = openWaitsLedger(ledgerPath);
  const rows = db.prepare("SELECT * FROM ledger WHERE event = 'start'")
    .all() as unknown as WaitsRow[];
  db.close();
  const report: string[] = [];
  for (const run of ended) {
    const due = until.get(run.id)!;
    const step = waitStep(run);
    const { task, output } = await box.withStore(async (store) => {
      const task = (await store.getSteps(run.id)).get(step)!;
      return {
        task,
        output: task.status === "succeeded" ? await store.getOutput(run.id, step) : null,
      };
    });
    const late = task.endedAt! - due;
    report.push(
      `${run.pipeline}: ended ${late} ms after its time (${
        due > killedAt ? `${due - killedAt} ms after the kill` : "due before the kill"
      })`,
    );
    assert.ok(late >= 0, `${run.id}: the wait ended ${-late} ms before its time`);
    // the fresh worker was up before the kill: it notices the dead holder or the due
    // entry at its next sweep (200 ms)
    assert.ok(late < 1500, `${run.id}: the wait ended ${late} ms late`);
    const next = rows.filter((r) => r.run === run.id);
    if (run.pipeline === "t-fail") {
      assert.equal(run.status, "failed");
      assert.equal(run.error?.step, "wait");
      assert.match(run.error!.message, /No never\.sent event with key = "t-fail" arrived by/);
      assert.equal(task.error?.name, "TimedOut");
      assert.equal(next.length, 0, "a step after a failed wait ran");
      continue;
    }
    assert.equal(run.status, "succeeded", `${run.id}: ${run.error?.message}`);
    assert.ok(next.length >= 1 && next.every((r) => r.pid === second.pid), run.id);
    assert.ok(next.every((r) => r.at >= due), `${run.id}: the next step started early`);
    if (step === "nap") assert.deepEqual(output, { until: due });
    else {
      assert.deepEqual(
        { ...(output as Record<string, unknown>), at: 0 },
        { event: null, data: "default", id: null, at: 0, reason: "timeout" },
      );
    }
  }
  console.log(report.join("\n"));
  second.kill("SIGTERM");
  assert.equal((await second.exit()).code, 0);
  assert.deepEqual(await countEntries(box, LEFTOVERS), {
    waits: 0,
    inbox: 0,
    outbox: 0,
    due: 0,
    leases: 0,
  });
});

Deno.test("a child started by a step whose worker was SIGKILLed mid-start exists once: 12 parents fan out to 50 children each under a kill storm", async () => {
  const PARENTS = 12;
  const ITEMS = 50;
  const WORKERS = 3;
  await using box = await Sandbox.create();
  const ledgerPath = `${box.dir}/ledger.sqlite`;
  openWaitsLedger(ledgerPath).close();
  const env = {
    WAITS_LEDGER: ledgerPath,
    KVFLOW_LEASE_MS: "5000",
    KVFLOW_POLL_MS: "200",
  };
  const started: Proc[] = [];
  const spawnWorker = () => {
    const proc = box.spawn(["worker"], { entry: FIXTURE_CLI, env });
    started.push(proc);
    return proc;
  };
  const workers = Array.from({ length: WORKERS }, spawnWorker);
  await Promise.all(workers.map((w) => w.waitForOutput(STARTED, 60_000)));
  const parents = await box.withStore(async (store) => {
    const out: RunRecord[] = [];
    for (let i = 0; i < PARENTS; i++) {
      out.push(await store.createRun(fanParent, { params: { items: ITEMS } }));
    }
    return out;
  });
  // SIGKILL a worker every 150–500 ms while the parents start their children
  const kills: { pid: number; at: number }[] = [];
  const stormEnd = Date.now() + 40_000;
  while (Date.now() < stormEnd) {
    await sleep(150 + Math.random() * 350);
    const slot = Math.floor(Math.random() * WORKERS);
    kills.push({ pid: workers[slot].pid, at: Date.now() });
    workers[slot].kill("SIGKILL");
    workers[slot] = spawnWorker();
    // every child created: the start of children is over
    const all = (await allRuns(box)).filter((r) => r.pipeline === "fan-child").length;
    if (all === PARENTS * ITEMS) break;
  }
  await Promise.all(workers.map((w) => w.waitForOutput(STARTED, 60_000)));
  const runs = await poll("every run to end", 60_000, async () => {
    const runs = await allRuns(box);
    return runs.length === PARENTS * (ITEMS + 1) && runs.every((r) => TERMINAL.has(r.status))
      ? runs
      : undefined;
  }).catch(async (error) => {
    const runs = await allRuns(box);
    const open = runs.filter((r) => !TERMINAL.has(r.status));
    if (open.length === 0) {
      // every run ended, but not as many as expected: say which are missing or extra
      const counts: Record<string, number> = {};
      for (const r of runs) {
        counts[`${r.pipeline} ${r.status}`] = (counts[`${r.pipeline} ${r.status}`] ?? 0) + 1;
      }
      const perParent = new Map<string, string[]>();
      for (const r of runs) {
        if (r.parent) perParent.set(r.parent.runId, [...perParent.get(r.parent.runId) ?? [], r.id]);
      }
      const odd = [...perParent].filter(([, kids]) => kids.length !== ITEMS)
        .map(([id, kids]) => `${id}: ${kids.length} children`);
      // a child missing from the list: is its record there (an index lost) or not (never made)?
      const records = await box.withStore(async (store) => {
        const found: string[] = [];
        for (const [parent, kids] of perParent) {
          if (kids.length === ITEMS) continue;
          let there = 0;
          for (let i = 0; i < ITEMS; i++) {
            if (await store.getRun(childRunId(parent, "children", i))) there++;
          }
          found.push(`${parent}: ${there} child records`);
        }
        return found;
      });
      odd.push(...records);
      for (const [parent, kids] of perParent) {
        if (kids.length !== ITEMS) odd.push(await dumpParent(box, parent, ITEMS));
      }
      const failed = runs.filter((r) => r.status !== "succeeded")
        .map((r) => `${r.id} ${r.status}: ${r.error?.step} ${r.error?.message}`);
      throw new Error(
        `${error.message}: ${runs.length} runs, all ended: ${JSON.stringify(counts)}; ${
          odd.join("; ")
        }; ${failed.slice(0, 5).join("; ")}`,
      );
    }
    const dump = await box.withStore(async ({ kv }) => {
      const r = open[0];
      const out: unknown[] = [{ ...r, graph: undefined, params: undefined }];
      out.push({ bell: await kv.get(keys.bell(r.id)) });
      for await (const e of kv.list({ prefix: keys.inboxPrefix(r.id) })) out.push(e);
      for await (const e of kv.list({ prefix: keys.duePrefix() })) out.push(e);
      const items: Record<string, number> = {};
      for await (const e of kv.list<TaskRecord>({ prefix: keys.itemPrefix(r.id, "children") })) {
        items[e.value.status] = (items[e.value.status] ?? 0) + 1;
        if (e.value.status !== "succeeded") out.push(e);
      }
      out.push(items);
      out.push((await kv.get(keys.step(r.id, "children"))).value);
      const kids = runs.filter((c) => c.parent?.runId === r.id);
      out.push(kids.filter((c) => c.status !== "succeeded").map((c) => [c.id, c.status]));
      out.push(kids.map((c) => [c.id, c.endedAt]).slice(0, 3));
      return out;
    });
    throw new Error(
      `${error.message}: ${runs.length} runs, open: ${
        open.slice(0, 5).map((r) => `${r.id} ${r.status}`).join("; ")
      }\n${Deno.inspect(dump, { depth: 6 })}`,
    );
  });
  for (const w of workers) w.kill("SIGTERM");
  for (const w of workers) assert.equal((await w.exit()).code, 0);

  const children = runs.filter((r) => r.pipeline === "fan-child");
  const firstChild = Math.min(...children.map((c) => c.createdAt));
  const lastChild = Math.max(...children.map((c) => c.createdAt));
  const midStart = kills.filter((k) => k.at >= firstChild && k.at <= lastChild).length;
  console.log(
    `children ${children.length} created over ${
      lastChild - firstChild
    } ms, SIGKILLs ${kills.length} (${midStart} while children were being started), parent takeovers ${
      runs.filter((r) => r.pipeline === "fan-parent").reduce((n, r) => n + r.takeovers, 0)
    }`,
  );
  assert.equal(children.length, PARENTS * ITEMS);
  const seen = new Map<string, string>();
  for (const child of children) {
    const parent = child.parent!;
    assert.ok(parent, `${child.id}: no parent`);
    assert.equal(parent.step, "children", child.id);
    assert.equal(child.id, childRunId(parent.runId, "children", parent.item), child.id);
    const slot = `${parent.runId}/${parent.item}`;
    assert.ok(!seen.has(slot), `${slot}: children ${seen.get(slot)} and ${child.id}`);
    seen.set(slot, child.id);
    assert.equal(child.status, "succeeded", child.id);
  }
  await box.withStore(async (store) => {
    for (const p of parents) {
      const run = await store.requireRun(p.id);
      assert.equal(run.status, "succeeded", `${p.id}: ${run.error?.message}`);
      for (let i = 0; i < ITEMS; i++) assert.ok(seen.has(`${p.id}/${i}`), `${p.id}/${i}`);
      const got = await store.getOutput(p.id, "children").catch(async (e) => {
        throw new Error(`${e.message}\n${await dumpParent(box, p.id, ITEMS)}`);
      });
      assert.deepEqual(
        got,
        Array.from({ length: ITEMS }, (_, i) => 2 * i),
      );
      assert.equal(await store.getOutput(p.id, "sum"), ITEMS * (ITEMS - 1));
      // the parent's item links its one child
      for await (
        const e of store.kv.list<TaskRecord>({ prefix: keys.itemPrefix(p.id, "children") })
      ) {
        assert.equal(e.value.child, childRunId(p.id, "children", e.key[4] as number));
      }
    }
  });
  assert.ok(midStart >= 1, "no kill landed while children were being started");
  assert.deepEqual(await countEntries(box, LEFTOVERS), {
    waits: 0,
    inbox: 0,
    outbox: 0,
    due: 0,
    leases: 0,
  });
});

/** CPU time (user + system, ms) and resident memory (KiB) of a process, from /proc. */
async function usage(pid: number): Promise<{ cpuMs: number; rssKiB: number }> {
  const stat = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1].split(" ");
  // fields 14 and 15 (utime, stime), counted from the state field (3)
  const ticks = Number(stat[11]) + Number(stat[12]);
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
  return { cpuMs: ticks * 10, rssKiB };
}

Deno.test({
  name:
    "10,000 parked runs hold no lease and no slot: their worker's CPU stays idle and its memory flat; 100 events end exactly their 100 runs",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const RUNS = Number(Deno.env.get("KVFLOW_PARKED_RUNS") ?? 10_000);
    await using box = await Sandbox.create();
    const began = Date.now();
    const worker = box.spawn([], {
      entry: "tests/_support/waits_worker.ts",
      env: { PARK_RUNS: String(RUNS), KVFLOW_MAX_RUNS: "64" },
    });
    await worker.waitForOutput(STARTED, 120_000);
    const waiting = async () =>
      Number(
        (await box.withStore(({ kv }) => kv.get<Deno.KvU64>(keys.runCount("parked", "waiting"))))
          .value?.value ?? 0n,
      );
    await poll(
      `${RUNS} runs to park`,
      400_000,
      async () => (await waiting()) === RUNS || undefined,
    );
    const parkedIn = Date.now() - began;
    const left = await countEntries(box, { leases: keys.leasePrefix() });
    assert.equal(left.leases, 0, "a parked run holds a lease");
    const stats = async () => {
      const from = worker.stdout.length;
      worker.kill("SIGUSR1");
      const line = await poll(
        "stats",
        10_000,
        () => /stats (\{.*\})/.exec(worker.stdout.slice(from)),
      );
      return JSON.parse(line![1]) as { activeRuns: number };
    };
    // the last run to park leaves the worker's hands just after its commit
    await poll("no run in the worker's hands", 5000, async () => {
      return (await stats()).activeRuns === 0 || undefined;
    }).catch(() => assert.fail("a parked run holds a worker slot"));
    // the burst of parking settles; then five seconds of a worker with 10,000 parked runs
    await sleep(2000);
    const before = await usage(worker.pid);
    await sleep(5000);
    const after = await usage(worker.pid);
    const cpu = (after.cpuMs - before.cpuMs) / 5000;
    const growth = after.rssKiB - before.rssKiB;
    console.log(
      `${RUNS} runs parked in ${(parkedIn / 1000).toFixed(1)} s; idle for 5 s: CPU ${
        (cpu * 100).toFixed(1)
      } % of a core, RSS ${(before.rssKiB / 1024).toFixed(0)} MiB -> ${
        (after.rssKiB / 1024).toFixed(0)
      } MiB`,
    );
    assert.ok(cpu < 0.1, `the idle worker used ${(cpu * 100).toFixed(1)} % of a core`);
    assert.ok(growth < 16 * 1024, `its memory grew by ${growth} KiB while idle`);

    // 100 events, sent from this process: exactly their 100 runs go on and end
    const keysSent = Array.from({ length: 100 }, (_, i) => `p${i * Math.floor(RUNS / 100)}`);
    {
      await using engine = await openEngine({
        path: box.kvPath,
        pipelines: WAITS_PIPELINES,
        onAlert: () => {},
      });
      for (const key of keysSent) {
        const result = await engine.send("park.go", { key }, { id: `go-${key}` });
        assert.equal(result.woke.length, 1, key);
      }
      await poll("the 100 runs to end", 60_000, async () => {
        const n = Number(
          (await engine.kv.get<Deno.KvU64>(keys.runCount("parked", "succeeded"))).value?.value ??
            0n,
        );
        return n === 100 || undefined;
      });
    }
    const runs = (await allRuns(box)).filter((r) => r.status !== "waiting");
    assert.deepEqual(
      runs.map((r) => r.params.key).sort(),
      [...keysSent].sort(),
    );
    assert.ok(runs.every((r) => r.status === "succeeded"));
    assert.equal(await waiting(), RUNS - 100);
    assert.equal((await countEntries(box, { leases: keys.leasePrefix() })).leases, 0);
    assert.equal((await stats()).activeRuns, 0);
    worker.kill("SIGTERM");
    assert.equal((await worker.exit()).code, 0);
  },
});
