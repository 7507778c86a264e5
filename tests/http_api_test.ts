import assert from "node:assert/strict";
import { world } from "./_support/http.ts";
import { type Service, startService } from "./_support/http.ts";
import { delay } from "./_support/helpers.ts";

const TOKEN = "s3cret-write-token-for-tests";
const READ_TOKEN = "r3ad-only-token-for-tests";

async function trigger(s: Service, pipeline: string, params: unknown = {}, token?: string) {
  return await s.post(`/api/pipelines/${pipeline}/runs`, { params }, 201, token);
}

Deno.test("GET /healthz answers 200 with KV and worker state", async () => {
  await using s = await startService();
  const health = await s.get("/healthz");
  assert.equal(health.ok, true);
  assert.equal(health.kv.ok, true);
  assert.equal(health.worker.serving, true);
  assert.equal(typeof health.kv.latencyMs, "number");
});

Deno.test("GET /healthz is 503 when the worker is not serving", async () => {
  await using s = await startService({ worker: false, workerStaleMs: 0 });
  const health = await s.get("/healthz", 503);
  assert.equal(health.ok, false);
  assert.equal(health.kv.ok, true);
  assert.equal(health.worker.serving, false);
});

Deno.test("GET /healthz needs no worker loop where the service expects none (Deploy)", async () => {
  await using s = await startService({ worker: false, expectWorker: false });
  const health = await s.get("/healthz");
  assert.equal(health.ok, true);
  assert.equal(health.worker.serving, false);
});

Deno.test("GET /api/pipelines lists steps, needs and the params JSON schema", async () => {
  await using s = await startService();
  const list = await s.get("/api/pipelines");
  assert.deepEqual(list.map((p: { name: string }) => p.name), ["demo", "slow", "hold", "report"]);
  const demo = list[0];
  assert.equal(demo.description, "A diamond of four quick steps");
  assert.deepEqual(demo.steps, [
    { name: "load", needs: [], fanOut: false },
    { name: "left", needs: ["load"], fanOut: false },
    { name: "right", needs: ["load"], fanOut: false },
    { name: "join", needs: ["left", "right"], fanOut: false },
  ]);
  assert.equal(demo.params.type, "object");
  assert.deepEqual(Object.keys(demo.params.properties), ["region", "count"]);
  assert.equal(demo.schedule, null);
  assert.equal(list[2].params, null, "a pipeline without params has a null schema");
  assert.equal(list[3].steps[1].fanOut, true);
});

Deno.test("GET /api/pipelines/:name shows a schedule with its next ticks", async () => {
  const { pipeline, step } = await import("../lib/mod.ts");
  const nightly = pipeline("nightly", {
    schedule: { cron: "0 3 * * *", timezone: "Europe/Berlin", catchup: "latest" },
    steps: [step("only", () => 1)],
  });
  await using s = await startService({ worker: false, pipelines: [nightly] });
  const { schedule } = await s.get("/api/pipelines/nightly");
  assert.equal(schedule.cron, "0 3 * * *");
  assert.equal(schedule.timezone, "Europe/Berlin");
  assert.equal(schedule.catchup, "latest");
  assert.equal(schedule.nextTicks.length, 5);
  for (const tick of schedule.nextTicks) {
    const berlin = new Intl.DateTimeFormat("en-GB", {
      timeZone: "Europe/Berlin",
      hour: "2-digit",
      minute: "2-digit",
    }).format(new Date(tick));
    assert.equal(berlin, "03:00", tick);
  }
  assert.ok(Date.parse(schedule.nextTicks[0]) > Date.now());
  assert.equal(schedule.lastTick, null, "no look at the schedule yet");

  await s.engine.scheduler.tick(); // the first look records the latest tick
  const after = (await s.get("/api/pipelines")).find((p: { name: string }) => p.name === "nightly");
  assert.ok(Date.parse(after.schedule.lastTick) <= Date.now());
  const lastBerlin = new Intl.DateTimeFormat("en-GB", {
    timeZone: "Europe/Berlin",
    hour: "2-digit",
    minute: "2-digit",
  }).format(new Date(after.schedule.lastTick));
  assert.equal(lastBerlin, "03:00");
  assert.ok(Date.parse(schedule.nextTicks[0]) - Date.parse(after.schedule.lastTick) <= 90_000_000);
});

