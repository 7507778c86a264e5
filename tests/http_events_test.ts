/**
 * Events over HTTP, on loopback against the real service and a KV file: sending (token,
 * idempotency, every refusal), listing and reading events with what they did, waiting
 * runs in the run JSON, SSE and `/metrics`, parent and child linked both ways, and a send
 * on a store without queues (Deno Deploy) that drives the runs it woke before answering.
 *
 * @module
 */
import assert from "node:assert/strict";
import { openEngine } from "../lib/mod.ts";
import { serve } from "../lib/http/service.ts";
import { MAX_EVENT_BYTES } from "../lib/model/events.ts";
import { type Service, startService } from "./_support/http.ts";
import { gatePipeline, gatePipelines } from "./_support/gates.ts";
import { tempKv, waitFor } from "./_support/helpers.ts";

const TOKEN = "events-test-token-5e0a";
const DATE = "2026-11-01";

async function service(): Promise<Service> {
  return await startService({ pipelines: gatePipelines(), token: TOKEN, metricsCountTtlMs: 0 });
}

/** Creates a gate run for DATE over the API and waits until it waits for its approval. */
async function waitingGate(s: Service, date = DATE): Promise<string> {
  const run = await s.post("/api/pipelines/gate/runs", { logicalDate: date }, 201, TOKEN);
  await s.waitForStatus(run.id, ["waiting"]);
  await waitFor("the approval wait", async () => {
    const r = await s.engine.store.getRun(run.id);
    return r?.waitingFor?.kind === "event";
  });
  return run.id;
}

async function eventCount(s: Service): Promise<number> {
  return (await s.get("/api/events?limit=500")).events.length;
}

Deno.test("POST /api/events: 201 with the event, the waits it woke and a Location; the run finishes", async () => {
  await using s = await service();
  const runId = await waitingGate(s);
  const r = await s.request("POST", "/api/events", {
    body: { name: "t.approved", data: { date: DATE, by: "ann" }, id: "approve-1" },
    token: TOKEN,
  });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.headers.get("location"), "/api/events/approve-1");
  // deno-lint-ignore no-explicit-any
  const body = r.body as any;
  assert.equal(body.duplicate, false);
  assert.equal(body.event.id, "approve-1");
  assert.equal(body.event.name, "t.approved");
  assert.equal(body.event.source, "http");
  assert.deepEqual(body.event.data, { date: DATE, by: "ann" });
  assert.deepEqual(body.woke, [{
    runId,
    step: "approval",
    item: -1,
    url: `/api/runs/${encodeURIComponent(runId)}`,
  }]);
  assert.deepEqual(body.started, []);
  assert.deepEqual(
    body.event.effects.map((e: { kind: string; runId: string }) => [e.kind, e.runId]),
    [
      ["woke", runId],
    ],
  );
  await s.waitForStatus(runId, ["succeeded"]);
  const run = await s.get(`/api/runs/${encodeURIComponent(runId)}`);
  assert.equal(run.waitingFor, null);
  const approval = run.steps.find((st: { name: string }) => st.name === "approval");
  assert.equal(approval.status, "succeeded");
  assert.equal(approval.wait, null);
});

Deno.test("POST /api/events needs the token like every mutation: 401 without, 403 with a wrong one", async () => {
  await using s = await service();
  const body = { name: "t.approved", data: { date: DATE } };
  const none = await s.request("POST", "/api/events", { body });
  assert.equal(none.status, 401);
  assert.equal(none.headers.get("www-authenticate"), 'Bearer realm="kvflow"');
  const wrong = await s.request("POST", "/api/events", { body, token: "nope" });
  assert.equal(wrong.status, 403);
  assert.equal(await eventCount(s), 0, "nothing stored");
});

