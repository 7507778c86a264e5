import assert from "node:assert/strict";
import { Hono } from "hono";
import { type AlertRecord, openEngine, pipeline, step } from "../lib/mod.ts";
import { runAlerts } from "../lib/alerts/alert.ts";
import * as keys from "../lib/kv/keys.ts";

function exhaustingPipeline(state: { broken: boolean; calls: Record<string, number> }) {
  const count = (name: string) => (state.calls[name] = (state.calls[name] ?? 0) + 1);
  const extract = step("extract", () => {
    count("extract");
    return [1, 2, 3];
  });
  const charge = step("charge", {
    needs: { extract },
    retry: { attempts: 3, delay: "5ms" },
  }, ({ extract }) => {
    count("charge");
    if (state.broken) throw new Error("Payment gateway returned 503");
    return extract.length;
  });
  const receipt = step("receipt", { needs: { charge } }, ({ charge }) => {
    count("receipt");
    return `charged ${charge}`;
  });
  const report = step("report", { needs: { extract } }, async ({ extract }) => {
    count("report");
    await new Promise((r) => setTimeout(r, 30));
    return extract.reduce((a, b) => a + b, 0);
  });
  return pipeline("billing", { steps: [extract, charge, receipt, report] });
}

Deno.test("an exhausted step fails the run, skips its dependents, and lets other branches finish", async () => {
  const state = { broken: true, calls: {} as Record<string, number> };
  const p = exhaustingPipeline(state);
  const alerts: AlertRecord[] = [];
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    onAlert: (a) => alerts.push(a),
  });
  const run = await engine.store.createRun(p, { logicalDate: "2024-05-01" });
  const ended = await engine.runToEnd(run.id);

  assert.equal(ended.status, "failed");
  assert.deepEqual(ended.error, { step: "charge", message: "Payment gateway returned 503" });
  assert.equal(ended.failures, 1);
  assert.deepEqual(state.calls, { extract: 1, charge: 3, report: 1 });
  const steps = await engine.store.getSteps(run.id);
  assert.equal(steps.get("charge")!.status, "failed");
  assert.equal(steps.get("charge")!.attempt, 3);
  assert.equal(steps.get("receipt")!.status, "skipped");
  assert.match(steps.get("receipt")!.error!.message, /'charge' did not succeed/);
  assert.equal(steps.get("report")!.status, "succeeded");
  assert.equal(await engine.store.getOutput(run.id, "report"), 6);

  assert.equal(alerts.length, 1);
  const stored = await runAlerts(engine.kv, run.id);
  assert.equal(stored.length, 1);
  const alert = (await engine.kv.get<AlertRecord>(keys.alert(run.id, 1))).value!;
  assert.deepEqual(stored[0], alert);
  assert.deepEqual(alerts[0], alert);
  assert.equal(alert.seq, 1);
  assert.equal(alert.step, "charge");
  assert.equal(alert.attempts, 3);
  assert.equal(alert.message, "Payment gateway returned 503");
  assert.equal(alert.logicalDate, "2024-05-01");
  assert.equal(alert.webhook, "none");
});

Deno.test("each failure of a run stores one alert; a resume that fails again adds the next", async () => {
  const state = { broken: true, calls: {} as Record<string, number> };
  const p = exhaustingPipeline(state);
  const alerts: AlertRecord[] = [];
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    onAlert: (a) => alerts.push(a),
  });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  // looking at a failed run again changes nothing and alerts no one
  assert.equal(await engine.worker.execute(run.id), "skipped");
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.equal(alerts.length, 1);

  await engine.store.resume(await engine.store.requireRun(run.id), p);
  const again = await engine.runToEnd(run.id);
  assert.equal(again.status, "failed");
  assert.equal(again.failures, 2);
  assert.deepEqual(alerts.map((a) => a.seq), [1, 2]);
  assert.deepEqual((await runAlerts(engine.kv, run.id)).map((a) => a.seq), [1, 2]);

  state.broken = false;
  await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(alerts.length, 2, "success alerts no one");
  assert.equal((await runAlerts(engine.kv, run.id)).length, 2);
});

function webhookServer(statuses: (n: number) => number) {
  const bodies: unknown[] = [];
  const app = new Hono();
  app.post("/hook", async (c) => {
    bodies.push(await c.req.json());
    return c.text("", statuses(bodies.length) as 200);
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  return {
    url: `http://127.0.0.1:${server.addr.port}/hook`,
    bodies,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

Deno.test("an alert webhook is retried until accepted, then marked sent once", async () => {
  await using hook = webhookServer((n) => (n <= 2 ? 500 : 200));
  const state = { broken: true, calls: {} as Record<string, number> };
  const p = exhaustingPipeline(state);
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    onAlert: () => {},
    alertWebhook: hook.url,
    alertBackoff: [10, 10, 10],
  });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  await engine.worker.settleAlerts();

  assert.equal(hook.bodies.length, 3, "two refusals, then one accepted delivery");
  const body = hook.bodies[2] as { text: string; kvflow: Record<string, unknown> };
  assert.equal(body.kvflow.runId, run.id);
  assert.equal(body.kvflow.step, "charge");
  assert.equal(body.kvflow.seq, 1);
  assert.match(body.text, /kvflow ALERT: run .* of 'billing'.*Payment gateway returned 503/);
  assert.match(body.text, new RegExp(`deno task resume ${run.id}`));
  const alert = (await engine.kv.get<AlertRecord>(keys.alert(run.id, 1))).value!;
  assert.equal(alert.webhook, "sent");
  assert.ok(alert.sentAt && alert.sentAt >= alert.at);
  assert.equal(alert.sending, undefined);
  assert.equal((await engine.kv.get(keys.alertOutbox(run.id, 1))).value, null);

  // sweeping the outbox later sends nothing more
  await engine.worker.sweep();
  await engine.worker.settleAlerts();
  assert.equal(hook.bodies.length, 3);
});

Deno.test("an alert webhook that never accepts is marked failed without crashing", async () => {
  await using hook = webhookServer(() => 500);
  const state = { broken: true, calls: {} as Record<string, number> };
  const p = exhaustingPipeline(state);
  const alerts: AlertRecord[] = [];
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    onAlert: (a) => alerts.push(a),
    alertWebhook: hook.url,
    alertBackoff: [10, 10, 10],
  });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  await engine.worker.settleAlerts();

  assert.equal(hook.bodies.length, 4, "one attempt and three retries");
  const alert = (await engine.kv.get<AlertRecord>(keys.alert(run.id, 1))).value!;
  assert.equal(alert.webhook, "failed");
  assert.equal(alert.webhookError, "HTTP 500");
  assert.equal((await engine.kv.get(keys.alertOutbox(run.id, 1))).value, null);
  assert.equal(alerts.length, 1);

  // the engine still works
  state.broken = false;
  await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
});

Deno.test("an alert webhook that refuses with a 4xx is not retried", async () => {
  await using hook = webhookServer(() => 404);
  const state = { broken: true, calls: {} as Record<string, number> };
  const p = exhaustingPipeline(state);
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    onAlert: () => {},
    alertWebhook: hook.url,
    alertBackoff: [10, 10, 10],
  });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  await engine.worker.settleAlerts();
  assert.equal(hook.bodies.length, 1);
  const alert = (await engine.kv.get<AlertRecord>(keys.alert(run.id, 1))).value!;
  assert.equal(alert.webhook, "failed");
  assert.equal(alert.webhookError, "HTTP 404");
});