Deno.test("GET /api/pipelines/:name shows the pipeline with its last runs; unknown is 404", async () => {
  await using s = await startService();
  const first = await trigger(s, "demo", { region: "us" });
  const second = await trigger(s, "demo", { region: "eu", count: 2 });
  await s.waitForStatus(second.id, ["succeeded"]);
  const demo = await s.get("/api/pipelines/demo");
  assert.equal(demo.name, "demo");
  assert.deepEqual(demo.lastRuns.map((r: { id: string }) => r.id), [second.id, first.id]);
  const missing = await s.get("/api/pipelines/nope", 404);
  assert.equal(missing.error.code, "not_found");
  assert.match(missing.error.message, /nope/);
});

Deno.test("POST /api/pipelines/:name/runs creates a run the worker finishes", async () => {
  await using s = await startService();
  const r = await s.request("POST", "/api/pipelines/demo/runs", {
    body: { params: { region: "us", count: 3 }, logicalDate: "2026-01-31" },
  });
  assert.equal(r.status, 201);
  const run = r.body as { id: string; status: string; trigger: string; params: unknown };
  assert.equal(r.headers.get("location"), `/api/runs/${run.id}`);
  assert.equal(run.status, "queued");
  assert.equal(run.trigger, "http");
  assert.deepEqual(run.params, { region: "us", count: 3 });
  await s.waitForStatus(run.id, ["succeeded"]);
  const detail = await s.get(`/api/runs/${run.id}`);
  assert.equal(detail.status, "succeeded");
  assert.equal(detail.logicalDate, "2026-01-31");
  assert.equal(detail.version, detail.currentVersion);
  assert.deepEqual(detail.steps.map((st: { name: string }) => st.name), [
    "load",
    "left",
    "right",
    "join",
  ]);
  for (const st of detail.steps) {
    assert.equal(st.status, "succeeded");
    assert.equal(st.attempts.length, 1);
    assert.equal(typeof st.attempts[0].durationMs, "number");
    assert.equal(st.items, null);
  }
  assert.deepEqual(detail.steps[0].attempts[0].logs.map((l: { message: string }) => l.message), [
    "loading",
  ]);
  assert.deepEqual(detail.steps[0].attempts[0].logs[0].fields, { region: "us" });
});

Deno.test("an empty body triggers with default params", async () => {
  await using s = await startService();
  const r = await s.request("POST", "/api/pipelines/demo/runs");
  assert.equal(r.status, 201);
  assert.deepEqual((r.body as { params: unknown }).params, { region: "eu" });
});

Deno.test("params failing the schema are 422 with zod's issues", async () => {
  await using s = await startService();
  const bad = await s.post("/api/pipelines/demo/runs", { params: { region: "", count: 1.5 } }, 422);
  assert.equal(bad.error.code, "invalid_params");
  assert.deepEqual(
    bad.error.issues.map((i: { path: string[] }) => i.path.join(".")).sort(),
    ["count", "region"],
  );
  const unknown = await s.post("/api/pipelines/demo/runs", { params: { colour: "red" } }, 422);
  assert.equal(unknown.error.code, "invalid_params");
  assert.match(unknown.error.message, /colour/);
  const none = await s.post("/api/pipelines/hold/runs", { params: { x: 1 } }, 422);
  assert.deepEqual(none.error.issues, [{ path: ["x"], message: "Unknown param" }]);
  assert.equal((await s.get("/api/runs")).runs.length, 0, "no run was created");
});

