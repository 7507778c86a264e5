/**
 * Debounce and priority from the trigger, as users meet them: a real engine on a temp KV
 * file served over real HTTP, events sent through the engine, the CLI as a subprocess.
 *
 * @module
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { openEngine, type Pipeline, pipeline, type RunRecord, step } from "../lib/mod.ts";
import { type Service, startService } from "./_support/http.ts";
import { delay, waitFor } from "./_support/helpers.ts";
import { TestClock } from "../lib/testing/mod.ts";
import { Sandbox } from "./_support/harness.ts";

/** What the `digest` runs saw: their params, by run id. */
const seen = new Map<string, unknown>();

/** A pipeline debounced per customer; its one step records the params it ran with. */
function digestPipeline(
  name: string,
  debounce: { quiet: string; maxWait?: string },
): Pipeline<unknown> {
  const record = step("record", (_inputs, ctx) => {
    seen.set(ctx.run.id, ctx.run.params);
    return ctx.run.params.n;
  });
  return pipeline(name, {
    params: z.object({ customer: z.string().optional(), n: z.number().int() }),
    debounce: {
      key: (p: { customer?: string }) => p.customer ?? "",
      quiet: debounce.quiet as "1s",
      maxWait: debounce.maxWait as "1s" | undefined,
    },
    on: {
      "order.paid": {
        params: (data: { customer: string; n: number }) => ({
          customer: data.customer,
          n: data.n,
        }),
        priority: 3,
      },
    },
    steps: [record],
  }) as Pipeline<unknown>;
}

/** A pipeline without flow control, for priorities. */
function plainPipeline(): Pipeline<unknown> {
  return pipeline("plain", {
    schedule: { cron: "0 3 * * *", priority: 4 },
    steps: [step("one", () => 1)],
  }) as Pipeline<unknown>;
}

function start(): Promise<Service> {
  return startService({
    pipelines: [
      digestPipeline("digest", { quiet: "300ms", maxWait: "5s" }),
      digestPipeline("capped", { quiet: "200ms", maxWait: "600ms" }),
      plainPipeline(),
    ],
  });
}

interface Answer extends RunRecord {
  debounced: true;
  joined: boolean;
}

async function trigger(s: Service, name: string, params: unknown): Promise<Answer> {
  return await s.post(`/api/pipelines/${name}/runs`, { params }, 202);
}

async function runsOf(s: Service, name: string): Promise<RunRecord[]> {
  return (await s.engine.store.listRuns({ pipeline: name, limit: 100 })).runs;
}

Deno.test("an HTTP burst gives one run with the last payload, started after the quiet period", async () => {
  await using s = await start();
  const answers: Answer[] = [];
  for (let n = 1; n <= 5; n++) {
    // the third trigger is urgent: the burst keeps its priority, not the last one's
    const priority = n === 3 ? 7 : undefined;
    answers.push(
      await s.post(
        "/api/pipelines/digest/runs",
        { params: { customer: "acme", n }, priority },
        202,
      ),
    );
  }
  assert.deepEqual(answers.map((a) => a.joined), [false, true, true, true, true]);
  assert.deepEqual(answers.map((a) => a.priority ?? 0), [0, 0, 7, 7, 7]);
  const id = answers[0].id;
  assert.ok(answers.every((a) => a.id === id && a.debounced === true));
  assert.equal(answers[4].status, "queued");
  const lastAt = Date.now();
  await s.waitForStatus(id, ["succeeded"]);
  const run = (await s.engine.store.getRun(id))!;
  assert.deepEqual(run.params, { customer: "acme", n: 5 });
  assert.deepEqual(seen.get(id), { customer: "acme", n: 5 });
  assert.ok(run.startedAt! >= lastAt, "it started only once the burst was quiet");
  assert.equal(run.held ?? null, null, "the claim cleared the hold");
  assert.equal((await runsOf(s, "digest")).length, 1, "one run for the burst");
});

Deno.test("maxWait starts a burst's run though triggers never stop", async () => {
  await using s = await start();
  const answers: Answer[] = [];
  const until = Date.now() + 1500;
  let n = 0;
  while (Date.now() < until) {
    answers.push(await trigger(s, "capped", { customer: "acme", n: ++n }));
    await delay(40);
  }
  const ids = [...new Set(answers.map((a) => a.id))];
  assert.ok(ids.length >= 2, `a never-quiet burst was cut by maxWait: ${ids.length} run(s)`);
  for (const id of ids) {
    const joins = answers.filter((a) => a.id === id);
    const first = joins[0];
    assert.equal(first.joined, false);
    // each answer shows the hold: never later than 600 ms after the burst's first trigger
    for (const a of joins) {
      assert.ok(a.dueAt! <= first.createdAt + 600, `due ${a.dueAt! - first.createdAt} ms after`);
    }
  }
  for (const id of ids) await s.waitForStatus(id, ["succeeded"]);
  for (const id of ids) {
    const last = answers.filter((a) => a.id === id).at(-1)!;
    assert.deepEqual(seen.get(id), last.params, "each run ran with its burst's last payload");
  }
  assert.equal((await runsOf(s, "capped")).length, ids.length);
});

