/**
 * `deno task try <run-id> <step>`: real CLI processes on a temp KV file try a step of a
 * run on its recorded inputs. Every trial is checked to have written nothing: the whole
 * KV file, key by key with its versionstamp, is the same before and after.
 *
 * @module
 */
import assert from "node:assert/strict";
import { lines, poll, ROOT, runIdOf, Sandbox } from "./_support/harness.ts";

/** The fixture copied under tests/.tmp/, so a test may change its code. */
async function tryableCopy(): Promise<{ module: string; source: string } & AsyncDisposable> {
  const dir = `${ROOT}tests/.tmp/${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(dir, { recursive: true });
  const source = (await Deno.readTextFile(`${ROOT}tests/fixtures/tryable.ts`))
    .replace(`"../../lib/mod.ts"`, `"../../../lib/mod.ts"`)
    .replace(`"./_probe.ts"`, `"../../fixtures/_probe.ts"`);
  const module = `${dir}/tryable.ts`;
  await Deno.writeTextFile(module, source);
  return {
    module,
    source,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** A run of the fixture that failed at `publish`. */
async function failedRun(box: Sandbox, module: string): Promise<string> {
  const failed = await box.cli(["run", module], { env: { PUBLISH_BROKEN: "1" } });
  assert.equal(failed.code, 1, failed.stdout + failed.stderr);
  assert.match(failed.stdout, /step 'publish': Publisher down/);
  return runIdOf(failed.stdout);
}

Deno.test("try fails as the run did, succeeds once fixed, writes nothing, and resume finishes the run", async () => {
  await using box = await Sandbox.create();
  await using copy = await tryableCopy();
  const id = await failedRun(box, copy.module);
  const before = await box.snapshot();

  const broken = await box.cli(["try", id, "publish"], { env: { PUBLISH_BROKEN: "1" } });
  assert.equal(broken.code, 1, broken.stdout + broken.stderr);
  const out = broken.stdout.split("\n");
  assert.match(out[0], /^⚠ trying publish of run .* failed\).*nothing is written.*is real$/);
  assert.match(broken.stdout, /info {2}publishing \{"items":3\}/);
  assert.match(broken.stdout, /✗ publish failed after .*: Publisher down: connection refused/);
  assert.doesNotMatch(broken.stdout, /at .*tryable\.ts/, "a stack without KVFLOW_DEBUG");
  assert.match(broken.stdout, new RegExp(`try again: deno task try ${id} publish$`, "m"));
  assert.deepEqual(await box.snapshot(), before, "a failed try wrote to KV");

  const fixed = await box.cli(["try", id, "publish"]);
  assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
  assert.match(fixed.stdout, /✓ publish succeeded in /);
  // the inputs are the run's checkpoints, the large one read back from its blob
  assert.match(fixed.stdout, /sum: 60,\s+padding: 200000,/);
  assert.match(fixed.stdout, new RegExp(`key: "${id}:publish:try"`));
  assert.match(
    fixed.stdout,
    /artifact 'summary.txt' \(text\/plain; charset=utf-8, 6 bytes\): kept in memory/,
  );
  assert.match(fixed.stdout, new RegExp(`resume the run with: deno task resume ${id}$`, "m"));
  assert.deepEqual(await box.snapshot(), before, "a successful try wrote to KV");

  const tries = lines(await box.ledger(), "publish").filter((l) => l.key.endsWith(":try"));
  assert.deepEqual(tries.map((l) => l.attempt), [1, 1], "a try is the task's next attempt");

  const resumed = await box.cli(["resume", id]);
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  assert.match(resumed.stdout, new RegExp(`✓ run ${id} succeeded`));
  const output = await box.withStore((store) => store.getOutput(id, "publish"));
  assert.deepEqual(output, { sum: 60, padding: 200000, summary: 6, key: `${id}:publish` });
});

Deno.test("try --item runs one item of a fan-out step, and --json prints one object", async () => {
  await using box = await Sandbox.create();
  await using copy = await tryableCopy();
  const id = await failedRun(box, copy.module);
  const before = await box.snapshot();

  const item = await box.cli(["try", id, "each", "--item", "2"]);
  assert.equal(item.code, 0, item.stdout + item.stderr);
  assert.match(item.stdout, /^⚠ trying each\[2\] of run /);
  assert.match(item.stdout, /info {2}item \{"n":3\}/);
  assert.match(item.stdout, /^ {2}output 30$/m);
  assert.match(item.stdout, new RegExp(`idempotency key ${id}:each:2:try`));

  const json = await box.cli(["try", id, "each", "--item", "1", "--json"]);
  assert.equal(json.code, 0, json.stdout + json.stderr);
  const result = JSON.parse(json.stdout);
  assert.equal(result.ok, true);
  assert.equal(result.output, 20);
  assert.equal(result.item, 1);
  assert.deepEqual(result.logs.map((l: { message: string }) => l.message), ["item"]);
  assert.equal(typeof result.durationMs, "number");
  assert.match(json.stderr, /^⚠ trying each\[1\]/, "the warning goes to stderr with --json");

  const failed = await box.cli(["try", id, "publish", "--json"], {
    env: { PUBLISH_BROKEN: "1" },
  });
  assert.equal(failed.code, 1, failed.stdout + failed.stderr);
  const error = JSON.parse(failed.stdout);
  assert.equal(error.ok, false);
  assert.deepEqual(error.error, { name: "Error", message: "Publisher down: connection refused" });
  assert.equal(error.output, undefined);
  assert.deepEqual(await box.snapshot(), before, "a try wrote to KV");
});

Deno.test("try on a running run works beside its holder and leaves its lease untouched", async () => {
  await using box = await Sandbox.create();
  await using copy = await tryableCopy();
  // a long lease: the holder renews it after a third, well after this test
  const env = { GATED: "hold", KVFLOW_LEASE_MS: "120000" };
  const running = box.spawn(["run", copy.module], { env });
  const { 1: id } = await running.waitForOutput(/^▶ run (\S+) ·/m);
  await box.waitForLedger("hold started", (l) => l.step === "hold");
  // every step but `hold` has ended: the holder only waits now
  await poll("announce and nap done", 10_000, async () => {
    const steps = await box.withStore((store) => store.getSteps(id));
    const done = ["announce", "nap"].every((s) => steps.get(s)?.status === "succeeded");
    return done || undefined;
  });
  const lease = await box.withStore((store) => store.getLease(id));
  assert.ok(lease.value, "the run holds a lease");
  const before = await box.snapshot();

  const tried = await box.cli(["try", id, "publish"]);
  assert.equal(tried.code, 0, tried.stdout + tried.stderr);
  assert.match(tried.stdout, /of run .* running\)/);
  assert.match(tried.stdout, new RegExp(`run ${id} is running and goes on by itself`));
  assert.deepEqual(await box.snapshot(), before, "the try wrote to KV");
  const after = await box.withStore((store) => store.getLease(id));
  assert.equal(after.versionstamp, lease.versionstamp);

  await box.openGate("hold");
  const ended = await running.exit();
  assert.equal(ended.code, 0, ended.stdout + ended.stderr);
});

Deno.test("try refuses bad input with one line and exit 2, before any step code runs", async () => {
  await using box = await Sandbox.create();
  await using copy = await tryableCopy();
  const id = await failedRun(box, copy.module);
  const before = await box.snapshot();
  const cases: [string, string[], RegExp][] = [
    ["unknown run", ["try", "20990101-000000-zzzzzz", "publish"], /Unknown run/],
    [
      "unknown step",
      ["try", id, "publsh"],
      /Unknown step 'publsh' of pipeline 'tryable': its steps are load, each/,
    ],
    ["no step", ["try", id], /try takes exactly two arguments: try <run-id> <step>/],
    ["unknown item", ["try", id, "each", "--item", "3"], /Unknown item 3 of step 'each'.*0 to 2/],
    ["fan-out without --item", ["try", id, "each"], /fan-out of 3 items .*--item N \(0 to 2\)/],
    ["malformed --item", ["try", id, "each", "--item", "-1"], /--item/],
    ["--item on a plain step", ["try", id, "publish", "--item", "0"], /not a fan-out step/],
    ["a wait step", ["try", id, "nap"], /Step 'nap' is a wait \(sleep\): it has no body to try/],
    [
      "a need that failed",
      ["try", id, "announce"],
      /the output of 'publish' \(failed\) is missing/,
    ],
  ];
  for (const [what, args, message] of cases) {
    const result = await box.cli(args);
    assert.equal(result.code, 2, `${what}: ${result.stdout}${result.stderr}`);
    assert.equal(result.stdout, "", `${what}: printed ${result.stdout}`);
    assert.equal(result.stderr.trimEnd().split("\n").length, 1, `${what}: ${result.stderr}`);
    assert.match(result.stderr, message, what);
  }
  assert.deepEqual(await box.snapshot(), before, "a refused try wrote to KV");
  assert.equal(
    (await box.ledger()).filter((l) => l.key.endsWith(":try")).length,
    0,
    "step code ran for a refused try",
  );
});

Deno.test("try says what changed when the step's inputs no longer match the pipeline's code", async () => {
  await using box = await Sandbox.create();
  await using copy = await tryableCopy();
  const id = await failedRun(box, copy.module);
  const before = await box.snapshot();
  const changes: [string, string, string[], RegExp][] = [
    [
      "a need dropped",
      copy.source.replace("needs: { each, load },", "needs: { each },"),
      ["try", id, "publish"],
      /Step 'publish' needed \[each, load\] when run .* started, now needs \[each\]/,
    ],
    [
      "the step renamed",
      copy.source.replace(`step("publish"`, `step("publish-all"`),
      ["try", id, "publish"],
      /Step 'publish' of run .* is no longer in pipeline 'tryable': step 'publish-all' was added; step 'publish' was removed/,
    ],
    [
      "a need renamed",
      copy.source.replace(`step("load"`, `step("read"`),
      ["try", id, "each", "--item", "0"],
      /Step 'each' needed \[load\] when run .* started, now needs \[read\]/,
    ],
    [
      "a step added",
      copy.source.replace(
        "const hold =",
        `const audit = step("audit", { needs: { load } }, () => 1);\nconst hold =`,
      ).replace("steps: [load,", "steps: [audit, load,"),
      ["try", id, "audit"],
      /Step 'audit' was added to pipeline 'tryable' after run .* started/,
    ],
  ];
  for (const [what, source, args, message] of changes) {
    assert.notEqual(source, copy.source, what);
    await Deno.writeTextFile(copy.module, source);
    const result = await box.cli(args);
    assert.equal(result.code, 2, `${what}: ${result.stdout}${result.stderr}`);
    assert.equal(result.stderr.trimEnd().split("\n").length, 1, `${what}: ${result.stderr}`);
    assert.match(result.stderr, message, what);
  }
  assert.deepEqual(await box.snapshot(), before, "a refused try wrote to KV");
});