Deno.test("malformed and mistyped bodies are 400, wrong content types 415, huge bodies 413", async () => {
  await using s = await startService();
  const path = "/api/pipelines/demo/runs";
  const notJson = await s.request("POST", path, { body: "{nope" });
  assert.equal(notJson.status, 400);
  assert.equal((notJson.body as { error: { code: string } }).error.code, "malformed_json");

  const wrongType = await s.request("POST", path, { body: { params: [1, 2] } });
  assert.equal(wrongType.status, 400);
  const issues = (wrongType.body as { error: { issues: { path: string[] }[] } }).error.issues;
  assert.deepEqual(issues[0].path, ["params"]);

  const extra = await s.request("POST", path, { body: { params: {}, colour: "red" } });
  assert.equal(extra.status, 400, "unknown body fields are refused");

  const badDate = await s.request("POST", path, { body: { logicalDate: "2026-13-45" } });
  assert.equal(badDate.status, 400);

  const deep = await s.request("POST", path, { body: `{"params":{"a":${"[".repeat(100)}` });
  assert.equal(deep.status, 400);
  assert.match(deep.text, /nests deeper/);

  const text = await s.request("POST", path, {
    body: '{"params":{}}',
    headers: { "content-type": "text/plain" },
  });
  assert.equal(text.status, 415);
  assert.equal((text.body as { error: { code: string } }).error.code, "unsupported_media_type");

  const latin1 = await s.request("POST", path, {
    body: '{"params":{}}',
    headers: { "content-type": "application/json; charset=latin1" },
  });
  assert.equal(latin1.status, 415);

  const huge = await s.request("POST", path, {
    body: JSON.stringify({ params: { region: "x".repeat(200_000) } }),
  });
  assert.equal(huge.status, 413);
  assert.equal((huge.body as { error: { code: string } }).error.code, "payload_too_large");

  // A streamed body has no Content-Length: reading stops at the limit.
  const chunks = 40;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      controller.enqueue(new Uint8Array(8192).fill(0x20));
      if (--chunksLeft === 0) controller.close();
    },
  });
  let chunksLeft = chunks;
  const streamed = await fetch(`${s.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: stream,
  });
  assert.equal(streamed.status, 413);
  await streamed.body?.cancel();
  assert.equal((await s.get("/api/runs")).runs.length, 0);
});

Deno.test("Idempotency-Key returns the same run twice, also to concurrent requests", async () => {
  await using s = await startService();
  const send = (key: string, params: unknown) =>
    s.request("POST", "/api/pipelines/demo/runs", {
      body: { params },
      headers: { "idempotency-key": key },
    });
  const first = await send("order-42", { region: "us" });
  assert.equal(first.status, 201);
  const again = await send("order-42", { region: "us" });
  assert.equal(again.status, 200);
  assert.equal(again.headers.get("idempotent-replayed"), "true");
  assert.equal((again.body as { id: string }).id, (first.body as { id: string }).id);

  const other = await send("order-42", { region: "eu" });
  assert.equal(other.status, 422);
  assert.equal((other.body as { error: { code: string } }).error.code, "idempotency_key_reused");

  const together = await Promise.all(Array.from({ length: 6 }, () => send("burst", {})));
  const ids = new Set(together.map((r) => (r.body as { id: string }).id));
  assert.equal(ids.size, 1);
  assert.deepEqual(together.map((r) => r.status).sort(), [200, 200, 200, 200, 200, 201]);
  assert.equal((await s.get("/api/runs?pipeline=demo")).runs.length, 2);

  const badKey = await send("with space", {});
  assert.equal(badKey.status, 400);
  assert.equal((badKey.body as { error: { code: string } }).error.code, "invalid_header");
});

Deno.test("a failed run shows errors with stacks, logs, fan-out items, artifacts and its alert", async () => {
  world.fixed = false;
  await using s = await startService();
  const run = await trigger(s, "report");
  await s.waitForStatus(run.id, ["failed"]);
  const detail = await s.get(`/api/runs/${run.id}`);
  assert.equal(detail.status, "failed");
  assert.equal(detail.failures, 1);
  const [fetchStep, mail, publish] = detail.steps;
  assert.equal(fetchStep.status, "succeeded");
  assert.deepEqual(fetchStep.attempts[0].logs[0].fields, { rows: 3 });

  assert.equal(publish.status, "failed");
  assert.equal(publish.error.name, "NonRetryableError");
  assert.match(publish.error.stack, /Publisher rejected the report/);
  assert.equal(publish.attempts[0].logs[0].level, "error");

  assert.equal(mail.fanOut, true);
  assert.equal(mail.status, "failed");
  assert.equal(mail.itemCount, 3);
  assert.deepEqual(mail.items.map((i: { status: string }) => i.status), [
    "succeeded",
    "failed",
    "succeeded",
  ]);
  const broken = mail.items[1];
  assert.equal(broken.attempts.length, 2, "both attempts of the failing item are listed");
  assert.match(broken.attempts[0].error.message, /Mail server refused bob/);
  assert.match(broken.attempts[1].error.stack, /Error: Mail server refused bob/);
  assert.equal(broken.attempts[1].logs[0].message, "mailing bob");

  assert.deepEqual(detail.artifacts.map((a: { name: string }) => a.name).sort(), [
    "page.html",
    "report.pdf",
  ]);
  assert.equal(detail.alerts.length, 1);
  assert.equal(detail.alerts[0].seq, 1);
  assert.equal(detail.alerts[0].webhook, "none");
});

Deno.test("GET /api/runs/:id/artifacts/:name serves the bytes with their content type", async () => {
  world.fixed = false;
  await using s = await startService();
  const run = await trigger(s, "report");
  await s.waitForStatus(run.id, ["failed"]);
  const detail = await s.get(`/api/runs/${run.id}`);
  const pdfMeta = detail.artifacts.find((a: { name: string }) => a.name === "report.pdf");
  const pdf = await fetch(s.url + pdfMeta.url);
  assert.equal(pdf.status, 200);
  assert.equal(pdf.headers.get("content-type"), "application/pdf");
  assert.equal(pdf.headers.get("content-disposition"), "inline; filename*=UTF-8''report.pdf");
  assert.equal(await pdf.text(), "%PDF-1.4 fake");

  const html = await fetch(`${s.url}/api/runs/${run.id}/artifacts/page.html`);
  assert.equal(html.headers.get("content-type"), "text/html");
  assert.equal(html.headers.get("content-security-policy"), "sandbox");
  assert.match(html.headers.get("content-disposition")!, /^attachment/);
  await html.body?.cancel();

  const missing = await s.get(`/api/runs/${run.id}/artifacts/nope.pdf`, 404);
  assert.equal(missing.error.code, "not_found");
  await s.get(`/api/runs/no-such-run/artifacts/report.pdf`, 404);
});

Deno.test("resume: 409 while running, requeues a failed run, 409 once succeeded", async () => {
  world.fixed = false;
  await using s = await startService();
  const held = await trigger(s, "hold");
  await s.waitForStatus(held.id, ["running"]);
  const busy = await s.post(`/api/runs/${held.id}/resume`, {}, 409);
  assert.equal(busy.error.code, "conflict");
  assert.match(busy.error.message, /running/);
  await s.post(`/api/runs/${held.id}/cancel`, {}, 200);

  const run = await trigger(s, "report");
  await s.waitForStatus(run.id, ["failed"]);
  world.fixed = true;
  try {
    const resumed = await s.post(`/api/runs/${run.id}/resume`, {}, 200);
    assert.equal(resumed.status, "queued");
    await s.waitForStatus(run.id, ["succeeded"]);
    const detail = await s.get(`/api/runs/${run.id}`);
    assert.equal(detail.steps[0].attempts.length, 1, "the checkpointed step did not run again");
    assert.deepEqual(detail.steps[1].items.map((i: { attempts: unknown[] }) => i.attempts.length), [
      1,
      3,
      1,
    ]);
    const done = await s.post(`/api/runs/${run.id}/resume`, undefined, 409);
    assert.match(done.error.message, /already succeeded/);
  } finally {
    world.fixed = false;
  }
  await s.post("/api/runs/nope/resume", {}, 404);
  const bad = await s.post(`/api/runs/${run.id}/resume`, { force: "yes" }, 400);
  assert.equal(bad.error.code, "invalid_body");
});

Deno.test("rerun: runs a step and its dependents again; 422 for an unknown step, 409 while active", async () => {
  await using s = await startService();
  const run = await trigger(s, "demo");
  await s.waitForStatus(run.id, ["succeeded"]);
  const unknown = await s.post(`/api/runs/${run.id}/rerun`, { from: "nope" }, 422);
  assert.equal(unknown.error.code, "unknown_step");
  assert.deepEqual(unknown.error.issues[0].path, ["from"]);
  const missing = await s.post(`/api/runs/${run.id}/rerun`, {}, 400);
  assert.deepEqual(missing.error.issues[0].path, ["from"]);

  const again = await s.post(`/api/runs/${run.id}/rerun`, { from: "left" }, 200);
  assert.equal(again.status, "queued");
  await s.waitForStatus(run.id, ["succeeded"]);
  const detail = await s.get(`/api/runs/${run.id}`);
  const attempts = Object.fromEntries(
    detail.steps.map((st: { name: string; generation: number }) => [st.name, st.generation]),
  );
  assert.deepEqual(attempts, { load: 0, left: 1, right: 0, join: 1 });

  const held = await trigger(s, "hold");
  await s.waitForStatus(held.id, ["running"]);
  const active = await s.post(`/api/runs/${held.id}/rerun`, { from: "hold" }, 409);
  assert.equal(active.error.code, "conflict");
  await s.post(`/api/runs/${held.id}/cancel`, {}, 200);
});

Deno.test("cancel: stops a running run, 409 on an ended one, 404 on an unknown one", async () => {
  await using s = await startService();
  const held = await trigger(s, "hold");
  await s.waitForStatus(held.id, ["running"]);
  const cancelled = await s.post(`/api/runs/${held.id}/cancel`, { reason: "Wrong day" }, 200);
  assert.equal(cancelled.status, "cancelled");
  assert.deepEqual(cancelled.error, { step: null, message: "Wrong day" });
  const again = await s.post(`/api/runs/${held.id}/cancel`, {}, 409);
  assert.equal(again.error.code, "conflict");
  await s.post("/api/runs/20260101-000000-nothere/cancel", {}, 404);
  await delay(50);
  const detail = await s.get(`/api/runs/${held.id}`);
  assert.equal(detail.status, "cancelled");
  assert.equal(detail.steps[0].status, "failed");
});

Deno.test("unknown routes are 404, wrong methods 405 with Allow, odd ids 404", async () => {
  await using s = await startService();
  const nothing = await s.request("GET", "/api/nothing");
  assert.equal(nothing.status, 404);
  assert.equal((nothing.body as { error: { code: string } }).error.code, "not_found");
  const wrong = await s.request("DELETE", "/api/runs/abc");
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get("allow"), "GET, HEAD");
  const put = await s.request("PUT", "/api/pipelines/demo/runs");
  assert.equal(put.status, 405);
  assert.equal(put.headers.get("allow"), "POST");
  for (const id of ["%00", "..", "a%2Fb", "x".repeat(300), "%E2%98%83"]) {
    const r = await s.request("GET", `/api/runs/${id}`);
    assert.equal(r.status, 404, id);
  }
  const head = await fetch(`${s.url}/api/pipelines`, { method: "HEAD" });
  assert.equal(head.status, 200);
  await head.body?.cancel();
});

Deno.test("auth off: the service binds to loopback only and says so", async () => {
  await using s = await startService();
  assert.equal(s.server.addr.hostname, "127.0.0.1");
  assert.match(s.logs.join("\n"), /loopback only: KVFLOW_TOKEN is not set/);
  await trigger(s, "demo");
});

Deno.test("auth on: mutations need the token (401 without, 403 wrong); reads stay open", async () => {
  await using s = await startService({ token: TOKEN });
  assert.equal(s.server.addr.hostname, "0.0.0.0");
  assert.match(s.logs.join("\n"), /changes need the bearer token \(KVFLOW_TOKEN\); reads are open/);
  const bodies: string[] = [];
  const none = await s.request("POST", "/api/pipelines/demo/runs", { body: {} });
  bodies.push(none.text);
  assert.equal(none.status, 401);
  assert.equal(none.headers.get("www-authenticate"), 'Bearer realm="kvflow"');
  const wrong = await s.request("POST", "/api/pipelines/demo/runs", { body: {}, token: "nope" });
  bodies.push(wrong.text);
  assert.equal(wrong.status, 403);
  const almost = await s.request("POST", "/api/pipelines/demo/runs", {
    body: {},
    token: TOKEN.slice(0, -1),
  });
  assert.equal(almost.status, 403);
  const basic = await s.request("POST", "/api/pipelines/demo/runs", {
    body: {},
    headers: { authorization: `Basic ${btoa(`x:${TOKEN}`)}` },
  });
  assert.equal(basic.status, 401);
  for (const action of ["resume", "rerun", "cancel"]) {
    const r = await s.request("POST", `/api/runs/abc/${action}`, { body: {} });
    bodies.push(r.text);
    assert.equal(r.status, 401, action);
  }
  const run = await trigger(s, "demo", {}, TOKEN);
  await s.waitForStatus(run.id, ["succeeded"]);
  const done = await s.request("POST", `/api/runs/${run.id}/resume`, { body: {}, token: TOKEN });
  bodies.push(done.text);
  assert.equal(done.status, 409, "with the token the request reaches the run");
  assert.equal((await s.get("/api/runs")).runs.length, 1);
  await s.get(`/api/runs/${run.id}`);
  await s.get("/metrics");
  for (const body of bodies) assert.ok(!body.includes(TOKEN), "no answer shows the token");
  assert.ok(!s.logs.join("\n").includes(TOKEN), "no log line shows the token");
});

Deno.test("auth on with a read token: reads need it (or the write token); it cannot write", async () => {
  await using s = await startService({ token: TOKEN, readToken: READ_TOKEN });
  assert.match(s.logs.join("\n"), /reads need KVFLOW_READ_TOKEN or KVFLOW_TOKEN/);
  for (const path of ["/api/runs", "/api/pipelines", "/api/pipelines/demo", "/metrics"]) {
    assert.equal((await s.request("GET", path)).status, 401, path);
    assert.equal((await s.request("GET", path, { token: "wrong" })).status, 403, path);
    assert.equal((await s.request("GET", path, { token: READ_TOKEN })).status, 200, path);
    assert.equal((await s.request("GET", path, { token: TOKEN })).status, 200, path);
  }
  assert.equal((await s.request("GET", "/api/runs/abc")).status, 401, "auth before lookup");
  const readOnly = await s.request("POST", "/api/pipelines/demo/runs", {
    body: {},
    token: READ_TOKEN,
  });
  assert.equal(readOnly.status, 403);
  assert.ok(!readOnly.text.includes(READ_TOKEN));
  assert.equal((await s.request("GET", "/healthz")).status, 200, "health stays open");
  assert.equal((await s.request("GET", "/openapi.json")).status, 200, "the document stays open");
  const events = await fetch(`${s.url}/api/runs/abc/events`);
  assert.equal(events.status, 401);
  await events.body?.cancel();

  // The dashboard's session cookie (what a browser's EventSource sends) also grants reads.
  const login = await fetch(`${s.url}/login`, {
    method: "POST",
    body: new URLSearchParams({ token: READ_TOKEN, next: "/" }),
    redirect: "manual",
  });
  await login.body?.cancel();
  const cookie = login.headers.get("set-cookie")!.split(";")[0];
  assert.ok(!cookie.includes(READ_TOKEN));
  const withCookie = await s.request("GET", "/api/runs", { headers: { cookie } });
  assert.equal(withCookie.status, 200);
  const forged = await s.request("GET", "/api/runs", { headers: { cookie: "kvflow_session=00" } });
  assert.equal(forged.status, 401);
  const cookieWrite = await s.request("POST", "/api/pipelines/demo/runs", {
    body: {},
    headers: { cookie },
  });
  assert.equal(cookieWrite.status, 401, "a cookie never grants a change");
});

Deno.test("a server error is a 500 with a reference and no internals; health turns 503", async () => {
  const kv = await Deno.openKv(":memory:");
  const { openEngine } = await import("../lib/mod.ts");
  const { serve } = await import("../lib/http/service.ts");
  const { testPipelines } = await import("./_support/http.ts");
  const engine = await openEngine({ kv, pipelines: testPipelines(), queues: true });
  const logs: string[] = [];
  const { promise, resolve } = Promise.withResolvers<void>();
  const server = serve(engine, { port: 0, log: (l) => logs.push(l), onListen: () => resolve() });
  await promise;
  try {
    const url = `http://127.0.0.1:${server.addr.port}`;
    kv.close();
    const r = await fetch(`${url}/api/runs`);
    const body = await r.json();
    assert.equal(r.status, 500);
    assert.equal(body.error.code, "internal");
    assert.match(body.error.message, /^Internal server error \(reference [0-9a-f]{8}\)$/);
    const ref = body.error.message.match(/reference ([0-9a-f]+)/)[1];
    assert.ok(logs.some((l) => l.includes(ref) && /GET "\/api\/runs"/.test(l)), logs.join("\n"));
    const health = await fetch(`${url}/healthz`);
    assert.equal(health.status, 503);
    assert.equal((await health.json()).kv.ok, false);
  } finally {
    await server.shutdown();
    await engine.close();
  }
});