Deno.test("two debounce keys give two runs, each with its own last payload", async () => {
  await using s = await start();
  const a1 = await trigger(s, "digest", { customer: "acme", n: 1 });
  const b1 = await trigger(s, "digest", { customer: "bolt", n: 10 });
  const a2 = await trigger(s, "digest", { customer: "acme", n: 2 });
  const b2 = await trigger(s, "digest", { customer: "bolt", n: 20 });
  assert.notEqual(a1.id, b1.id);
  assert.equal(a2.id, a1.id);
  assert.equal(b2.id, b1.id);
  await s.waitForStatus(a1.id, ["succeeded"]);
  await s.waitForStatus(b1.id, ["succeeded"]);
  assert.deepEqual(seen.get(a1.id), { customer: "acme", n: 2 });
  assert.deepEqual(seen.get(b1.id), { customer: "bolt", n: 20 });
  assert.equal((await runsOf(s, "digest")).length, 2);
});

Deno.test("a trigger after the burst's run started begins a new burst", async () => {
  await using s = await start();
  const first = await trigger(s, "digest", { customer: "acme", n: 1 });
  await s.waitForStatus(first.id, ["running", "succeeded"]);
  const second = await trigger(s, "digest", { customer: "acme", n: 2 });
  assert.equal(second.joined, false);
  assert.notEqual(second.id, first.id);
  await s.waitForStatus(second.id, ["succeeded"]);
  assert.deepEqual(seen.get(first.id), { customer: "acme", n: 1 });
  assert.deepEqual(seen.get(second.id), { customer: "acme", n: 2 });
});

Deno.test("a trigger after the quiet period begins a new burst, though no worker took the first run yet", async () => {
  await using s = await startService({
    worker: false,
    pipelines: [digestPipeline("digest", { quiet: "300ms", maxWait: "5s" })],
  });
  const first = await trigger(s, "digest", { customer: "acme", n: 1 });
  const joined = await trigger(s, "digest", { customer: "acme", n: 2 });
  assert.equal(joined.id, first.id);
  assert.equal(joined.joined, true);
  await new Promise((r) => setTimeout(r, 400));
  const second = await trigger(s, "digest", { customer: "acme", n: 3 });
  assert.equal(second.joined, false, "the first burst went quiet");
  assert.notEqual(second.id, first.id);
  const runs = await runsOf(s, "digest");
  assert.deepEqual(
    runs.map((r) => [r.id, r.params]).sort(),
    [[first.id, { customer: "acme", n: 2 }], [second.id, { customer: "acme", n: 3 }]].sort(),
  );
});

Deno.test("Idempotency-Key on a debounced trigger returns the burst's run once", async () => {
  await using s = await start();
  const send = (key: string, n: number) =>
    s.request("POST", "/api/pipelines/digest/runs", {
      body: { params: { customer: "acme", n } },
      headers: { "idempotency-key": key },
    });
  const first = await send("k-1", 1);
  assert.equal(first.status, 202);
  const other = await send("k-2", 2);
  assert.equal(other.status, 202);
  const again = await send("k-1", 1);
  assert.equal(again.status, 200);
  assert.equal(again.headers.get("idempotent-replayed"), "true");
  const id = (first.body as Answer).id;
  assert.equal((again.body as RunRecord).id, id);
  await s.waitForStatus(id, ["succeeded"]);
  assert.deepEqual(seen.get(id), { customer: "acme", n: 2 }, "the replay changed nothing");
});

Deno.test("a debounce key the params cannot give is refused with 422 naming pipeline and field", async () => {
  await using s = await start();
  const r = await s.request("POST", "/api/pipelines/digest/runs", { body: { params: { n: 1 } } });
  assert.equal(r.status, 422, r.text);
  assert.match(r.text, /debounce key of pipeline 'digest'/);
  assert.doesNotMatch(r.text, /at .*\.ts:\d+/, "no stack trace");
  assert.equal((await runsOf(s, "digest")).length, 0);
});

Deno.test("events join a debounced pipeline's burst in their send's commit", async () => {
  await using s = await start();
  const sent = [];
  for (let n = 1; n <= 4; n++) {
    sent.push(await s.engine.send("order.paid", { customer: "acme", n }, { id: `evt-${n}` }));
  }
  const id = sent[0].started[0].id;
  assert.equal(id, "digest:on:evt-1", "the burst's run is named after its first event");
  assert.deepEqual(sent.map((r) => r.started.length), [2, 0, 0, 0]);
  assert.ok(sent.slice(1).every((r) => r.joined.some((run) => run.id === id)));
  const repeat = await s.engine.send("order.paid", { customer: "acme", n: 99 }, { id: "evt-2" });
  assert.equal(repeat.duplicate, true, "event ids stay idempotent");
  await s.waitForStatus(id, ["succeeded"]);
  const run = (await s.engine.store.getRun(id))!;
  assert.deepEqual(run.params, { customer: "acme", n: 4 });
  assert.equal(run.priority, 3, "the trigger's priority");
  assert.equal(run.trigger, "event");
  const page = await s.get("/api/events/evt-3");
  const effect = page.effects.find((e: { runId: string }) => e.runId === id);
  assert.equal(effect.kind, "joined", "evt-3 joined the burst evt-1 began");
  const began = (await s.get("/api/events/evt-1")).effects.find((e: { runId: string }) =>
    e.runId === id
  );
  assert.equal(began.kind, "started");
  assert.equal((await runsOf(s, "digest")).length, 1);
});