Deno.test("POST /api/events with a repeated id answers as a repeated Idempotency-Key: 200, Idempotent-Replayed, nothing new", async () => {
  await using s = await service();
  const runId = await waitingGate(s);
  const body = { name: "t.approved", data: { date: DATE }, id: "same-id" };
  const first = await s.request("POST", "/api/events", { body, token: TOKEN });
  assert.equal(first.status, 201);
  assert.equal(first.headers.get("idempotent-replayed"), null);
  await s.waitForStatus(runId, ["succeeded"]);

  const again = await s.request("POST", "/api/events", { body, token: TOKEN });
  assert.equal(again.status, 200);
  assert.equal(again.headers.get("idempotent-replayed"), "true");
  assert.equal(again.headers.get("location"), "/api/events/same-id");
  // deno-lint-ignore no-explicit-any
  const replayed = again.body as any, created = first.body as any;
  assert.equal(replayed.duplicate, true);
  assert.equal(replayed.event.at, created.event.at, "the first event, not a new one");
  assert.deepEqual(replayed.woke, created.woke, "what the first send did");
  assert.equal(await eventCount(s), 1);

  // the same id with other data is refused, as a key reused with other params is
  const other = await s.request("POST", "/api/events", {
    body: { ...body, data: { date: "2026-11-02" } },
    token: TOKEN,
  });
  assert.equal(other.status, 422);
  // deno-lint-ignore no-explicit-any
  assert.equal((other.body as any).error.code, "idempotency_key_reused");
  // keys in another order are the same data
  const reordered = await s.request("POST", "/api/events", {
    body: { id: "same-id", data: { date: DATE }, name: "t.approved" },
    token: TOKEN,
  });
  assert.equal(reordered.status, 200);
  assert.equal(await eventCount(s), 1);
});

Deno.test("POST /api/events refuses bad input with 400 and issues, and stores nothing", async () => {
  await using s = await service();
  const cases: [string, unknown, string, (string | number)[] | null][] = [
    ["malformed JSON", '{"name": "t.x",', "malformed_json", null],
    ["not an object", ["t.x"], "invalid_body", []],
    ["no name", { data: {} }, "invalid_body", ["name"]],
    ["a bad name", { name: "bad name!", data: {} }, "invalid_body", ["name"]],
    ["a name too long", { name: "a".repeat(101) }, "invalid_body", ["name"]],
    ["a bad id", { name: "t.x", id: "no spaces" }, "invalid_body", ["id"]],
    ["an id that is not a string", { name: "t.x", id: 7 }, "invalid_body", ["id"]],
    ["an unknown field", { name: "t.x", payload: {} }, "invalid_body", []],
    ["data that is not JSON data", '{"name": "t.x", "data": {"n": 1e999}}', "invalid_event", [
      "data",
    ]],
  ];
  for (const [what, body, code, path] of cases) {
    const r = await s.request("POST", "/api/events", { body, token: TOKEN });
    assert.equal(r.status, 400, `${what}: ${r.text}`);
    // deno-lint-ignore no-explicit-any
    const error = (r.body as any).error;
    assert.equal(error.code, code, what);
    if (path) {
      assert.ok(error.issues?.length > 0, `${what}: issues`);
      assert.deepEqual(error.issues[0].path.slice(0, path.length), path, what);
    }
    assert.ok(!/\bat .*\.ts:\d+/.test(r.text), `${what}: no stack trace`);
  }
  const text = await s.request("POST", "/api/events", {
    body: "name=t.x",
    token: TOKEN,
    headers: { "content-type": "application/x-www-form-urlencoded" },
  });
  assert.equal(text.status, 415);
  assert.equal(await eventCount(s), 0);
});

Deno.test("POST /api/events: 413 over the request limit, and for data over 32 KiB (too_large)", async () => {
  await using s = await service();
  const huge = await s.request("POST", "/api/events", {
    body: { name: "t.big", data: "x".repeat(70_000) },
    token: TOKEN,
  });
  assert.equal(huge.status, 413);
  // deno-lint-ignore no-explicit-any
  assert.equal((huge.body as any).error.code, "payload_too_large");

  const big = await s.request("POST", "/api/events", {
    body: { name: "t.big", data: { blob: "x".repeat(MAX_EVENT_BYTES) } },
    token: TOKEN,
  });
  assert.equal(big.status, 413);
  // deno-lint-ignore no-explicit-any
  const error = (big.body as any).error;
  assert.equal(error.code, "too_large");
  assert.match(error.message, /at most 32768/);
  assert.deepEqual(error.issues[0].path, ["data"]);

  const fits = await s.request("POST", "/api/events", {
    body: { name: "t.big", data: "x".repeat(MAX_EVENT_BYTES - 2) },
    token: TOKEN,
  });
  assert.equal(fits.status, 201, "exactly 32 KiB as JSON is accepted");
  assert.equal(await eventCount(s), 1);
});

