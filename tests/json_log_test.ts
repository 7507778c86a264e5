/**
 * `KVFLOW_LOG=json`: `worker` and `serve` print one JSON object a line (every line, on
 * stdout and stderr), with the run, step, item, attempt and trace id when known; and a
 * run's trace id in the API and on the dashboard, linked through `KVFLOW_TRACE_URL`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { runIdOf, Sandbox } from "./_support/harness.ts";
import { OtlpReceiver } from "./_support/otlp.ts";

/** Every line of a process's output, parsed; fails on a line that is not JSON. */
function jsonLines(output: string): Record<string, unknown>[] {
  return output.split("\n").filter((line) => line !== "").map((line) => {
    try {
      return JSON.parse(line);
    } catch {
      throw new Error(`Not a JSON line: ${line}`);
    }
  });
}

Deno.test("worker with KVFLOW_LOG=json: every line is JSON, step logs carry run, step, attempt and trace id", async () => {
  await using box = await Sandbox.create();
  await using receiver = new OtlpReceiver();
  const env = { ...receiver.env(), ECHO_URL: `${receiver.url}/echo` };
  const worker = box.spawn(["worker"], { env: { ...env, KVFLOW_LOG: "json" } });
  await worker.waitForOutput(/"level":"info","message":"kvflow: worker \S+ started/);
  const queued = await box.cli(["run", "tests/fixtures/traced.ts", "--detach"], { env });
  assert.equal(queued.code, 0, queued.stdout + queued.stderr);
  const id = queued.stdout.trim();
  const run = await box.waitForRun(id, (r) => r.status === "failed");
  await worker.waitForOutput(/"level":"error","message":"[^"]*failed/);
  worker.kill("SIGTERM");
  const exit = await worker.exit();
  assert.equal(exit.code, 0, exit.stderr);

  const lines = [...jsonLines(exit.stdout), ...jsonLines(exit.stderr)];
  for (const line of lines) {
    assert.equal(typeof line.time, "string");
    assert.ok(!Number.isNaN(Date.parse(String(line.time))), `time ${line.time}`);
    assert.ok(["debug", "info", "warn", "error"].includes(String(line.level)), `${line.level}`);
    assert.equal(typeof line.message, "string");
  }
  const logged = lines.find((l) => l.message === "calling the echo service");
  assert.ok(logged, `no step log line in ${exit.stdout}`);
  assert.deepEqual(
    { ...logged, time: undefined },
    {
      time: undefined,
      level: "info",
      message: "calling the echo service",
      run: id,
      step: "call",
      attempt: 1,
      traceId: run.trace!.traceId,
      fields: { url: `${receiver.url}/echo` },
    },
  );
  const alert = lines.find((l) => l.level === "error" && l.run === id);
  assert.ok(alert, "no alert line about the run");
  assert.match(String(alert.message), /failed/);
  assert.ok(lines.some((l) => String(l.message).startsWith("kvflow: stopping")));
});

Deno.test("serve with KVFLOW_LOG=json prints JSON lines; the API and the run page show the trace, linked by KVFLOW_TRACE_URL", async () => {
  await using box = await Sandbox.create();
  await using receiver = new OtlpReceiver();
  const env = { ...receiver.env(), ECHO_URL: `${receiver.url}/echo` };
  const ran = await box.cli(["run", "tests/fixtures/traced.ts"], { env });
  const id = runIdOf(ran.stdout);
  const { traceId } = (await box.run(id)).trace!;

  const serve = box.spawn(["serve", "--port", "0"], {
    env: { KVFLOW_LOG: "json", KVFLOW_TRACE_URL: "http://jaeger.test/trace/{traceId}" },
  });
  const [, port] = await serve.waitForOutput(
    /"message":"kvflow: serving on http:\/\/127\.0\.0\.1:(\d+)/,
  );
  const api = await (await fetch(`http://127.0.0.1:${port}/api/runs/${id}`)).json();
  assert.equal(api.traceId, traceId);
  assert.equal(api.traceUrl, `http://jaeger.test/trace/${traceId}`);
  const page = await (await fetch(`http://127.0.0.1:${port}/runs/${id}`)).text();
  assert.match(
    page,
    new RegExp(`<a href="http://jaeger.test/trace/${traceId}"[^>]*>${traceId}</a>`),
  );
  serve.kill("SIGTERM");
  const exit = await serve.exit();
  assert.equal(exit.code, 0, exit.stderr);
  const lines = [...jsonLines(exit.stdout), ...jsonLines(exit.stderr)];
  assert.deepEqual(lines.map((l) => [l.level, String(l.message).slice(0, 20)]), [
    ["info", "kvflow: serving on h"],
    ["info", "kvflow: stopping: fi"],
  ]);
});
