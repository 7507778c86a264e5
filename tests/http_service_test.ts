import assert from "node:assert/strict";
import * as keys from "../lib/kv/keys.ts";
import type { Lease } from "../lib/model/records.ts";
import { startService, world } from "./_support/http.ts";
import { Sandbox } from "./_support/harness.ts";

const SAMPLE =
  /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+]+$/;

function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.trimEnd().split("\n")) {
    if (line.startsWith("# HELP ") || line.startsWith("# TYPE ")) continue;
    assert.match(line, SAMPLE);
    const at = line.lastIndexOf(" ");
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

Deno.test("GET /metrics: runs by pipeline and status, step durations, retries, alerts, takeovers", async () => {
  world.fixed = false;
  await using s = await startService({ metricsCountTtlMs: 0 });
  for (let i = 0; i < 2; i++) {
    const run = await s.post("/api/pipelines/demo/runs", {}, 201);
    await s.waitForStatus(run.id, ["succeeded"]);
  }
  const failed = await s.post("/api/pipelines/report/runs", {}, 201);
  await s.waitForStatus(failed.id, ["failed"]);

  // A run whose worker vanished: its lease expired, so this worker takes it over.
  const orphan = await s.engine.store.createRun(s.engine.pipeline("demo"));
  const lease: Lease = { owner: "gone:1:x", host: "elsewhere", pid: 1, deadline: Date.now() - 1 };
  await s.engine.kv.set(keys.lease(orphan.id), lease);
  s.engine.worker.wake(orphan.id);
  await s.waitForStatus(orphan.id, ["succeeded"]);

  const response = await fetch(`${s.url}/metrics`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const m = parseMetrics(await response.text());
  assert.equal(m.get('kvflow_runs{pipeline="demo",status="succeeded"}'), 3);
  assert.equal(m.get('kvflow_runs{pipeline="report",status="failed"}'), 1);
  assert.equal(m.get('kvflow_runs{pipeline="hold",status="queued"}'), 0);
  assert.equal(m.get('kvflow_alerts_total{pipeline="report"}'), 1);
  assert.equal(m.get("kvflow_lease_takeovers_total"), 1);
  assert.equal(m.get('kvflow_runs_finished_total{pipeline="demo",status="succeeded"}'), 3);
  assert.equal(m.get('kvflow_runs_finished_total{pipeline="report",status="failed"}'), 1);
  assert.equal(m.get('kvflow_step_retries_total{pipeline="report",step="mail"}'), 1);
  const load = '{pipeline="demo",step="load",outcome="succeeded"';
  assert.equal(m.get(`kvflow_step_duration_seconds_count${load}}`), 3);
  assert.equal(m.get(`kvflow_step_duration_seconds_bucket${load},le="+Inf"}`), 3);
  const buckets = [...m].filter(([k]) => k.startsWith(`kvflow_step_duration_seconds_bucket${load}`))
    .map(([, v]) => v);
  assert.deepEqual(buckets, [...buckets].sort((a, b) => a - b), "buckets are cumulative");
  assert.equal(
    m.get(`kvflow_step_duration_seconds_count{pipeline="report",step="publish",outcome="failed"}`),
    1,
  );
  assert.equal(
    m.get(
      'kvflow_http_requests_total{method="POST",route="/api/pipelines/:name/runs",status="201"}',
    ),
    3,
  );
  assert.equal(m.get("kvflow_worker_serving"), 1);
  assert.equal(m.get("kvflow_sse_streams"), 0);
  assert.ok(m.get("process_resident_memory_bytes")! > 0);
});

Deno.test("deno task serve: listens (on --port or PORT), answers, stops on SIGTERM", async () => {
  await using box = await Sandbox.create();
  const serve = box.spawn(["serve", "--port", "0"]);
  const [, port] = await serve.waitForOutput(
    /serving on http:\/\/127\.0\.0\.1:(\d+) \(loopback only/,
  );
  const health = await fetch(`http://127.0.0.1:${port}/healthz`);
  assert.equal(health.status, 200);
  assert.equal((await health.json()).ok, true);
  const doc = await fetch(`http://127.0.0.1:${port}/openapi.json`);
  assert.equal((await doc.json()).openapi, "3.1.0");
  const run = await fetch(`http://127.0.0.1:${port}/api/pipelines/example/runs`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ params: { customers: 1 } }),
  });
  assert.equal(run.status, 201);
  await run.body?.cancel();
  serve.kill("SIGTERM");
  assert.equal((await serve.exit()).code, 0);

  const token = "tok-" + crypto.randomUUID();
  const withToken = box.spawn(["serve"], {
    env: { PORT: "0", KVFLOW_TOKEN: token, KVFLOW_READ_TOKEN: "read-" + token },
  });
  const [, port2] = await withToken.waitForOutput(/serving on http:\/\/0\.0\.0\.0:(\d+)/);
  const refused = await fetch(`http://127.0.0.1:${port2}/api/runs`);
  assert.equal(refused.status, 401);
  await refused.body?.cancel();
  const allowed = await fetch(`http://127.0.0.1:${port2}/api/runs`, {
    headers: { authorization: `Bearer read-${token}` },
  });
  assert.equal(allowed.status, 200);
  assert.equal((await allowed.json()).runs.length, 1);
  withToken.kill("SIGTERM");
  const exit = await withToken.exit();
  assert.equal(exit.code, 0);
  assert.ok(!exit.stdout.includes(token) && !exit.stderr.includes(token), "no token in logs");
});
