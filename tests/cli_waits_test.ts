/**
 * Waiting runs and events through the real CLI, in real processes on a temp KV file:
 * `send` and what it prints, every bad input of `send` (exit 2, one line, nothing
 * stored), a foreground run that parks and is woken by a send from another process,
 * Ctrl-C on a parked run (it detaches and stays waiting), `--detach`, and what `status`
 * and `runs` say about a waiting or sleeping run.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type Exit, runIdOf, Sandbox, type SpawnOptions } from "./_support/harness.ts";

/** The CLI with the waiting fixture pipelines (`tests/fixtures/cli_waits.ts`). */
const WAITS: SpawnOptions = { entry: "tests/fixtures/waits_cli.ts" };

/** The one line a usage error prints, after checking it exited 2 with nothing else. */
function usageLine(result: Exit, what: string): string {
  assert.equal(result.code, 2, `${what}: ${result.stdout}${result.stderr}`);
  assert.equal(result.stdout, "", what);
  const lines = result.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `${what}: ${result.stderr}`);
  assert.doesNotMatch(lines[0], /\bat .*:\d+:\d+/, `${what}: a stack trace`);
  return lines[0];
}

Deno.test("send prints the event id and that no run waits; a repeated id stores nothing and wakes nobody", async () => {
  await using box = await Sandbox.create();
  const first = await box.cli(
    ["send", "doc.approved", "--data", '{"doc":"d1"}', "--id", "approval-d1"],
    WAITS,
  );
  assert.equal(first.code, 0, first.stderr);
  assert.equal(
    first.stdout,
    "event approval-d1 · doc.approved · sent\n" +
      "  no run waits for it now; a wait that starts later still takes it while it is kept\n",
  );
  const before = await box.snapshot();
  const again = await box.cli(
    ["send", "doc.approved", "--data", '{"doc":"other"}', "--id", "approval-d1"],
    WAITS,
  );
  assert.equal(again.code, 0, again.stderr);
  assert.match(
    again.stdout,
    /^event approval-d1 \(doc\.approved\) was sent before, at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: nothing stored, nobody woken\n$/,
  );
  const json = await box.cli(
    ["send", "doc.approved", "--data", '{"doc":"d1"}', "--id", "approval-d1", "--json"],
    WAITS,
  );
  assert.equal(json.code, 0, json.stderr);
  const parsed = JSON.parse(json.stdout);
  assert.equal(parsed.duplicate, true);
  assert.deepEqual(parsed.event.data, { doc: "d1" }, "the first event, not the repeat's data");
  assert.equal(parsed.event.source, "cli");
  assert.deepEqual(parsed.woke, []);
  assert.deepEqual(parsed.started, []);
  assert.deepEqual(await box.snapshot(), before, "a repeat wrote to KV");
});

Deno.test("send of an event that triggers a pipeline prints the run it started", async () => {
  await using box = await Sandbox.create();
  const sent = await box.cli(
    ["send", "order.refunded", "--data", '{"orderId":"o-17"}', "--id", "refund-17"],
    WAITS,
  );
  assert.equal(sent.code, 0, sent.stderr);
  assert.equal(
    sent.stdout,
    "event refund-17 · order.refunded · sent\n" +
      "  started  run refunds:on:refund-17 of pipeline refunds (queued)\n" +
      "  a worker runs what it started: deno task serve (or deno task worker)\n",
  );
  const run = await box.run("refunds:on:refund-17");
  assert.equal(run.trigger, "event");
  assert.equal(run.event, "refund-17");
  assert.deepEqual(run.params, { order: "o-17" });
  const json = await box.cli(
    ["send", "order.refunded", "--data", '{"orderId":"o-18"}', "--json"],
    WAITS,
  );
  const parsed = JSON.parse(json.stdout);
  assert.equal(parsed.duplicate, false);
  assert.match(parsed.started[0].id, /^refunds:on:ev-/);
  assert.equal(parsed.started[0].pipeline, "refunds");
});