Deno.test("priority in the HTTP body reaches the run; out of range is 422", async () => {
  await using s = await startService({ worker: false, pipelines: [plainPipeline()] });
  const ok = await s.post("/api/pipelines/plain/runs", { priority: 7 }, 201);
  assert.equal((await s.engine.store.getRun(ok.id))!.priority, 7);
  const none = await s.post("/api/pipelines/plain/runs", {}, 201);
  assert.equal((await s.engine.store.getRun(none.id))!.priority ?? 0, 0);
  for (const priority of [11, -1, 2.5]) {
    const r = await s.request("POST", "/api/pipelines/plain/runs", { body: { priority } });
    assert.equal(r.status, 422, `priority ${JSON.stringify(priority)}: ${r.text}`);
    assert.match(r.text, /run of 'plain'.*priority must be an integer from 0 to 10/);
  }
  const text = await s.request("POST", "/api/pipelines/plain/runs", { body: { priority: "5" } });
  assert.equal(text.status, 400, "not a number: the body's shape is wrong");
  assert.equal((await runsOf(s, "plain")).length, 2, "nothing created for a refused priority");
  const viaApi = await s.engine.trigger("plain", { priority: 9 });
  assert.equal(viaApi.priority, 9, "the engine API takes a priority too");
  await assert.rejects(
    () => s.engine.trigger("plain", { priority: 11 }),
    /run of 'plain'.*priority must be an integer from 0 to 10/,
  );
  const document = await s.get("/openapi.json");
  const body = document.components.schemas.TriggerRequest;
  assert.match(body.properties.priority.description, /0 to 10/);
});

Deno.test("a schedule's priority reaches its scheduled and backfilled runs", async () => {
  const clock = new TestClock("2026-03-10T02:59:00Z", { auto: false });
  await using engine = await openEngine({
    path: ":memory:",
    queues: false,
    clock,
    pipelines: [plainPipeline()],
    onAlert: () => {},
  });
  try {
    await engine.scheduler.tick(); // the first look: from now on
    clock.set("2026-03-10T03:00:01Z");
    const decisions = await engine.scheduler.tick();
    const created = decisions.filter((d) => d.outcome === "created");
    assert.equal(created.length, 1, JSON.stringify(decisions));
    assert.equal((await engine.store.getRun(created[0].runId!))!.priority, 4);
    const backfill = engine.backfill("plain", "2026-03-08", "2026-03-08");
    await waitFor(
      "the backfill's run",
      async () => (await engine.store.listRuns({ pipeline: "plain" })).runs.length === 2,
    );
    const runs = (await engine.store.listRuns({ pipeline: "plain" })).runs;
    assert.ok(runs.every((r) => r.priority === 4), JSON.stringify(runs.map((r) => r.priority)));
    engine.worker.start();
    const [done] = await backfill;
    assert.equal(done.trigger, "backfill");
  } finally {
    clock.dispose();
  }
});

Deno.test("priority and debounce options are checked when the module loads", () => {
  const one = step("one", () => 1);
  assert.throws(
    () => pipeline("p1", { schedule: { cron: "0 3 * * *", priority: 12 }, steps: [one] }),
    /schedule of pipeline 'p1'.*priority must be an integer from 0 to 10/,
  );
  assert.throws(
    () =>
      pipeline("p2", {
        on: { "x.y": { params: () => ({}), priority: -1 } },
        steps: [step("one", () => 1)],
      }),
    /pipeline 'p2': on\["x\.y"\].*priority/,
  );
  assert.throws(
    () =>
      pipeline("p3", {
        // deno-lint-ignore no-explicit-any
        on: { "x.y": { priority: 1 } as any },
        steps: [step("one", () => 1)],
      }),
    /pipeline 'p3': on\["x\.y"\]: must be a function/,
  );
});

Deno.test("deno task run --priority sets the run's priority; a bad value exits 2", async () => {
  await using box = await Sandbox.create();
  const bad = await Promise.all(
    ["11", "-1", "high", "1.5"].map((p) => box.cli(["run", "example", `--priority=${p}`])),
  );
  for (const result of bad) {
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /Invalid --priority/);
    assert.equal(result.stderr.trim().split("\n").length, 1, "one line, no stack trace");
  }
  const ok = await box.cli(["run", "example", "--priority", "6", "--detach"]);
  assert.equal(ok.code, 0, ok.stderr);
  const run = await box.run(ok.stdout.trim());
  assert.equal(run.priority, 6);
});
