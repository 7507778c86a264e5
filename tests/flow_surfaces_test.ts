/**
 * What the API, the CLI and `/metrics` show of flow control: a run's priority, why a
 * queued run is held and the keys it counts against; each pipeline's limits, throttles,
 * debounce, priority and retention. Held runs are made through the store, as the claim
 * holds them (one checked commit through the index moves), not by waiting for a claim.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type Service, startService } from "./_support/http.ts";
import { Sandbox } from "./_support/harness.ts";
import { metered, plain } from "./fixtures/flow_surfaces.ts";
import * as keys from "../lib/kv/keys.ts";
import type { HeldState, SlotHolder } from "../lib/model/records.ts";
import type { Kv } from "../lib/kv/kv.ts";
import type { Store } from "../lib/store/store.ts";
import { hold } from "./_support/helpers.ts";

const ENTRY = "tests/fixtures/flow_surfaces.ts";

/** Takes a limit slot for a run, as the claim does. */
async function takeSlot(kv: Kv, scope: string, key: string, index: number, run: string) {
  const holder: SlotHolder = { run, step: null, item: -1, attempt: 0, at: Date.now() };
  await kv.set(keys.slot(scope, key, index), holder);
}

const limitHeld = (at: number): HeldState => ({
  by: "limit",
  key: "acme",
  since: at,
  until: null,
  reason: "2 of 2 slots of key 'acme' taken",
});

const throttleHeld = (at: number): HeldState => ({
  by: "throttle",
  key: "*",
  since: at,
  until: Date.parse("2031-01-02T12:00:03Z"),
  reason: "5 starts in the last 1m",
});

async function heldRuns(store: Store, kv: Kv) {
  const now = Date.now();
  const limited = await store.createRun(metered, { params: { customer: "acme" } });
  const throttled = await store.createRun(metered, { params: { customer: "globex" } });
  const free = await store.createRun(plain, { priority: 0 });
  await hold(kv, limited.id, limitHeld(now));
  await hold(kv, throttled.id, throttleHeld(now));
  return { limited, throttled, free };
}

async function service(): Promise<Service> {
  return await startService({ worker: false, pipelines: [metered, plain] });
}

Deno.test("the API shows a run's priority, why it is held and its flow keys, as documented", async () => {
  await using s = await service();
  const { limited, throttled, free } = await heldRuns(s.engine.store, s.engine.kv);

  // every answer is checked against the OpenAPI document by the client
  const run = await s.get(`/api/runs/${limited.id}`);
  assert.equal(run.status, "queued");
  assert.equal(run.priority, 3, "the pipeline's priority");
  assert.deepEqual(run.held, limitHeld(run.held.since));
  assert.deepEqual(run.flow, {
    limit: { scope: "metered", key: "acme", max: 2 },
    throttle: { scope: "metered", key: "*", max: 5, perMs: 60_000 },
    debounce: { key: "*" },
  });

  const other = await s.get(`/api/runs/${throttled.id}`);
  assert.equal(other.held.by, "throttle");
  assert.equal(other.held.until, Date.parse("2031-01-02T12:00:03Z"));
  assert.equal(other.flow.limit.key, "globex");

  const plainRun = await s.get(`/api/runs/${free.id}`);
  assert.equal(plainRun.priority, 0, "absent priority reads 0");
  assert.equal(plainRun.held, null);
  assert.equal(plainRun.flow, null);

  const page = await s.get(`/api/runs?status=queued`);
  const listed = new Map(page.runs.map((r: { id: string }) => [r.id, r]));
  // deno-lint-ignore no-explicit-any
  assert.equal((listed.get(limited.id) as any).held.by, "limit");
  // deno-lint-ignore no-explicit-any
  assert.equal((listed.get(free.id) as any).held, null);
});

Deno.test("the API shows each pipeline's flow control and retention, as documented", async () => {
  await using s = await service();
  const list = await s.get("/api/pipelines");
  const byName = new Map(list.map((p: { name: string }) => [p.name, p]));
  // deno-lint-ignore no-explicit-any
  const m = byName.get("metered") as any;
  assert.deepEqual(m.flow, {
    limit: { scope: "metered", max: 2, keyed: true },
    throttle: { scope: "metered", max: 5, per: "1m", perMs: 60_000, keyed: false },
    debounce: { quiet: "30s", quietMs: 30_000, maxWait: "5m", maxWaitMs: 300_000, keyed: false },
    priority: 3,
    steps: [{
      step: "send",
      limit: { scope: "metered/send", max: 4, keyed: true },
      throttle: { scope: "mail-api", max: 10, per: "1s", perMs: 1000, keyed: false },
    }],
  });
  assert.deepEqual(m.retention, { succeeded: "7d", failed: "60d", cancelled: "30d" });
  // deno-lint-ignore no-explicit-any
  const p = byName.get("plain") as any;
  assert.deepEqual(p.flow, { limit: null, throttle: null, debounce: null, priority: 0, steps: [] });

  const detail = await s.get("/api/pipelines/metered");
  assert.deepEqual(detail.flow, m.flow);
  assert.deepEqual(detail.retention, m.retention);
});