Deno.test("POST /api/events: 422 when a triggered pipeline refuses the payload; a good one starts a run linked to its event", async () => {
  await using s = await service();
  const refused = await s.request("POST", "/api/events", {
    body: { name: "t.refunded", data: { orderId: 42 }, id: "refund-bad" },
    token: TOKEN,
  });
  assert.equal(refused.status, 422);
  // deno-lint-ignore no-explicit-any
  const error = (refused.body as any).error;
  assert.equal(error.code, "invalid_params");
  assert.match(error.message, /pipeline 'refunds'/);
  assert.match(error.message, /order/);
  assert.equal(error.issues[0].path[0], "data");
  assert.equal(await eventCount(s), 0, "nothing stored");
  assert.equal(await s.engine.getEvent("refund-bad"), null);

  const ok = await s.post(
    "/api/events",
    { name: "t.refunded", data: { orderId: "A-17" }, id: "refund-1" },
    201,
    TOKEN,
  );
  assert.equal(ok.started.length, 1);
  const started = ok.started[0];
  assert.equal(started.id, "refunds:on:refund-1");
  assert.equal(started.trigger, "event");
  assert.equal(started.event, "refund-1");
  assert.equal(started.eventUrl, "/api/events/refund-1");
  assert.deepEqual(started.params, { order: "A-17" });
  assert.deepEqual(ok.event.started, ["refunds:on:refund-1"]);
  await s.waitForStatus(started.id, ["succeeded"]);
  const detail = await s.get(`/api/runs/${started.id}`);
  assert.equal(detail.event, "refund-1");
  const event = await s.get("/api/events/refund-1");
  assert.deepEqual(
    event.effects.map((e: { kind: string; runId: string; step: unknown }) => [
      e.kind,
      e.runId,
      e.step,
    ]),
    [["started", "refunds:on:refund-1", null]],
  );
});

Deno.test("GET /api/events: newest first, by name, a page at a time, each with what it did", async () => {
  await using s = await service();
  const runId = await waitingGate(s);
  // a rejection without its reason fails the wait's schema: recorded as not matching
  await s.post("/api/events", { name: "t.rejected", data: { date: DATE }, id: "e1" }, 201, TOKEN);
  await s.post("/api/events", { name: "t.other", data: { n: 1 }, id: "e2" }, 201, TOKEN);
  await s.post("/api/events", { name: "t.approved", data: { date: DATE }, id: "e3" }, 201, TOKEN);
  await s.waitForStatus(runId, ["succeeded"]);

  const all = await s.get("/api/events");
  assert.deepEqual(all.events.map((e: { id: string }) => e.id), ["e3", "e2", "e1"]);
  assert.equal(all.cursor, undefined);
  const [e3, e2, e1] = all.events;
  assert.deepEqual(e3.effects.map((e: { kind: string }) => e.kind), ["woke"]);
  assert.deepEqual(e2.effects, []);
  assert.equal(e1.effects[0].kind, "mismatch");
  assert.equal(e1.effects[0].runId, runId);
  assert.equal(e1.effects[0].step, "approval");
  assert.match(e1.effects[0].message, /reason/);

  const page1 = await s.get("/api/events?limit=2");
  assert.deepEqual(page1.events.map((e: { id: string }) => e.id), ["e3", "e2"]);
  assert.ok(page1.cursor);
  const page2 = await s.get(`/api/events?limit=2&cursor=${encodeURIComponent(page1.cursor)}`);
  assert.deepEqual(page2.events.map((e: { id: string }) => e.id), ["e1"]);
  assert.equal(page2.cursor, undefined);

  const named = await s.get("/api/events?name=t.rejected");
  assert.deepEqual(named.events.map((e: { id: string }) => e.id), ["e1"]);

  for (const query of ["limit=0", "limit=501", "limit=x", "name=bad%20name", "cursor=abc"]) {
    const r = await s.request("GET", `/api/events?${query}`);
    assert.equal(r.status, 400, query);
    // deno-lint-ignore no-explicit-any
    assert.equal((r.body as any).error.code, "invalid_query", query);
  }
});