Deno.test("bad input to send exits 2 with one line naming what to fix, and stores nothing", async () => {
  await using box = await Sandbox.create();
  // open the KV once so the snapshot below compares a migrated file with itself
  assert.equal((await box.cli(["runs"], WAITS)).code, 0);
  const before = await box.snapshot();
  const cases: [string, string[], RegExp][] = [
    [
      "malformed JSON",
      ["send", "doc.approved", "--data", '{"doc":'],
      /^kvflow: Invalid --data: not JSON \(/,
    ],
    [
      "JSON with a trailing word",
      ["send", "doc.approved", "--data", "{} x"],
      /Invalid --data: not JSON/,
    ],
    [
      "bad name",
      ["send", "doc approved!"],
      /^kvflow: Invalid event name "doc approved!": use 1 to 100 /,
    ],
    ["name too long", ["send", "e".repeat(101)], /^kvflow: Invalid event name "e+": use 1 to 100 /],
    [
      "bad id",
      ["send", "doc.approved", "--id", "a b"],
      /^kvflow: Invalid event id "a b": use 1 to 100 /,
    ],
    ["id too long", ["send", "doc.approved", "--id", "i".repeat(101)], /Invalid event id/],
    [
      "data too large",
      ["send", "doc.approved", "--data", JSON.stringify({ doc: "x".repeat(40_000) })],
      /^kvflow: Event 'doc\.approved' is too large: its data takes 40010 bytes as JSON, at most 32768$/,
    ],
    [
      "payload the triggered pipeline refuses (missing field)",
      ["send", "order.refunded", "--data", "{}"],
      /^kvflow: Event 'order\.refunded' cannot start pipeline 'refunds': Invalid params for 'refunds': order: /,
    ],
    [
      "payload the triggered pipeline refuses (wrong type)",
      ["send", "order.refunded", "--data", '{"orderId":42}'],
      /cannot start pipeline 'refunds': .*order: .*expected string/,
    ],
    ["no event name", ["send"], /^kvflow: send takes exactly one argument: send <event>/],
    ["two event names", ["send", "a", "b"], /send takes exactly one argument/],
    ["--id without a value", ["send", "doc.approved", "--id"], /--id/],
  ];
  const results = await Promise.all(cases.map(([, args]) => box.cli(args, WAITS)));
  for (const [i, result] of results.entries()) {
    const [what, , message] = cases[i];
    assert.match(usageLine(result, what), message, what);
  }
  assert.deepEqual(await box.snapshot(), before, "a refused send wrote to KV");
});

Deno.test("a parked foreground run says what it waits for, and a send from another process finishes it", async () => {
  await using box = await Sandbox.create();
  const run = box.spawn(["run", "approve", "--param", "doc=d7"], WAITS);
  await run.waitForOutput(/… parked: /);
  const id = runIdOf(run.stdout);
  assert.match(
    run.stdout,
    /⏸ decision {17}waiting for event doc\.approved or doc\.rejected with doc = d7 until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in (59m \d+s|1h 0m)\)\n/,
  );
  assert.match(run.stdout, /to let it go on: deno task send doc\.approved --data '\{"doc":"d7"\}'/);

  const status = await box.cli(["status", id], WAITS);
  assert.match(
    status.stdout,
    /status {5}waiting: decision waiting for event doc\.approved or doc\.rejected with doc = d7 until /,
  );
  assert.match(status.stdout, /send {7}deno task send doc\.approved --data '\{"doc":"d7"\}'/);
  assert.match(status.stdout, /⏸ decision {17}waiting {12}1 {4}waiting for event doc\.approved/);
  assert.match(status.stdout, /· publish {18}pending/);
  const json = await box.status(id, WAITS);
  assert.equal(json.status, "waiting");
  assert.equal(json.waitingFor?.kind, "event");
  assert.deepEqual(json.waitingFor?.events, ["doc.approved", "doc.rejected"]);
  assert.equal(json.waitingFor?.field, "doc");
  assert.equal(json.waitingFor?.value, "d7");
  const decision = json.steps.find((s) => s.name === "decision") as unknown as {
    status: string;
    wait: { kind: string; until: number };
  };
  assert.equal(decision.status, "waiting");
  assert.equal(decision.wait.kind, "event");
  assert.equal(json.dueAt, decision.wait.until);
  const runs = await box.cli(["runs"], WAITS);
  assert.match(runs.stdout, new RegExp(`${id} +approve +waiting .* decision waiting for event`));
  const runsJson = JSON.parse((await box.cli(["runs", "--json"], WAITS)).stdout);
  assert.equal(runsJson[0].waitingFor.value, "d7");
  await box.withStore(async (store) => {
    assert.equal((await store.getLease(id)).value, null, "a parked run holds a lease");
  });

  const sent = await box.cli(["send", "doc.approved", "--data", '{"doc":"d7"}'], WAITS);
  const sentAt = Date.now();
  assert.equal(sent.code, 0, sent.stderr);
  assert.match(sent.stdout, new RegExp(`^  woke {5}run ${id}, step decision$`, "m"));
  const end = await run.exit();
  const took = Date.now() - sentAt;
  assert.equal(end.code, 0, end.stdout + end.stderr);
  assert.match(end.stdout, /✓ decision +attempt 1/);
  assert.match(end.stdout, /✓ publish +attempt 1/);
  assert.match(end.stdout, new RegExp(`✓ run ${id} succeeded in `));
  assert.ok(took < 3000, `the run took ${took} ms to finish after the send`);
  const output = await box.withStore((store) => store.getOutput(id, "publish"));
  assert.deepEqual(output, { published: true });
});

