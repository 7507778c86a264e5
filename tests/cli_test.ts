/**
 * The CLI as a user meets it: real `deno run main.ts …` processes on a temp KV file,
 * exit codes, the lines they print, and signals.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FIXTURE_CLI, lines, runIdOf, Sandbox } from "./_support/harness.ts";

Deno.test("run example exits 0 and prints a line per step and 'succeeded'", async () => {
  await using box = await Sandbox.create();
  const result = await box.cli(["run", "example"]);
  assert.equal(result.code, 0, result.stderr);
  const id = runIdOf(result.stdout);
  for (const step of ["fetch-orders", "totals", "exchange-rate", "invoices", "summary"]) {
    assert.match(result.stdout, new RegExp(`✓ ${step} +attempt \\d`), `no line for ${step}`);
  }
  assert.match(result.stdout, /↻ exchange-rate +attempt 1 failed: .* retry in/);
  assert.match(result.stdout, new RegExp(`✓ run ${id} succeeded in `));
});

Deno.test("a failed run exits 1 with the resume command, and resume finishes it", async () => {
  await using box = await Sandbox.create();
  const failed = await box.cli(["run", "example"], { env: { EXAMPLE_FAIL: "invoices" } });
  assert.equal(failed.code, 1, failed.stderr);
  const id = runIdOf(failed.stdout);
  assert.match(failed.stdout, new RegExp(`✗ run ${id} failed after .*step 'invoices'`));
  assert.ok(
    failed.stdout.split("\n").some((l) => l.trim().endsWith(`deno task resume ${id}`)),
    failed.stdout,
  );
  assert.match(failed.stderr, new RegExp(`ALERT: run ${id}`));

  const resumed = await box.cli(["resume", id]);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stdout, new RegExp(`✓ run ${id} succeeded`));
  assert.doesNotMatch(resumed.stdout, /fetch-orders|totals|exchange-rate/, "checkpoints re-ran");
  const status = await box.status(id);
  assert.equal(status.status, "succeeded");
  assert.equal(status.steps.find((s) => s.name === "fetch-orders")?.attempts, 1);
});

Deno.test("usage errors exit 2 with one line on stderr and no stack trace", async () => {
  await using box = await Sandbox.create();
  const done = await box.cli(["run", "example"]);
  assert.equal(done.code, 0, done.stderr);
  const id = runIdOf(done.stdout);
  const cases: [string, string[], RegExp][] = [
    ["unknown command", ["launch", "example"], /Unknown command 'launch'/],
    ["no command", [], /usage/],
    ["unknown option", ["run", "example", "--colour"], /Unknown option '--colour'/],
    ["unknown pipeline", ["run", "nightly-nope"], /Unknown pipeline 'nightly-nope'/],
    ["missing run id (resume)", ["resume"], /resume takes exactly one argument/],
    ["missing run id (status)", ["status"], /status takes exactly one argument/],
    ["unknown run id (status)", ["status", "20990101-000000-zzzzzz"], /Unknown run/],
    ["unknown run id (resume)", ["resume", "20990101-000000-zzzzzz"], /Unknown run/],
    ["malformed run id", ["cancel", "../../etc/passwd"], /Unknown run/],
    // longer than a KV key may be: refused by its shape, before KV sees it
    ["run id of 10,000 characters", ["cancel", "x".repeat(10_000)], /Unknown run: "x+"… \(10000/],
    ["run id of 10,000 characters", ["status", "x".repeat(10_000)], /Unknown run: "x+"… \(10000/],
    ["run id of 10,000 characters", ["rerun", "x".repeat(10_000), "--from", "a"], /Unknown run/],
    ["bad --param format", ["run", "example", "--param", "customers"], /Invalid --param/],
    ["params failing the schema", ["run", "example", "--param", "customers=abc"], /customers/],
    ["param out of range", ["run", "example", "--param", "customers=0"], /customers/],
    ["unknown --param", ["run", "example", "--param", "region=eu"], /unknown param region/],
    ["bad --date", ["run", "example", "--date", "yesterday"], /Invalid date/],
    ["impossible --date", ["run", "example", "--date", "2026-13-01"], /Invalid date/],
    ["bad --params JSON", ["run", "example", "--params", "{customers:"], /Invalid --params/],
    ["--params not an object", ["run", "example", "--params", "[1]"], /expected a JSON object/],
    [
      "module that throws at import",
      ["run", "tests/fixtures/throws_at_import.ts"],
      /Cannot load pipeline module .*FIXTURE_CONFIG has no url/,
    ],
    ["module not found", ["run", "tests/fixtures/missing.ts"], /Cannot load pipeline module/],
    [
      "module without a default pipeline",
      ["run", "tests/fixtures/no_default.ts"],
      /does not default-export a pipeline/,
    ],
    ["rerun without --from", ["rerun", id], /rerun needs --from/],
    ["rerun of an unknown step", ["rerun", id, "--from", "taxes"], /Unknown step 'taxes'/],
    ["resume of a succeeded run", ["resume", id], /already succeeded/],
    ["cancel of a finished run", ["cancel", id], /already succeeded: nothing to cancel/],
    ["bad --status filter", ["runs", "--status", "done"], /Unknown status 'done'/],
    ["bad --limit", ["runs", "--limit", "0"], /Invalid limit/],
  ];
  const results = await Promise.all(cases.map(([, args]) => box.cli(args)));
  for (const [i, [what, args, reason]] of cases.entries()) {
    const { code, stdout, stderr } = results[i];
    const where = `${what}: kvflow ${args.join(" ")}\nstdout: ${stdout}\nstderr: ${stderr}`;
    assert.equal(code, 2, where);
    assert.match(stderr, reason, where);
    assert.doesNotMatch(stderr, /^\s+at |Uncaught|Stack backtrace/m, where);
    if (what !== "no command") {
      assert.equal(stderr.trimEnd().split("\n").length, 1, where);
      assert.match(stderr, /^kvflow: \S/, where);
    }
    assert.equal(stdout, "", where);
  }
  const runs = await box.cli(["runs", "--json"]);
  assert.deepEqual(JSON.parse(runs.stdout).map((r: { id: string }) => r.id), [id]);
});

Deno.test("status, runs and pipelines print JSON a script can read", async () => {
  await using box = await Sandbox.create();
  const ok = await box.cli(["run", "example", "--param", "customers=2", "--date", "2026-03-01"]);
  const failed = await box.cli(["run", "example"], { env: { EXAMPLE_FAIL: "invoices" } });
  const other = await box.cli(["run", "tests/fixtures/five.ts"]);
  const queued = await box.cli(["run", "example", "--detach"]);
  assert.deepEqual([ok.code, failed.code, other.code, queued.code], [0, 1, 0, 0]);
  const [okId, failedId, otherId] = [ok, failed, other].map((r) => runIdOf(r.stdout));
  const queuedId = queued.stdout.trim();

  const status = await box.status(failedId);
  assert.equal(status.id, failedId);
  assert.equal(status.pipeline, "example");
  assert.equal(status.status, "failed");
  assert.deepEqual(status.steps.map((s) => [s.name, s.status]), [
    ["fetch-orders", "succeeded"],
    ["totals", "succeeded"],
    ["exchange-rate", "succeeded"],
    ["invoices", "failed"],
    ["summary", "skipped"],
  ]);
  const rate = status.steps.find((s) => s.name === "exchange-rate")!;
  assert.equal(rate.attempts, 2);
  assert.equal(rate.error, null);
  const invoices = status.steps.find((s) => s.name === "invoices")!;
  assert.match(invoices.error!.message, /3 of 3 items failed/);
  assert.equal(invoices.items, 3);
  assert.equal(status.alerts.length, 1);
  const okStatus = await box.status(okId);
  assert.deepEqual(okStatus.params, { customers: 2 });
  assert.equal(okStatus.logicalDate, "2026-03-01");

  const list = async (...args: string[]) => {
    const result = await box.cli(["runs", "--json", ...args]);
    assert.equal(result.code, 0, result.stderr);
    return (JSON.parse(result.stdout) as { id: string; pipeline: string; status: string }[])
      .map((r) => `${r.id} ${r.pipeline} ${r.status}`);
  };
  assert.deepEqual(await list(), [
    `${queuedId} example queued`,
    `${otherId} five-steps succeeded`,
    `${failedId} example failed`,
    `${okId} example succeeded`,
  ]);
  assert.deepEqual(await list("--pipeline", "five-steps"), [`${otherId} five-steps succeeded`]);
  assert.deepEqual(await list("--status", "succeeded"), [
    `${otherId} five-steps succeeded`,
    `${okId} example succeeded`,
  ]);
  assert.deepEqual(await list("--status", "succeeded", "--pipeline", "example"), [
    `${okId} example succeeded`,
  ]);
  assert.deepEqual(await list("--limit", "2"), [
    `${queuedId} example queued`,
    `${otherId} five-steps succeeded`,
  ]);
  assert.deepEqual(await list("--pipeline", "nothing-here"), []);

  const pipelines = await box.cli(["pipelines", "--json"], { entry: FIXTURE_CLI });
  assert.equal(pipelines.code, 0, pipelines.stderr);
  const byName = new Map(
    (JSON.parse(pipelines.stdout) as {
      name: string;
      steps: { name: string; needs: string[]; fanOut: boolean }[];
      schedule: unknown;
    }[]).map((p) => [p.name, p]),
  );
  assert.deepEqual([...byName.keys()], [
    "example",
    "nightly",
    "refund-credits",
    "regions",
    "region-report",
    "customer-statement",
    "five-steps",
    "fan-six",
    "flaky-once",
    "ticking",
    "chaos",
    "chaos-tick",
    "fenced",
    "deadline-report",
    "await-one",
    "await-pair",
    "t-fail",
    "t-value",
    "t-parked",
    "nap",
    "nap-parked",
    "fan-child",
    "fan-parent",
    "parked",
    "pausable",
    "pause-parked",
  ]);
  const example = byName.get("example")!;
  assert.deepEqual(example.steps.map((s) => s.name), [
    "fetch-orders",
    "totals",
    "exchange-rate",
    "invoices",
    "summary",
  ]);
  assert.deepEqual(example.steps.find((s) => s.name === "invoices")?.needs.toSorted(), [
    "exchange-rate",
    "totals",
  ]);
  assert.equal(example.steps.find((s) => s.name === "invoices")?.fanOut, true);
  assert.ok("schedule" in example);
});

Deno.test("run --detach leaves the run queued; a worker process finishes it and stops on SIGTERM", async () => {
  await using box = await Sandbox.create();
  const detached = await box.cli(["run", "example", "--detach"]);
  assert.equal(detached.code, 0, detached.stderr);
  const id = detached.stdout.trim();
  assert.match(id, /^\d{8}-\d{6}-[a-z0-9]{10}$/);
  assert.match(detached.stderr, /queued/);
  assert.equal((await box.run(id)).status, "queued");

  const worker = box.spawn(["worker"], { env: { KVFLOW_POLL_MS: "100" } });
  await worker.waitForOutput(/worker \S+ started/);
  const run = await box.waitForRun(id, (run) => run.status === "succeeded");
  assert.equal(run.takeovers, 0);
  worker.kill("SIGTERM");
  const exit = await worker.exit();
  assert.equal(exit.code, 0, exit.stderr);
  assert.equal(exit.signal, null);
});

Deno.test("Ctrl-C during a run exits 130 with the resume command; resume re-runs only the interrupted step", async () => {
  await using box = await Sandbox.create();
  const run = box.spawn(["run", "tests/fixtures/five.ts"], { env: { GATED: "s3" } });
  const started = await box.waitForLedger("s3 started", (l) => l.step === "s3");
  const id = started.key.split(":")[0];
  run.kill("SIGINT");
  const exit = await run.exit();
  assert.equal(exit.code, 130, exit.stdout + exit.stderr);
  assert.ok(exit.stdout.includes(`deno task resume ${id}`), exit.stdout);

  const status = await box.status(id);
  assert.equal(status.status, "failed");
  const s3 = status.steps.find((s) => s.name === "s3")!;
  assert.equal(s3.status, "failed");
  assert.equal(s3.error?.name, "Interrupted");
  assert.deepEqual(status.steps.map((s) => s.status), [
    "succeeded",
    "succeeded",
    "failed",
    "pending",
    "pending",
  ]);
  assert.deepEqual(
    status.attempts.filter((a) => a.step === "s3").map((a) => a.status),
    ["interrupted"],
  );

  await box.openGate("s3");
  const resumed = await box.cli(["resume", id]);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stdout, /succeeded/);
  const ledger = await box.ledger();
  for (const step of ["s1", "s2", "s4", "s5"]) {
    assert.equal(lines(ledger, step).length, 1, `${step} ran more than once`);
  }
  const s3Runs = lines(ledger, "s3");
  assert.equal(s3Runs.length, 2);
  assert.deepEqual(s3Runs.map((l) => l.pid === run.pid), [true, false]);
  assert.equal(s3Runs[0].key, s3Runs[1].key);
  assert.equal(lines(ledger, "s3", "done").length, 1);
});

Deno.test({
  name: "a worker process runs a detached run of a pipeline module loaded by path",
  async fn() {
    await using box = await Sandbox.create();
    const detached = await box.cli(["run", "tests/fixtures/five.ts", "--detach"]);
    assert.equal(detached.code, 0, detached.stderr);
    const id = detached.stdout.trim();
    const worker = box.spawn(["worker"], { env: { KVFLOW_POLL_MS: "100" } });
    try {
      await box.waitForRun(id, (run) => run.status === "succeeded", 5000);
    } finally {
      worker.kill("SIGTERM");
      await worker.exit();
    }
  },
});
