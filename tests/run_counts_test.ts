/**
 * The counts of runs by pipeline and status behind `kvflow_runs`, and the schema
 * migration that builds them (and the index by pipeline and status) for runs stored by an
 * older kvflow. Real KV files, a real service on loopback, real subprocesses for a crash.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import { openEngine, type RunRecord, type RunStatus } from "../lib/mod.ts";
import { RUN_STATUSES } from "../lib/model/records.ts";
import { Store } from "../lib/store/store.ts";
import { migrate, SCHEMA_VERSION } from "../lib/kv/migrations.ts";
import { demoPipeline, type Service, startService, world } from "./_support/http.ts";
import { tempKv, waitFor } from "./_support/helpers.ts";

/** `kvflow_runs` of a scrape, as `pipeline/status` → count, zeros left out. */
async function scrapeRuns(url: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out = new Map<string, number>();
  for (
    const [, pipeline, status, n] of text.matchAll(
      /^kvflow_runs\{pipeline="([^"]*)",status="([^"]*)"\} (\d+)$/gm,
    )
  ) {
    if (Number(n) > 0) out.set(`${pipeline}/${status}`, Number(n));
  }
  return out;
}

/** Every run record in KV, read whole, as `pipeline/status` → count. */
async function trueCounts(kv: Deno.Kv): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const e of kv.list<RunRecord>({ prefix: keys.run("").slice(0, 2) })) {
    const k = `${e.value.pipeline}/${e.value.status}`;
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

/** The index by pipeline and status, as `pipeline/status` → count; every entry marked counted. */
async function indexCounts(kv: Deno.Kv): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const e of kv.list({ prefix: ["kvflow", "runs_by_pipeline_status"] })) {
    assert.equal(e.value, 1, `${e.key.join("/")} is counted`);
    const k = e.key.slice(2, 4).join("/");
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

/** The counts by pipeline and status, as `pipeline/status` → count, zeros left out. */
async function storedCounts(kv: Deno.Kv): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const e of kv.list<Deno.KvU64>({ prefix: keys.runCountPrefix() })) {
    if (e.value.value > 0n) out.set(e.key.slice(2).join("/"), Number(e.value.value));
  }
  return out;
}

function sorted(map: Map<string, number>): [string, number][] {
  return [...map].sort(([a], [b]) => (a < b ? -1 : 1));
}

async function act(s: Service, path: string, body: unknown): Promise<void> {
  const r = await s.request("POST", path, { body });
  assert.ok(r.status < 300, `POST ${path}: ${r.status} ${r.text}`);
}

Deno.test("kvflow_runs equals the stored runs after runs succeed, fail, are cancelled, resumed and rerun", async () => {
  world.fixed = false;
  await using s = await startService({ metricsCountTtlMs: 0 });
  const created = async (pipeline: string) =>
    (await s.post(`/api/pipelines/${pipeline}/runs`, {}, 201)).id as string;

  const demos = await Promise.all([1, 2, 3].map(() => created("demo")));
  const reports = await Promise.all([1, 2, 3].map(() => created("report")));
  const holds = await Promise.all([1, 2].map(() => created("hold")));
  for (const id of demos) await s.waitForStatus(id, ["succeeded"]);
  for (const id of reports) await s.waitForStatus(id, ["failed"]);
  for (const id of holds) await s.waitForStatus(id, ["running"]);
  assert.deepEqual(sorted(await scrapeRuns(s.url)), sorted(await trueCounts(s.engine.kv)));

  await act(s, `/api/runs/${holds[0]}/cancel`, {});
  await act(s, `/api/runs/${demos[0]}/rerun`, { from: "left" });
  await act(s, `/api/runs/${reports[0]}/resume`, {});
  await s.waitForStatus(demos[0], ["succeeded"]);
  await s.waitForStatus(reports[0], ["failed"]);
  world.fixed = true;
  await act(s, `/api/runs/${reports[1]}/resume`, {});
  await s.waitForStatus(reports[1], ["succeeded"]);
  // a cancelled run resumed: held again, then cancelled again
  await act(s, `/api/runs/${holds[0]}/resume`, {});
  await s.waitForStatus(holds[0], ["running"]);
  await act(s, `/api/runs/${holds[0]}/cancel`, {});
  // a queued run no worker has claimed yet; the held run goes back to the queue too
  await s.engine.worker.stop(1000);
  await s.engine.store.createRun(s.engine.pipeline("slow"));

  const runs = await scrapeRuns(s.url);
  assert.deepEqual(sorted(runs), sorted(await trueCounts(s.engine.kv)));
  assert.deepEqual(sorted(runs), sorted(await indexCounts(s.engine.kv)));
  assert.deepEqual(sorted(runs), [
    ["demo/succeeded", 3],
    ["hold/cancelled", 1],
    ["hold/queued", 1], // the stopped worker handed it back
    ["report/failed", 2],
    ["report/succeeded", 1],
    ["slow/queued", 1],
  ]);
  world.fixed = false;
});

