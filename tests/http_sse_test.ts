import assert from "node:assert/strict";
import type { Pipeline } from "../lib/mod.ts";
import { type Service, startService, testPipelines } from "./_support/http.ts";
import { FIXTURE_CLI, Sandbox } from "./_support/harness.ts";
import five from "./fixtures/five.ts";

/** One server-sent event, or a comment line. */
interface Sse {
  event?: string;
  data?: unknown;
  comment?: string;
}

/** Reads an event stream as it arrives; `next()` waits for the next event or comment. */
class SseReader {
  readonly response: Response;
  readonly events: Sse[] = [];
  readonly #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #ended = false;

  constructor(response: Response) {
    this.response = response;
    this.#reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** The next event, or null once the stream ended. */
  async next(timeoutMs = 10_000): Promise<Sse | null> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const cut = this.#buffer.indexOf("\n\n");
      if (cut >= 0) {
        const block = this.#buffer.slice(0, cut);
        this.#buffer = this.#buffer.slice(cut + 2);
        const parsed = parseBlock(block);
        if (!parsed) continue;
        this.events.push(parsed);
        return parsed;
      }
      if (this.#ended) return null;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`No event within ${timeoutMs} ms`)),
          Math.max(0, deadline - Date.now()),
        );
      });
      const { done, value } = await Promise.race([this.#reader.read(), timeout]).finally(() =>
        clearTimeout(timer)
      );
      if (done) this.#ended = true;
      else this.#buffer += value;
    }
  }

  /** Every event until the stream ends. */
  async rest(timeoutMs = 10_000): Promise<Sse[]> {
    while (await this.next(timeoutMs));
    return this.events;
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

function parseBlock(block: string): Sse | null {
  const out: Sse = {};
  const data: string[] = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) out.comment = line.slice(1).trim();
    else if (line.startsWith("event: ")) out.event = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (data.length) out.data = JSON.parse(data.join("\n"));
  return out.event || out.comment ? out : null;
}

async function events(s: Service, runId: string, headers: Record<string, string> = {}) {
  const response = await fetch(`${s.url}/api/runs/${runId}/events`, { headers });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/event-stream; charset=utf-8");
  return new SseReader(response);
}

interface StepData {
  step: string;
  item: number;
  status: string;
  attempt: number;
}

/** Every event's data matches the OpenAPI document's Run and StepEvent schemas. */
async function assertDocumented(s: Service, list: Sse[]): Promise<void> {
  const contract = await s.contract();
  for (const e of list) {
    if (!e.event) continue;
    const ref = e.event === "step" ? "StepEvent" : "Run";
    const error = contract.validate(`#/components/schemas/${ref}`, e.data);
    assert.equal(error, null, `${e.event} ${JSON.stringify(e.data)}`);
  }
}

const RANK: Record<string, number> = { pending: 0, running: 1, succeeded: 2 };

Deno.test("SSE: a live run's events arrive in order: run first, steps as they change, end last", async () => {
  await using s = await startService();
  const run = await s.post("/api/pipelines/slow/runs", { params: { ms: 60 } }, 201);
  const stream = await events(s, run.id);
  const all = await stream.rest();
  assert.ok(stream.ended, "the stream closes after end");
  await assertDocumented(s, all);
  const named = all.filter((e) => e.event);
  assert.equal(named[0].event, "run");
  assert.equal(named.at(-1)!.event, "end");
  assert.equal((named.at(-1)!.data as { status: string }).status, "succeeded");
  assert.equal(named.filter((e) => e.event === "end").length, 1);

  const steps = named.filter((e) => e.event === "step").map((e) => e.data as StepData);
  const order = steps.map((e) => `${e.step}:${e.status}`);
  for (const name of ["a", "b", "c"]) {
    const seen = steps.filter((e) => e.step === name).map((e) => RANK[e.status]);
    assert.deepEqual(seen, [...seen].sort(), `${name} never goes back: ${order}`);
    assert.ok(seen.includes(RANK.succeeded), `${name} succeeded: ${order}`);
  }
  // Steps that take 60 ms are seen running, and each starts after the one it needs ends.
  assert.deepEqual(
    order.filter((o) => !o.startsWith("a:pending")),
    [
      "a:running",
      "a:succeeded",
      "b:running",
      "b:succeeded",
      "c:running",
      "c:succeeded",
    ].filter((o) => order.includes(o)),
  );
  assert.ok(order.includes("b:running") && order.includes("c:running"), order.join(" "));
  const runs = named.filter((e) => e.event === "run").map((e) =>
    (e.data as { status: string }).status
  );
  assert.equal(runs.at(-1), "succeeded");
});