Deno.test("Ctrl-C on a parked foreground run detaches: exit 0, the run stays waiting, a worker finishes it after the send", async () => {
  await using box = await Sandbox.create();
  const run = box.spawn(["run", "approve", "--param", "doc=d9"], WAITS);
  await run.waitForOutput(/… parked: /);
  const id = runIdOf(run.stdout);
  run.kill("SIGINT");
  const end = await run.exit();
  assert.equal(end.code, 0, end.stdout + end.stderr);
  assert.match(
    end.stdout,
    new RegExp(
      `⏸ detached from run ${id}: it is waiting: decision waiting for event doc\\.approved`,
    ),
  );
  assert.match(end.stdout, new RegExp(`follow it with: deno task status ${id}`));
  assert.match(end.stdout, /deno task serve/);
  assert.doesNotMatch(end.stdout, /✗|resume with/);
  const parked = await box.run(id);
  assert.equal(parked.status, "waiting");
  assert.equal(parked.error, null);
  assert.equal(parked.waitingFor?.step, "decision");

  const worker = box.spawn(["worker"], { ...WAITS, env: { KVFLOW_POLL_MS: "50" } });
  const sent = await box.cli(
    ["send", "doc.rejected", "--data", '{"doc":"d9"}', "--id", "no-d9"],
    WAITS,
  );
  assert.match(sent.stdout, new RegExp(`woke {5}run ${id}, step decision`));
  const done = await box.waitForRun(id, (r) => r.status === "succeeded", 15_000);
  assert.equal(done.status, "succeeded");
  assert.deepEqual(
    await box.withStore((store) => store.getOutput(id, "publish")),
    { published: false },
  );
  worker.kill("SIGTERM");
  await worker.exit();
});

Deno.test("a sleeping run: the foreground says until when, status and runs show it, Ctrl-C leaves it sleeping", async () => {
  await using box = await Sandbox.create();
  const run = box.spawn(["run", "nap"], WAITS);
  await run.waitForOutput(/… parked: /);
  const id = runIdOf(run.stdout);
  assert.match(run.stdout, /⏸ rest {21}sleeping until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in /);
  assert.doesNotMatch(run.stdout, /to let it go on/, "a sleep has no event to send");
  const status = await box.cli(["status", id], WAITS);
  assert.match(status.stdout, /status {5}waiting: rest sleeping until /);
  assert.match(status.stdout, /⏸ rest {21}waiting {12}1 {4}sleeping until /);
  assert.doesNotMatch(status.stdout, /send {7}/);
  const runs = await box.cli(["runs", "--status", "waiting"], WAITS);
  assert.match(runs.stdout, new RegExp(`${id} +nap +waiting .* rest sleeping until `));
  run.kill("SIGINT");
  const end = await run.exit();
  assert.equal(end.code, 0, end.stdout + end.stderr);
  assert.match(end.stdout, /⏸ detached from run .*: it is waiting: rest sleeping until /);
  assert.equal((await box.run(id)).status, "waiting");
});

Deno.test("run --detach returns at once with the run id and how to follow it", async () => {
  await using box = await Sandbox.create();
  const started = Date.now();
  const result = await box.cli(["run", "approve", "--detach", "--param", "doc=d3"], WAITS);
  assert.equal(result.code, 0, result.stderr);
  const id = result.stdout.trim();
  assert.match(id, /^\d{8}-\d{6}-[a-z0-9]{10}$/);
  assert.match(result.stderr, new RegExp(`deno task status ${id}`));
  assert.ok(Date.now() - started < 10_000);
  const run = await box.run(id);
  assert.equal(run.status, "queued");
  // the event may come first: the wait takes it when a worker gets to the run
  const sent = await box.cli(["send", "doc.approved", "--data", '{"doc":"d3"}'], WAITS);
  assert.match(sent.stdout, /no run waits for it now/);
  const worker = box.spawn(["worker"], { ...WAITS, env: { KVFLOW_POLL_MS: "50" } });
  const done = await box.waitForRun(id, (r) => r.status === "succeeded", 15_000);
  assert.equal(done.status, "succeeded");
  worker.kill("SIGTERM");
  await worker.exit();
});