Deno.test("run counts stay exact when two processes' workers race for the same runs", async () => {
  await using temp = await tempKv();
  const demo = demoPipeline();
  const a = await openEngine({ path: temp.path, pipelines: [demo], pollMs: 20, leaseMs: 2000 });
  const b = await openEngine({ path: temp.path, pipelines: [demo], pollMs: 20, leaseMs: 2000 });
  try {
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) ids.push((await a.store.createRun(demo)).id);
    a.worker.start();
    b.worker.start();
    await Promise.all(ids.slice(0, 10).map((id) => b.store.cancel(id).catch(() => {})));
    await waitFor("every run to end", async () => {
      const counts = await trueCounts(a.kv);
      return (counts.get("demo/succeeded") ?? 0) + (counts.get("demo/cancelled") ?? 0) === 40;
    }, 20_000);
    const counts = await storedCounts(a.kv);
    assert.deepEqual(sorted(counts), sorted(await trueCounts(a.kv)));
    assert.deepEqual(sorted(counts), sorted(await indexCounts(a.kv)));
  } finally {
    await a.close(1000);
    await b.close(1000);
  }
});

/** Stores runs as kvflow did before the index by pipeline and status, or before the counts. */
async function writeOldRuns(
  kv: Deno.Kv,
  count: number,
  shape: "no index" | "index without counts",
): Promise<void> {
  const store = new Store(kv, { queues: false });
  const demo = demoPipeline();
  for (let i = 0; i < count; i += 50) {
    const op = kv.atomic();
    for (let j = i; j < Math.min(i + 50, count); j++) {
      const status: RunStatus = RUN_STATUSES[j % RUN_STATUSES.length];
      // ids of their own: random ones of runs made in the same second may collide
      const id = `${shape === "no index" ? "old" : "older"}-${j}`;
      const run = { ...store.newRun(demo, { id }), pipeline: j % 3 ? "demo" : "other", status };
      const at = run.createdAt;
      op.set(keys.run(run.id), run)
        .set(keys.runsByTime(at, run.id), run.pipeline)
        .set(keys.runsByPipeline(run.pipeline, at, run.id), run.status)
        .set(keys.runsByStatus(run.status, at, run.id), run.pipeline);
      if (shape === "index without counts") {
        op.set(keys.runsByPipelineStatus(run.pipeline, run.status, at, run.id), null);
      }
    }
    assert.ok((await op.commit()).ok);
  }
}