Deno.test("GET /api/events/:id: the event with its effects; 404 for an unknown or malformed id", async () => {
  await using s = await service();
  await s.post("/api/events", { name: "t.ping", data: { a: 1 }, id: "ping-1" }, 201, TOKEN);
  const event = await s.get("/api/events/ping-1");
  assert.equal(event.name, "t.ping");
  assert.deepEqual(event.data, { a: 1 });
  assert.equal(event.url, "/api/events/ping-1");
  for (const path of ["/api/events/nope", "/api/events/bad%20id"]) {
    const r = await s.request("GET", path);
    assert.equal(r.status, 404, path);
    // deno-lint-ignore no-explicit-any
    assert.equal((r.body as any).error.code, "not_found");
  }
});

Deno.test("reads of events need the read token when one is set", async () => {
  await using s = await startService({
    pipelines: gatePipelines(),
    token: TOKEN,
    readToken: "reader",
  });
  assert.equal((await s.request("GET", "/api/events")).status, 401);
  assert.equal((await s.request("GET", "/api/events", { token: "reader" })).status, 200);
  assert.equal((await s.request("GET", "/api/events/x", { token: "reader" })).status, 404);
  const send = await s.request("POST", "/api/events", {
    body: { name: "t.x" },
    token: "reader",
  });
  assert.equal(send.status, 403, "the read token sends nothing");
});

Deno.test("a waiting run's JSON says what it waits for, in the run, its step, the list and SSE", async () => {
  await using s = await service();
  const runId = await waitingGate(s);
  const run = await s.get(`/api/runs/${runId}`);
  assert.equal(run.status, "waiting");
  const w = run.waitingFor;
  assert.equal(w.kind, "event");
  assert.equal(w.step, "approval");
  assert.equal(w.item, -1);
  assert.deepEqual(w.events, ["t.approved", "t.rejected"]);
  assert.equal(w.field, "date");
  assert.equal(w.value, DATE);
  assert.ok(w.since <= Date.now() && w.until > Date.now() + 23 * 3600_000);
  assert.equal(run.dueAt, w.until);
  assert.equal(run.parent, null);
  assert.equal(run.event, null);
  const approval = run.steps.find((st: { name: string }) => st.name === "approval");
  assert.equal(approval.status, "waiting");
  assert.deepEqual(approval.wait, w);
  assert.equal(approval.child, null);

  const list = await s.get("/api/runs?status=waiting");
  assert.deepEqual(list.runs[0].waitingFor, w);

  const controller = new AbortController();
  const response = await fetch(`${s.url}/api/runs/${runId}/events`, { signal: controller.signal });
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("event: run\n")) text += (await reader.read()).value ?? "";
  while (!/event: run\ndata: .*\n\n/.test(text)) text += (await reader.read()).value ?? "";
  const data = JSON.parse(/event: run\ndata: (.*)\n/.exec(text)![1]);
  assert.deepEqual(data.waitingFor, w);
  await reader.cancel();
  controller.abort();
});

Deno.test("a parent and its child run link both ways; the parent waits for the child", async () => {
  await using s = await service();
  const parent = await s.post("/api/pipelines/parent/runs", {}, 201, TOKEN);
  await waitFor("the parent waits for its child", async () => {
    const r = await s.engine.store.getRun(parent.id);
    return r?.status === "waiting" && r.waitingFor?.kind === "child";
  });
  const childId = `${parent.id}:call`;
  await waitFor("the child sleeps", async () => {
    const r = await s.engine.store.getRun(childId);
    return r?.status === "waiting" && r.waitingFor?.kind === "sleep";
  });
  const p = await s.get(`/api/runs/${parent.id}`);
  assert.equal(p.waitingFor.kind, "child");
  assert.equal(p.waitingFor.child, childId);
  assert.equal(p.waitingFor.childUrl, `/api/runs/${encodeURIComponent(childId)}`);
  assert.deepEqual(p.children, [{
    runId: parent.id,
    step: "call",
    item: -1,
    url: `/api/runs/${encodeURIComponent(parent.id)}`,
    child: childId,
    childUrl: `/api/runs/${encodeURIComponent(childId)}`,
  }]);
  assert.equal(p.steps[0].child, childId);

  const c = await s.get(`/api/runs/${encodeURIComponent(childId)}`);
  assert.equal(c.trigger, "child");
  assert.deepEqual(c.parent, {
    runId: parent.id,
    step: "call",
    item: -1,
    url: `/api/runs/${encodeURIComponent(parent.id)}`,
  });
  assert.equal(c.waitingFor.kind, "sleep");
  assert.ok(c.waitingFor.until - c.waitingFor.since >= 3600_000 - 1000);

  const metrics = await (await fetch(`${s.url}/metrics`)).text();
  assert.match(metrics, /^kvflow_runs_waiting\{pipeline="parent",kind="child"\} 1$/m);
  assert.match(metrics, /^kvflow_runs_waiting\{pipeline="napper",kind="sleep"\} 1$/m);
  assert.match(metrics, /^kvflow_runs_waiting\{pipeline="gate",kind="event"\} 0$/m);
});