Deno.test("/metrics counts held runs by pipeline and cause, held limit slots by scope, and shows each pipeline's retention", async () => {
  await using s = await service();
  await heldRuns(s.engine.store, s.engine.kv);
  await takeSlot(s.engine.kv, "metered", "acme", 0, "20260101-000000-aaaaaa");
  await takeSlot(s.engine.kv, "metered", "acme", 1, "20260101-000000-bbbbbb");
  await takeSlot(s.engine.kv, "mail-api", "*", 0, "20260101-000000-cccccc");

  const r = await s.request("GET", "/metrics");
  assert.equal(r.status, 200);
  const text = r.text;
  assert.match(text, /^# HELP kvflow_runs_held .+$/m);
  assert.match(text, /^# TYPE kvflow_runs_held gauge$/m);
  assert.match(text, /^# HELP kvflow_limit_slots_held .+$/m);
  assert.match(text, /^# TYPE kvflow_limit_slots_held gauge$/m);
  const value = (series: string) => {
    const line = text.split("\n").find((l) => l.startsWith(`${series} `));
    assert.ok(line, `no series ${series}`);
    return Number(line.slice(series.length + 1));
  };
  assert.equal(value('kvflow_runs_held{pipeline="metered",by="limit"}'), 1);
  assert.equal(value('kvflow_runs_held{pipeline="metered",by="throttle"}'), 1);
  assert.equal(value('kvflow_runs_held{pipeline="metered",by="debounce"}'), 0);
  assert.equal(value('kvflow_runs_held{pipeline="plain",by="limit"}'), 0);
  assert.equal(value('kvflow_limit_slots_held{scope="metered"}'), 2);
  assert.equal(value('kvflow_limit_slots_held{scope="mail-api"}'), 1);
  // each pipeline's retention, by how its runs ended: its own, or the defaults
  assert.match(text, /^# TYPE kvflow_pipeline_retention_seconds gauge$/m);
  const days = (pipeline: string, status: string) =>
    value(`kvflow_pipeline_retention_seconds{pipeline="${pipeline}",status="${status}"}`) / 86_400;
  assert.deepEqual(
    ["succeeded", "failed", "cancelled"].map((status) => days("metered", status)),
    [7, 60, 30],
  );
  assert.deepEqual(
    ["succeeded", "failed", "cancelled"].map((status) => days("plain", status)),
    [30, 90, 30],
  );
});

Deno.test("CLI status and runs say why a queued run is held and its priority", async () => {
  await using box = await Sandbox.create();
  const { limited, throttled, free } = await box.withStore((store) => heldRuns(store, store.kv));

  const status = await box.cli(["status", limited.id], { entry: ENTRY });
  assert.equal(status.code, 0, status.stderr);
  assert.match(
    status.stdout,
    /^ {2}status +queued \(held: limit — 2 of 2 slots of key 'acme' taken\)$/m,
  );
  assert.match(status.stdout, /^ {2}priority +3$/m);

  const other = await box.cli(["status", throttled.id], { entry: ENTRY });
  assert.equal(other.code, 0, other.stderr);
  // more than a day away: the full time
  assert.match(other.stdout, /queued \(held: throttle until 2031-01-02T12:00:03\.000Z\)/);

  const plainStatus = await box.cli(["status", free.id], { entry: ENTRY });
  assert.doesNotMatch(plainStatus.stdout, /held|priority/);

  const runs = await box.cli(["runs"], { entry: ENTRY });
  assert.equal(runs.code, 0, runs.stderr);
  const line = (id: string) => runs.stdout.split("\n").find((l) => l.startsWith(id)) ?? "";
  assert.match(line(limited.id), /queued .*\(held: limit — 2 of 2 slots of key 'acme' taken\)/);
  assert.match(line(limited.id), /priority 3$/);
  assert.match(line(throttled.id), /\(held: throttle until 2031-01-02T12:00:03\.000Z\)/);
  assert.doesNotMatch(line(free.id), /held|priority/);

  const json = await box.status(limited.id, { entry: ENTRY });
  // deno-lint-ignore no-explicit-any
  assert.equal((json as any).held.by, "limit");
});

Deno.test("a hold that ends within a day reads as a time of day", async () => {
  const { heldText } = await import("../lib/define/flow_view.ts");
  const now = Date.parse("2026-03-01T11:59:00Z");
  const held = { ...throttleHeld(now), until: Date.parse("2026-03-01T12:00:03Z") };
  assert.equal(heldText(held, now), "held: throttle until 12:00:03");
  assert.equal(heldText(limitHeld(now), now), "held: limit — 2 of 2 slots of key 'acme' taken");
});

Deno.test("CLI pipelines shows flow control and retention, as text and as JSON", async () => {
  await using box = await Sandbox.create();
  const text = await box.cli(["pipelines"], { entry: ENTRY });
  assert.equal(text.code, 0, text.stderr);
  const block = text.stdout.split(/\n(?=\S)/).find((b) => b.startsWith("metered"))!;
  assert.match(block, /retention succeeded 7d, failed 60d, cancelled 30d/);
  assert.match(block, /flow +limit 2 at once per key \(scope metered\)/);
  assert.match(block, /flow +throttle 5 per 1m \(scope metered\)/);
  assert.match(block, /flow +debounce quiet 30s, at most 5m/);
  assert.match(block, /flow +priority 3/);
  assert.match(block, /flow +step send: limit 4 at once per key \(scope metered\/send\)/);
  assert.match(block, /flow +step send: throttle 10 per 1s \(scope mail-api\)/);
  const plainBlock = text.stdout.split(/\n(?=\S)/).find((b) => b.startsWith("plain"))!;
  assert.doesNotMatch(plainBlock, /flow/);

  const json = await box.cli(["pipelines", "--json"], { entry: ENTRY });
  assert.equal(json.code, 0, json.stderr);
  const list = JSON.parse(json.stdout);
  const m = list.find((p: { name: string }) => p.name === "metered");
  assert.deepEqual(m.flow.limit, { scope: "metered", max: 2, keyed: true });
  assert.equal(m.flow.priority, 3);
  assert.deepEqual(m.retention, { succeeded: "7d", failed: "60d", cancelled: "30d" });
});