Deno.test("opening a database of old-shape runs migrates it once: filtered listing and metrics are right", async () => {
  await using temp = await tempKv();
  const seed = await Deno.openKv(temp.path);
  await writeOldRuns(seed, 300, "no index");
  await writeOldRuns(seed, 120, "index without counts");
  const expected = await trueCounts(seed);
  seed.close();

  await using s = await startService({ kvPath: temp.path, worker: false, metricsCountTtlMs: 0 });
  const kv = s.engine.kv;
  assert.equal((await kv.get(keys.schema())).value, SCHEMA_VERSION);
  assert.deepEqual(sorted(await scrapeRuns(s.url)), sorted(expected));
  assert.deepEqual(sorted(await indexCounts(kv)), sorted(expected));
  for (const pipeline of ["demo", "other"]) {
    for (const status of RUN_STATUSES) {
      const page = await s.get(`/api/runs?pipeline=${pipeline}&status=${status}&limit=1000`);
      assert.equal(page.runs.length, expected.get(`${pipeline}/${status}`) ?? 0);
      for (const run of page.runs) assert.deepEqual([run.pipeline, run.status], [pipeline, status]);
    }
  }
  // once migrated, opening again reads the version and counts nothing
  assert.deepEqual(await migrate(s.engine.store), { from: 2, to: 2, counted: 0 });
});

Deno.test("the migration counts each run once when two processes run it at once and runs move meanwhile", async () => {
  await using temp = await tempKv();
  const seed = await Deno.openKv(temp.path);
  await writeOldRuns(seed, 3000, "no index");
  await writeOldRuns(seed, 1000, "index without counts");
  seed.close();
  const kvs = await Promise.all([1, 2, 3].map(() => Deno.openKv(temp.path)));
  try {
    const stores = kvs.map((kv) => new Store(kv, { queues: false }));
    const first = migrate(stores[0]);
    const second = migrate(stores[1]);
    // A process that finished migrating moves runs while the others may still be counting.
    const done = await Promise.race([first, second]);
    assert.equal(done.to, SCHEMA_VERSION);
    let cancelled = 0;
    for await (
      const e of kvs[2].list({ prefix: keys.runsByStatusPrefix("queued") }, { limit: 30 })
    ) {
      await stores[2].cancel(e.key[4] as string);
      cancelled++;
    }
    assert.equal(cancelled, 30);
    const results = await Promise.all([first, second]);
    assert.equal(results[0].counted + results[1].counted <= 4000, true);
    const expected = await trueCounts(kvs[2]);
    assert.deepEqual(sorted(await indexCounts(kvs[2])), sorted(expected));
    const counts = await storedCounts(kvs[2]);
    assert.deepEqual(sorted(counts), sorted(expected));
  } finally {
    for (const kv of kvs) kv.close();
  }
});

Deno.test("a migration killed midway is finished by the next open, counting each run once", async () => {
  await using temp = await tempKv();
  const seed = await Deno.openKv(temp.path);
  await writeOldRuns(seed, 20_000, "no index");
  const expected = await trueCounts(seed);
  seed.close();
  const schema = new URL("../lib/kv/migrations.ts", import.meta.url).href;
  const store = new URL("../lib/store/store.ts", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--unstable-kv",
      `import { migrate } from "${schema}"; import { Store } from "${store}";
       await migrate(new Store(await Deno.openKv(${
        JSON.stringify(temp.path)
      }), { queues: false }));`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const kv = await Deno.openKv(temp.path);
  try {
    await waitFor("the child to count some runs", async () => {
      for await (const _ of kv.list({ prefix: keys.runCountPrefix() }, { limit: 1 })) return true;
      return false;
    }, 20_000);
    child.kill("SIGKILL");
    await child.status;
    assert.equal((await kv.get(keys.schema())).value, null, "killed before it finished");
    const result = await migrate(new Store(kv, { queues: false }));
    assert.ok(result.counted > 0 && result.counted < 20_000, `counted ${result.counted}`);
    assert.equal((await kv.get(keys.schema())).value, SCHEMA_VERSION);
    const counts = await storedCounts(kv);
    assert.deepEqual(sorted(counts), sorted(expected));
    assert.deepEqual(sorted(await indexCounts(kv)), sorted(expected));
  } finally {
    kv.close();
  }
});

Deno.test("a database written by a newer kvflow is refused", async () => {
  await using temp = await tempKv();
  const kv = await Deno.openKv(temp.path);
  await kv.set(keys.schema(), SCHEMA_VERSION + 1);
  kv.close();
  await assert.rejects(
    openEngine({ path: temp.path, pipelines: [] }),
    /schema version 3: this kvflow knows versions up to 2/,
  );
});