Deno.test("/metrics: waiting runs by kind, and events sent, waits woken and runs started", async () => {
  await using s = await service();
  const runId = await waitingGate(s);
  let metrics = await (await fetch(`${s.url}/metrics`)).text();
  assert.match(metrics, /^# TYPE kvflow_runs_waiting gauge$/m);
  assert.match(metrics, /^kvflow_runs_waiting\{pipeline="gate",kind="event"\} 1$/m);
  assert.match(metrics, /^kvflow_event_wakes_total 0$/m);

  await s.post("/api/events", { name: "t.approved", data: { date: DATE }, id: "m1" }, 201, TOKEN);
  await s.post("/api/events", { name: "t.approved", data: { date: DATE }, id: "m1" }, 200, TOKEN);
  await s.post("/api/events", { name: "t.refunded", data: { orderId: "B" } }, 201, TOKEN);
  await s.waitForStatus(runId, ["succeeded"]);
  metrics = await (await fetch(`${s.url}/metrics`)).text();
  assert.match(
    metrics,
    /^kvflow_events_sent_total\{name="t.approved"\} 1$/m,
    "a repeat is not counted",
  );
  assert.match(metrics, /^kvflow_events_sent_total\{name="t.refunded"\} 1$/m);
  assert.match(metrics, /^kvflow_event_wakes_total 1$/m);
  assert.match(metrics, /^kvflow_event_runs_started_total 1$/m);
  assert.match(metrics, /^kvflow_runs_waiting\{pipeline="gate",kind="event"\} 0$/m);
  assert.match(
    metrics,
    /^kvflow_http_requests_total\{method="POST",route="\/api\/events",status="201"\} 2$/m,
  );
});

Deno.test("the OpenAPI document lists the event routes, their bodies and answers", async () => {
  await using s = await service();
  const doc = (await s.contract()).document;
  assert.equal(doc.paths["/api/events"].post.operationId, "sendEvent");
  assert.equal(doc.paths["/api/events"].get.operationId, "listEvents");
  assert.equal(doc.paths["/api/events/{id}"].get.operationId, "getEvent");
  const codes = Object.keys(doc.paths["/api/events"].post.responses).sort();
  assert.deepEqual(codes, ["200", "201", "400", "401", "403", "409", "413", "415", "422", "500"]);
  for (const name of ["SendRequest", "SendResult", "Event", "EventPage", "Wait", "RunLink"]) {
    assert.ok(doc.components.schemas[name], name);
  }
});

Deno.test("without queues (Deno Deploy), a send drives the runs it woke and started before it answers", async () => {
  await using temp = await tempKv();
  const engine = await openEngine({
    path: temp.path,
    pipelines: gatePipelines(),
    queues: false,
    onAlert: () => {},
  });
  const { promise, resolve } = Promise.withResolvers<number>();
  const server = serve(engine, {
    port: 0,
    token: TOKEN,
    expectWorker: false,
    log: () => {},
    onListen: resolve,
  });
  try {
    const url = `http://127.0.0.1:${await promise}`;
    const gate = await engine.store.createRun(gatePipeline(), { logicalDate: DATE });
    // no worker loop: the request that created the run drives it, as a heartbeat would
    await engine.heartbeat(5_000);
    assert.equal((await engine.store.requireRun(gate.id)).status, "waiting");
    const post = (body: unknown) =>
      fetch(`${url}/api/events`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const approved = await post({ name: "t.approved", data: { date: DATE } });
    assert.equal(approved.status, 201);
    await approved.body?.cancel();
    assert.equal((await engine.store.requireRun(gate.id)).status, "succeeded", "before the answer");

    const refund = await post({ name: "t.refunded", data: { orderId: "C-3" }, id: "r-deploy" });
    assert.equal(refund.status, 201);
    const body = await refund.json();
    assert.equal(body.started[0].status, "succeeded", "the answer shows the run it finished");
  } finally {
    await server.shutdown();
    await engine.close(1000);
  }
});