Deno.test("SSE: an ended run sends its state and end at once", async () => {
  await using s = await startService();
  const run = await s.post("/api/pipelines/report/runs", {}, 201);
  await s.waitForStatus(run.id, ["failed"]);
  const stream = await events(s, run.id);
  const all = await stream.rest(2000);
  await assertDocumented(s, all);
  const names = all.filter((e) => e.event).map((e) => e.event);
  assert.equal(names[0], "run");
  assert.equal(names.at(-1), "end");
  const steps = all.filter((e) => e.event === "step").map((e) => e.data as StepData);
  const items = steps.filter((e) => e.step === "mail" && e.item >= 0);
  assert.deepEqual(items.map((i) => i.item).sort(), [0, 1, 2], "fan-out items are included");
  const mail = steps.findIndex((e) => e.step === "mail" && e.item === -1);
  assert.ok(
    steps.findIndex((e) => e.step === "mail" && e.item === 1) < mail,
    "an item comes before the step it ended",
  );
});

Deno.test("SSE: heartbeat comments keep an idle stream open; cancel ends it", async () => {
  await using s = await startService({ sseHeartbeatMs: 40 });
  const run = await s.post("/api/pipelines/hold/runs", {}, 201);
  await s.waitForStatus(run.id, ["running"]);
  const stream = await events(s, run.id);
  let heartbeats = 0;
  while (heartbeats < 2) {
    const e = await stream.next(2000);
    if (e?.comment === "heartbeat") heartbeats++;
  }
  await s.post(`/api/runs/${run.id}/cancel`, {}, 200);
  const all = await stream.rest(3000);
  const end = all.at(-1)!;
  assert.equal(end.event, "end");
  assert.equal((end.data as { status: string }).status, "cancelled");
});

Deno.test("SSE: 404 for an unknown run; shutdown ends open streams", async () => {
  const s = await startService();
  try {
    const missing = await s.request("GET", "/api/runs/nope/events");
    assert.equal(missing.status, 404);
    const run = await s.post("/api/pipelines/hold/runs", {}, 201);
    await s.waitForStatus(run.id, ["running"]);
    const stream = await events(s, run.id);
    assert.equal((await stream.next())?.event, "run");
    await s.server.shutdown();
    await stream.rest(3000);
    assert.ok(stream.ended);
  } finally {
    await s[Symbol.asyncDispose]();
  }
});

Deno.test("SSE: a run driven by another process streams through KV polling", async () => {
  await using box = await Sandbox.create();
  await Deno.mkdir(box.gateDir, { recursive: true });
  // This service has no worker: every change comes from the worker process.
  await using s = await startService({
    kvPath: box.kvPath,
    worker: false,
    pipelines: [...testPipelines(), five as Pipeline<unknown>],
  });
  const run = await s.engine.store.createRun(five as Pipeline<unknown>, { trigger: "http" });
  const stream = await events(s, run.id);
  const worker = box.spawn(["worker"], {
    entry: FIXTURE_CLI,
    env: { GATED: "s3", KVFLOW_POLL_MS: "50" },
  });
  // s1 and s2 finish; s3 waits at its gate: its running state must reach the stream.
  while (true) {
    const e = await stream.next(15_000);
    assert.ok(e, "the stream stays open while the run waits");
    const data = e.data as StepData | undefined;
    if (e.event === "step" && data?.step === "s3" && data.status === "running") break;
  }
  await box.openGate("s3");
  const all = await stream.rest(15_000);
  await assertDocumented(s, all);
  assert.equal(all.at(-1)!.event, "end");
  assert.equal((all.at(-1)!.data as { status: string }).status, "succeeded");
  const succeeded = all.filter((e) => e.event === "step")
    .map((e) => e.data as StepData)
    .filter((d) => d.status === "succeeded")
    .map((d) => d.step);
  assert.deepEqual(succeeded, ["s1", "s2", "s3", "s4", "s5"]);
  worker.kill("SIGTERM");
  assert.equal((await worker.exit()).code, 0);
});
