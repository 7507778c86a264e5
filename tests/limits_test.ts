/**
 * KV's limits (64 KiB a value, 2 KiB a key, 1,000 mutations, 800 KiB and 80 KiB of keys a
 * commit) meet kvflow at scale: large outputs and artifacts, a fan-out of 10,000 items,
 * names and ids of the longest allowed kind, oversized params, and 100,000 runs of
 * history. Each works, or is refused with a clear error before anything is stored —
 * never a raw KV error in the middle of a run.
 *
 * `KVFLOW_LIMITS_RUNS` sets the size of the history (default 100,000).
 *
 * @module
 */
import assert from "node:assert/strict";
import process from "node:process";
import { z } from "zod";
import {
  type ArtifactRef,
  type BlobRef,
  type Engine,
  openEngine,
  pipeline,
  type RunRecord,
  step,
  UsageError,
} from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import * as keys from "../lib/kv/keys.ts";
import { Metrics } from "../lib/http/metrics.ts";
import { MAX_ITEMS, MAX_NAME_LENGTH } from "../lib/define/step.ts";
import { MAX_EVENT_NAME_LENGTH } from "../lib/define/wait.ts";
import { MAX_FLOW_KEY_LENGTH, MAX_FLOW_MAX } from "../lib/define/flow.ts";
import { MAX_CORRELATION_LENGTH, MAX_EVENT_ID_LENGTH } from "../lib/model/events.ts";
import {
  CHUNK_BYTES,
  KV_KEY_BYTES,
  MAX_RUN_RECORD_BYTES,
  MAX_VALUE_BYTES,
} from "../lib/kv/limits.ts";
import { MAX_IDEMPOTENCY_KEY_LENGTH, MAX_RUN_ID_LENGTH } from "../lib/model/run_id.ts";
import { bigOutput, MiB, pattern, sha256 } from "./fixtures/limits_big.ts";
import { ROOT } from "./_support/harness.ts";
import { allDue, auditBlobs, tempKv, waitFor } from "./_support/helpers.ts";

/** KV's own limits of one atomic commit. */
const KV_COMMIT = { mutations: 1000, bytes: 800 * 1024, keyBytes: 80 * 1024 };

/**
 * The commits that wrote the entries under `prefix`, told apart by versionstamp (every
 * entry of one commit has the commit's versionstamp), each with what KV counts against
 * its limits: mutations, bytes (a set's key counts twice) and key bytes.
 */
async function commitsUnder(
  kv: Deno.Kv,
  prefix: Deno.KvKey,
): Promise<Map<string, { mutations: number; bytes: number; keyBytes: number }>> {
  const commits = new Map<string, { mutations: number; bytes: number; keyBytes: number }>();
  for await (const e of kv.list<Uint8Array>({ prefix })) {
    const c = commits.get(e.versionstamp) ?? { mutations: 0, bytes: 0, keyBytes: 0 };
    const keyBytes = keys.keySize(e.key);
    c.mutations++;
    c.bytes += e.value.byteLength + 2 * keyBytes;
    c.keyBytes += keyBytes;
    commits.set(e.versionstamp, c);
  }
  return commits;
}

function assertWithinCommitLimits(
  what: string,
  commits: Map<string, { mutations: number; bytes: number; keyBytes: number }>,
): void {
  for (const [stamp, c] of commits) {
    assert.ok(
      c.mutations <= KV_COMMIT.mutations && c.bytes <= KV_COMMIT.bytes &&
        c.keyBytes <= KV_COMMIT.keyBytes,
      `${what}: commit ${stamp} holds ${c.mutations} chunks, ${c.bytes} bytes, ${c.keyBytes} key bytes`,
    );
  }
}

Deno.test("outputs of 1 MiB and 20 MiB are chunked over commits within KV's limits and read back byte-exact", async () => {
  const one = pattern(MiB, 1);
  const twenty = pattern(20 * MiB, 2);
  const [oneSha, twentySha] = [await sha256(one), await sha256(twenty)];
  const small = step("one-mib", () => pattern(MiB, 1));
  const large = step("twenty-mib", () => pattern(20 * MiB, 2));
  const check = step("check", { needs: { small, large } }, async ({ small, large }) => ({
    small: [small.byteLength, await sha256(small)],
    large: [large.byteLength, await sha256(large)],
  }));
  const p = pipeline("limits-outputs", { steps: [small, large, check] });
  await using file = await tempKv();
  await using engine = await openEngine({ path: file.path, pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");

  assert.deepEqual(await engine.store.getOutput(run.id, "check"), {
    small: [MiB, oneSha],
    large: [20 * MiB, twentySha],
  });
  const steps = await engine.store.getSteps(run.id);
  for (
    const [name, bytes, sha] of [["one-mib", MiB, oneSha], [
      "twenty-mib",
      20 * MiB,
      twentySha,
    ]] as const
  ) {
    const stored = await engine.store.getOutput(run.id, name) as Uint8Array;
    assert.ok(stored instanceof Uint8Array);
    assert.equal(stored.byteLength, bytes);
    assert.equal(await sha256(stored), sha, `${name} read back through the store`);

    const output = steps.get(name)!.output!;
    assert.ok("blob" in output, `${name} is stored by reference`);
    const blob: BlobRef = output.blob;
    assert.equal(blob.chunks, Math.ceil(blob.size / CHUNK_BYTES));
    const commits = await commitsUnder(engine.kv, keys.blobPrefix(run.id, blob.id));
    assertWithinCommitLimits(name, commits);
    if (name === "twenty-mib") {
      assert.ok(commits.size >= 25, `20 MiB took ${commits.size} commits`);
      console.log(`20 MiB output: ${blob.chunks} chunks in ${commits.size} commits`);
    }
    // the checkpoint that refers to the chunks came after every one of them
    const checkpoint = await engine.kv.get(keys.step(run.id, name));
    for (const stamp of commits.keys()) assert.ok(stamp < checkpoint.versionstamp!);
  }
});

Deno.test("a worker killed between the chunk commits of a 20 MiB output leaves no half value visible; the run then completes and its partial chunks are reclaimed", async () => {
  await using file = await tempKv();
  let runId: string;
  {
    await using engine = await openEngine({ path: file.path, pipelines: [bigOutput] });
    runId = (await engine.store.createRun(bigOutput)).id;
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tests/fixtures/limits_big.ts", file.path, runId],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const kv = await Deno.openKv(file.path);
  const chunks = Math.ceil((20 * MiB + 16) / CHUNK_BYTES);
  let seen = -1;
  try {
    // Kill once at least one chunk commit landed and most are still to come.
    await waitFor("a partly written blob", async () => {
      for await (
        const e of kv.list({ prefix: ["kvflow", "blob", runId] }, {
          reverse: true,
          limit: 1,
        })
      ) seen = e.key[4] as number;
      return seen >= 11 && seen < chunks / 2;
    }, 60_000);
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await stderr;
  }
  let orphan: string;
  {
    const store = new Store(kv, { queues: false });
    const produce = (await store.getSteps(runId)).get("produce")!;
    assert.equal(produce.status, "running", "killed after the start marker, before the checkpoint");
    assert.equal(produce.output, undefined);
    await assert.rejects(store.getOutput(runId, "produce"), /has no output yet/);
    const blobs = new Map<string, number>();
    for await (const e of kv.list({ prefix: ["kvflow", "blob", runId] })) {
      blobs.set(e.key[3] as string, (blobs.get(e.key[3] as string) ?? 0) + 1);
    }
    assert.equal(blobs.size, 1);
    const [[id, count]] = [...blobs];
    assert.ok(count > 0 && count < chunks, `${count} of ${chunks} chunks were written`);
    orphan = id;
    const marker = await kv.get(keys.blobPending(runId, id));
    assert.deepEqual(marker.value, { step: "produce", item: -1, chunks }, "marked as pending");
    kv.close();
  }

  await using engine = await openEngine({ path: file.path, pipelines: [bigOutput] });
  assert.equal((await engine.runToEnd(runId)).status, "succeeded");
  const expected = await sha256(pattern(20 * MiB, 5));
  assert.deepEqual(await engine.store.getOutput(runId, "consume"), {
    size: 20 * MiB,
    sha256: expected,
  });
  const produce = (await engine.store.getSteps(runId)).get("produce")!;
  assert.equal(produce.attempt, 2, "the killed attempt ran again");
  assert.ok(produce.output && "blob" in produce.output);
  assert.notEqual(produce.output.blob.id, orphan, "the checkpoint refers to a whole blob");
  assert.equal(
    await sha256(await engine.store.getOutput(runId, "produce") as Uint8Array),
    expected,
  );
  const blobs = await auditBlobs(engine.kv);
  assert.deepEqual(blobs.unreferenced, [], "the killed attempt's chunks were reclaimed");
  assert.deepEqual(blobs.pending, []);
  assert.deepEqual(blobs.missing, []);
  assert.ok(!blobs.stored.has(`${runId}/${orphan}`));
});

Deno.test("a 20 MiB artifact is stored within KV's limits and read back byte-exact", async () => {
  const data = pattern(20 * MiB, 3);
  const expected = await sha256(data);
  const render = step("render", (_inputs, ctx) => ctx.artifact("big.bin", pattern(20 * MiB, 3)));
  const read = step("read", { needs: { render } }, async ({ render }, ctx) => {
    const bytes = await ctx.readArtifact(render);
    return [bytes.byteLength, await sha256(bytes)];
  });
  const p = pipeline("limits-artifact", { steps: [render, read] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(await engine.store.getOutput(run.id, "read"), [20 * MiB, expected]);
  const ref = await engine.store.getOutput(run.id, "render") as ArtifactRef;
  assert.equal(ref.size, 20 * MiB);
  const { meta, bytes } = await engine.store.readArtifact(run.id, "big.bin");
  assert.equal(bytes.byteLength, 20 * MiB);
  assert.equal(await sha256(bytes), expected);
  const commits = await commitsUnder(engine.kv, keys.blobPrefix(run.id, meta.blob.id));
  assertWithinCommitLimits("artifact", commits);
  const metaEntry = await engine.kv.get(keys.artifact(run.id, "big.bin"));
  for (const stamp of commits.keys()) assert.ok(stamp < metaEntry.versionstamp!);
});

Deno.test("an output larger than any limit fails its step at once with a clear error, storing nothing", async () => {
  let calls = 0;
  const huge = step("huge", { retry: { attempts: 3, delay: "5ms" } }, () => {
    calls++;
    return new Uint8Array(MAX_VALUE_BYTES + 1);
  });
  const p = pipeline("limits-huge", { steps: [huge] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.equal(calls, 1, "retrying cannot make it smaller");
  const error = (await engine.store.getSteps(run.id)).get("huge")!.error!;
  assert.equal(error.name, "NonRetryableError");
  assert.match(error.message, /^Value too large to store: \d+ bytes \(limit 268435456\)/);
  for await (const _ of engine.kv.list({ prefix: ["kvflow", "blob", run.id] })) {
    assert.fail("no chunk of the refused value is stored");
  }
});

/**
 * An output that keeps changing after its step returned it, as a getter over a buffer
 * that something else fills: small the two times kvflow reads it to measure it (its
 * serializability probe and its size estimate), 80 KB when the checkpoint's commit
 * serializes it. No check before the commit can see that; KV refuses the record.
 */
function growingOutput(text: string): Record<string, unknown> {
  let reads = 0;
  return {
    sent: 2,
    get failures() {
      return ++reads <= 2 ? [] : [text + "x".repeat(80_000)];
    },
  };
}

Deno.test("an output with a large Error in it is measured as KV stores it, and kept", async () => {
  const failures = [new Error("SMTP said: " + "x".repeat(40_000), { cause: /y{20000}/ })];
  const report = step("report", () => ({ sent: 2, failures }));
  const p = pipeline("limits-error-output", { steps: [report] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  const record = (await engine.store.getSteps(run.id)).get("report")!;
  assert.ok(record.output && "blob" in record.output, "stored as a blob, not inline");
  const output = await engine.store.getOutput(run.id, "report") as { failures: Error[] };
  assert.equal(output.failures[0].message, failures[0].message);
  assert.equal(String(output.failures[0].cause), String(failures[0].cause));
});

Deno.test("an output KV refuses at the checkpoint (it grew after it was measured) fails its step once, naming the limit, and the run ends failed", async () => {
  let calls = 0;
  let mailed = 0;
  const report = step("report", { retry: { attempts: 3, delay: "5ms" } }, (_inputs, ctx) => {
    calls++;
    ctx.log.info("building the report");
    return growingOutput("SMTP said: ");
  });
  const mail = step("mail", { needs: { report } }, () => ++mailed);
  const side = step("side", () => "independent");
  const p = pipeline("limits-refused", { steps: [report, mail, side] });
  const alerts: unknown[] = [];
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    leaseMs: 300,
    onAlert: (a) => alerts.push(a),
  });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.equal(calls, 1, "KV would refuse a retry the same way");
  assert.equal(ended.error?.step, "report");
  assert.match(
    ended.error!.message,
    /^Step 'report' could not be checkpointed: KV refused the commit \(Value too large \(max 65536 bytes\)\)/,
  );
  assert.equal(ended.takeovers, 0, "the run never waited out a lease");
  assert.equal(alerts.length, 1);
  const steps = await engine.store.getSteps(run.id);
  const record = steps.get("report")!;
  assert.equal(record.status, "failed");
  assert.equal(record.error?.name, "KvLimitError");
  assert.equal(record.error?.retryable, false);
  assert.equal(record.crashes, undefined);
  assert.equal(record.output, undefined);
  assert.equal(steps.get("mail")!.status, "skipped");
  assert.equal(steps.get("side")!.status, "succeeded");
  assert.equal(mailed, 0);
  const attempts = (await engine.store.getAttempts(run.id)).filter((a) => a.step === "report");
  assert.deepEqual(attempts.map((a) => [a.n, a.status]), [[1, "failed"]]);
  assert.equal(attempts[0].error?.name, "KvLimitError");
  assert.deepEqual(attempts[0].logs.map((l) => l.message), ["building the report"]);
});

Deno.test("a fan-out item whose output KV refuses fails alone; the items that checkpointed keep their outputs and do not run again", async () => {
  const calls = [0, 0, 0];
  const items = step("items", {
    items: () => [0, 1, 2],
    concurrency: 1,
    retry: { attempts: 2, delay: "5ms" },
  }, (i) => {
    calls[i]++;
    return i === 1 ? growingOutput("y") : { i };
  });
  const p = pipeline("limits-refused-item", { steps: [items] });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [p],
    leaseMs: 300,
    onAlert: () => {},
  });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.match(
    ended.error!.message,
    /^1 of 3 items failed; item 1: Item 1 of step 'items' could not be checkpointed: KV refused the commit \(Value too large/,
  );
  assert.deepEqual(calls, [1, 1, 1]);
  const stored = await engine.store.getItems(run.id, "items");
  assert.deepEqual([...stored.values()].map((r) => r.status), ["succeeded", "failed", "succeeded"]);
  assert.equal(stored.get(1)!.error?.retryable, false);

  // resumable like any failure: a resume runs the failed item again, and only it
  await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.deepEqual(calls, [1, 2, 1]);
});

/** CPU time this process has used (every thread, KV's included), µs. */
function cpuMicros(): number {
  const { user, system } = process.cpuUsage();
  return user + system;
}

function fanPipeline(n: number) {
  const list = step("list", () => Array.from({ length: n }, (_, i) => i));
  const each = step("each", {
    needs: { list },
    items: ({ list }) => list,
    concurrency: 8,
  }, (i, ctx) => ({ i, key: ctx.idempotencyKey }));
  const total = step("total", { needs: { each } }, ({ each }) => ({
    count: each.length,
    inOrder: each.every((o, i) => o.i === i),
  }));
  return pipeline(`limits-fan-${n}`, { steps: [list, each, total], concurrency: 8 });
}

/**
 * Runs a fan-out of `n` items on a fresh in-memory KV. Costs are CPU time, which the
 * other processes of a busy machine do not inflate as they do wall time.
 */
async function fanOut(n: number, check?: (engine: Engine, runId: string) => Promise<void>) {
  const p = fanPipeline(n);
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  const [cpu, wall] = [cpuMicros(), performance.now()];
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  const result = {
    cpuPerItem: (cpuMicros() - cpu) / n,
    wallPerItem: (performance.now() - wall) * 1000 / n,
  };
  await check?.(engine, run.id);
  return result;
}

Deno.test("a fan-out of 10,000 items completes with one checkpoint per item, its cost per item not growing with the items", async () => {
  await fanOut(1000); // warm-up: compiled code for every measurement
  const [one, two] = [await fanOut(1000), await fanOut(1000)];
  const small = one.cpuPerItem < two.cpuPerItem ? one : two;
  const n = 10_000;
  const large = await fanOut(n, async (engine, runId) => {
    assert.deepEqual(await engine.store.getOutput(runId, "total"), { count: n, inOrder: true });
    const items = await engine.store.getItems(runId, "each");
    assert.equal(items.size, n);
    for (const [index, record] of items) {
      assert.ok(record.status === "succeeded" && record.attempt === 1, `item ${index}`);
    }
    const attempts = (await engine.store.getAttempts(runId)).filter((a) => a.step === "each");
    assert.equal(attempts.length, n, "one attempt, and one checkpoint, per item");
    assert.equal(new Set(attempts.map((a) => a.item)).size, n);
    assert.equal((await engine.store.getSteps(runId)).get("each")!.items, n);
  });
  console.log(
    `fan-out, µs per item (CPU / wall): 1,000 items ${small.cpuPerItem.toFixed(0)} / ` +
      `${small.wallPerItem.toFixed(0)}, 10,000 items ${large.cpuPerItem.toFixed(0)} / ` +
      `${large.wallPerItem.toFixed(0)}`,
  );
  // Not a speed target (bench/ measures those): a guard against work per finished item
  // that grows with the items, which made an item of 10,000 cost 20× one of 1,000 (1.3–1.5
  // ms against 70 µs). CPU time, not wall time, so other processes do not count; the
  // margin is wide, so a garbage collection does not decide it either.
  assert.ok(
    large.cpuPerItem < 4 * small.cpuPerItem,
    `an item of 10,000 costs ${(large.cpuPerItem / small.cpuPerItem).toFixed(1)}× one of 1,000`,
  );
});

Deno.test(`a fan-out whose items return more than ${MAX_ITEMS} fails clearly before any item is stored`, async () => {
  let calls = 0;
  const list = step("list", () => MAX_ITEMS + 1);
  const each = step("each", {
    needs: { list },
    items: ({ list }) => Array.from({ length: list }, (_, i) => i),
  }, (i) => {
    calls++;
    return i;
  });
  const p = pipeline("limits-too-many", { steps: [list, each] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.match(
    ended.error!.message,
    new RegExp(
      `items of step 'each' returned ${
        MAX_ITEMS + 1
      } items: a fan-out step may have at most ${MAX_ITEMS}`,
    ),
  );
  assert.equal(calls, 0);
  assert.equal((await engine.store.getItems(run.id, "each")).size, 0, "no item is stored");
  const record = (await engine.store.getSteps(run.id)).get("each")!;
  assert.equal(record.items, undefined);
  assert.equal(record.error?.retryable, false);
});

/** A name of exactly `length` characters. */
function nameOf(prefix: string, length = MAX_NAME_LENGTH): string {
  return `${prefix}-`.padEnd(length, "x");
}

Deno.test("every key kvflow builds from the longest names and ids fits KV's 2 KiB, and keySize counts as KV does", async () => {
  const runId = "r".repeat(MAX_RUN_ID_LENGTH);
  const name = nameOf("n");
  // artifact names and idempotency keys may use any character: three UTF-8 bytes each
  const artifact = "€".repeat(200);
  const idempotency = "€".repeat(MAX_IDEMPOTENCY_KEY_LENGTH);
  const at = Number.MAX_SAFE_INTEGER;
  const eventId = "e".repeat(MAX_EVENT_ID_LENGTH);
  const eventName = "n".repeat(MAX_EVENT_NAME_LENGTH);
  const field = "f".repeat(64);
  // a correlation value may use any character: three UTF-8 bytes each
  const correlation = "€".repeat(MAX_CORRELATION_LENGTH);
  // a limit's key may use any character; its scope is ASCII
  const flowKey = "€".repeat(MAX_FLOW_KEY_LENGTH);
  const scope = "s".repeat(100);
  const built: Record<string, Deno.KvKey> = {
    run: keys.run(runId),
    runsByTime: keys.runsByTime(at, runId),
    runsByTimePrefix: keys.runsByTimePrefix(),
    runsByPipeline: keys.runsByPipeline(name, at, runId),
    runsByPipelinePrefix: keys.runsByPipelinePrefix(name),
    runsByStatus: keys.runsByStatus("cancelled", at, runId),
    runsByStatusPrefix: keys.runsByStatusPrefix("cancelled"),
    runsByPipelineStatus: keys.runsByPipelineStatus(name, "cancelled", at, runId),
    runsByPipelineStatusPrefix: keys.runsByPipelineStatusPrefix(name, "cancelled"),
    allRunsByPipelinePrefix: keys.allRunsByPipelinePrefix(),
    runCount: keys.runCount(name, "cancelled"),
    runCountPrefix: keys.runCountPrefix(),
    schema: keys.schema(),
    probe: keys.probe(),
    lease: keys.lease(runId),
    leasePrefix: keys.leasePrefix(),
    due: keys.due(at, runId),
    duePrefix: keys.duePrefix(),
    step: keys.step(runId, name),
    stepPrefix: keys.stepPrefix(runId),
    item: keys.item(runId, name, MAX_ITEMS),
    itemPrefix: keys.itemPrefix(runId, name),
    itemRunPrefix: keys.itemRunPrefix(runId),
    attempt: keys.attempt(runId, name, MAX_ITEMS, 1000),
    attemptPrefix: keys.attemptPrefix(runId),
    blobChunk: keys.blobChunk(runId, crypto.randomUUID(), 5000),
    blobPrefix: keys.blobPrefix(runId, crypto.randomUUID()),
    blobPending: keys.blobPending(runId, crypto.randomUUID()),
    blobPendingPrefix: keys.blobPendingPrefix(runId),
    artifact: keys.artifact(runId, artifact),
    artifactPrefix: keys.artifactPrefix(runId),
    alert: keys.alert(runId, at),
    alertPrefix: keys.alertPrefix(runId),
    alertOutbox: keys.alertOutbox(runId, at),
    alertOutboxPrefix: keys.alertOutboxPrefix(),
    idempotency: keys.idempotency(name, idempotency),
    counter: keys.counter("lease_takeovers"),
    allAlertsPrefix: keys.allAlertsPrefix(),
    activeRun: keys.activeRun(name, runId),
    activeRunPrefix: keys.activeRunPrefix(name),
    schedule: keys.schedule(name),
    event: keys.event(eventId),
    eventsByTime: keys.eventsByTime(at, eventId),
    eventsByTimePrefix: keys.eventsByTimePrefix(),
    eventIndex: keys.eventIndex(eventName, field, correlation, at, eventId),
    eventIndexPrefix: keys.eventIndexPrefix(eventName, field, correlation),
    eventHead: keys.eventHead(eventName, field, correlation),
    eventHeadPrefix: keys.eventHeadPrefix(),
    waitEntry: keys.waitEntry(eventName, field, correlation, runId, name, MAX_ITEMS),
    waitEntryPrefix: keys.waitEntryPrefix(eventName, field, correlation),
    inbox: keys.inbox(runId, name, MAX_ITEMS),
    inboxPrefix: keys.inboxPrefix(runId),
    bell: keys.bell(runId),
    eventEffect: keys.eventEffect(eventId, runId, name, MAX_ITEMS),
    eventEffectPrefix: keys.eventEffectPrefix(eventId),
    eventOutbox: keys.eventOutbox(eventId),
    eventOutboxPrefix: keys.eventOutboxPrefix(),
    allEventEffectsPrefix: keys.allEventEffectsPrefix(),
    alertOutboxRunPrefix: keys.alertOutboxRunPrefix(runId),
    pruning: keys.pruning(runId),
    pruningPrefix: keys.pruningPrefix(),
    // a range: its end is the longer of its two keys
    childRunsRange: keys.childRunsRange(runId).end,
    blobRunPrefix: keys.blobRunPrefix(runId),
    allIdempotencyPrefix: keys.allIdempotencyPrefix(),
    prunedCount: keys.prunedCount(name),
    prunedCountPrefix: keys.prunedCountPrefix(),
    prunedAlertCount: keys.prunedAlertCount(name, "deadline"),
    prunedAlertCountPrefix: keys.prunedAlertCountPrefix(),
    deadlineMiss: keys.deadlineMiss(name, at),
    deadlineMissPrefix: keys.deadlineMissPrefix(name),
    runPause: keys.runPause(runId),
    pipelinePause: keys.pipelinePause(name),
    pipelinePausePrefix: keys.pipelinePausePrefix(),
    slot: keys.slot(scope, flowKey, MAX_FLOW_MAX),
    slotPrefix: keys.slotPrefix(scope, flowKey),
    allSlotsPrefix: keys.allSlotsPrefix(),
    throttleSlot: keys.throttleSlot(scope, flowKey, MAX_FLOW_MAX),
    throttlePrefix: keys.throttlePrefix(scope, flowKey),
    allThrottlePrefix: keys.allThrottlePrefix(),
    limitQueue: keys.limitQueue(scope, flowKey, -at, runId),
    limitQueuePrefix: keys.limitQueuePrefix(scope, flowKey),
    limitQueueMark: keys.limitQueueMark(scope, flowKey),
    limitRelease: keys.limitRelease(scope, flowKey),
    allLimitReleasePrefix: keys.allLimitReleasePrefix(),
    debounce: keys.debounce(name, flowKey),
    debouncePrefix: keys.debouncePrefix(name),
  };
  const builders = Object.entries(keys).filter(([k, v]) =>
    // keySize measures a key, taskOf and isLimitQueueMark read one: none builds one
    typeof v === "function" && k !== "keySize" && k !== "taskOf" && k !== "isLimitQueueMark"
  );
  assert.deepEqual(
    builders.map(([k]) => k).sort(),
    Object.keys(built).sort(),
    "a new key builder needs its longest case here",
  );
  const sizes = Object.entries(built).map(([k, key]) => [k, keys.keySize(key)] as const);
  const [longest, bytes] = sizes.reduce((a, b) => (b[1] > a[1] ? b : a));
  console.log(`longest key: ${longest}, ${bytes} bytes of ${KV_KEY_BYTES}`);
  assert.ok(bytes <= KV_KEY_BYTES);

  await using engine = await openEngine({ path: ":memory:", pipelines: [] });
  const op = engine.kv.atomic();
  for (const key of Object.values(built)) op.set(key, 1);
  assert.ok((await op.commit()).ok, "KV takes every one of them");
  // keySize is KV's own count: a key of exactly 2,048 bytes is taken, one more is refused
  const base: Deno.KvKey = ["kvflow", "€".repeat(600), 1];
  const fill = "x".repeat(KV_KEY_BYTES - keys.keySize([...base, ""]));
  const exact = [...base, fill];
  assert.equal(keys.keySize(exact), KV_KEY_BYTES);
  await engine.kv.set(exact, 1);
  await assert.rejects(
    engine.kv.set([...base, `${fill}x`], 1),
    /Key too large/,
  );
});

Deno.test("names longer than the maximum are refused at definition time, naming them and the maximum", () => {
  const long = nameOf("step", MAX_NAME_LENGTH + 1);
  assert.throws(
    () => step(long, () => 1),
    (e: unknown) =>
      e instanceof TypeError &&
      e.message.startsWith(`Invalid step name "${long}" (101 characters, at most 100)`),
  );
  const ok = step(nameOf("ok"), () => 1);
  assert.throws(
    () => pipeline(nameOf("pipe", MAX_NAME_LENGTH + 1), { steps: [ok] }),
    {
      name: "TypeError",
      message: /^Invalid pipeline name "pipe-x+" \(101 characters, at most 100\)/,
    },
  );
  // a name of a megabyte is quoted in part: the message stays one readable line
  assert.throws(() => step("x".repeat(MiB), () => 1), (e: unknown) => {
    const message = (e as Error).message;
    return message.length < 400 && /\(1048576 characters, at most 100\)/.test(message);
  });
});

Deno.test("names, run id and idempotency key at their maximum work end to end, rerun of 1,200 long item keys included", async () => {
  const n = 1200;
  const list = step(nameOf("list"), () => Array.from({ length: n }, (_, i) => i));
  const each = step(nameOf("each"), {
    needs: { list },
    items: ({ list }) => list,
    // every item starts in the same commit: 1,200 item keys of 330 bytes
    concurrency: n,
  }, async (i, ctx) => {
    ctx.log.info("item", { i });
    if (i === 0) await ctx.artifact("€".repeat(200), "report");
    return i * 2;
  });
  const sum = step(nameOf("sum"), { needs: { each } }, ({ each }) => each.reduce((a, b) => a + b));
  const p = pipeline(nameOf("pipeline"), { steps: [list, each, sum], concurrency: n });
  assert.equal(p.name.length, MAX_NAME_LENGTH);

  await using file = await tempKv();
  await using engine = await openEngine({ path: file.path, pipelines: [p], maxSteps: n });
  const runId = "r".padEnd(MAX_RUN_ID_LENGTH, "0");
  const idempotencyKey = "€".repeat(MAX_IDEMPOTENCY_KEY_LENGTH);
  const run = await engine.trigger(p.name, { id: runId, idempotencyKey });
  assert.equal(run.id, runId);
  assert.equal((await engine.runToEnd(runId)).status, "succeeded");
  assert.equal(await engine.store.getOutput(runId, nameOf("sum")), n * (n - 1));
  assert.equal((await engine.store.runForIdempotencyKey(p.name, idempotencyKey))?.id, runId);
  const { bytes } = await engine.store.readArtifact(runId, "€".repeat(200));
  assert.equal(new TextDecoder().decode(bytes), "report");
  assert.equal(
    (await engine.store.listRuns({ pipeline: p.name, status: "succeeded" })).runs.length,
    1,
  );

  // a rerun resets every item: many commits of long keys
  await engine.store.rerun(await engine.store.requireRun(runId), p, nameOf("each"));
  assert.equal((await engine.runToEnd(runId)).status, "succeeded");
  const items = await engine.store.getItems(runId, nameOf("each"));
  assert.equal(items.size, n);
  assert.ok([...items.values()].every((r) => r.status === "succeeded" && r.generation === 1));

  let longest = 0;
  for await (const e of engine.kv.list({ prefix: ["kvflow"] })) {
    longest = Math.max(longest, keys.keySize(e.key));
  }
  console.log(`longest key stored: ${longest} bytes`);
});

Deno.test("run ids and idempotency keys beyond their maximum are refused clearly, storing nothing", async () => {
  const p = pipeline("limits-ids", { steps: [step("s", () => 1)] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const cases: [string, Parameters<typeof engine.trigger>[1], RegExp][] = [
    [
      "long id",
      { id: "r".repeat(MAX_RUN_ID_LENGTH + 1) },
      /^Invalid run id "r{80}"… \(201 characters\): use 1 to 200 letters/,
    ],
    ["id with a slash", { id: "a/b" }, /^Invalid run id "a\/b": use 1 to 200/],
    ["huge id", { id: "r".repeat(10_000) }, /^Invalid run id .*\(10000 characters\)/],
    [
      "long idempotency key",
      { idempotencyKey: "k".repeat(MAX_IDEMPOTENCY_KEY_LENGTH + 1) },
      /^Invalid idempotency key "k{80}"… \(256 characters\): use 1 to 255 characters/,
    ],
    ["empty idempotency key", { idempotencyKey: "" }, /^Invalid idempotency key "": use 1 to 255/],
  ];
  for (const [what, input, message] of cases) {
    await assert.rejects(
      engine.trigger(p.name, input),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
      what,
    );
  }
  assert.deepEqual((await engine.store.listRuns()).runs, [], "nothing stored");
});

Deno.test("params too large for the run record are refused at creation; params at the limit leave room for the run's error", async () => {
  const p = pipeline("limits-params", {
    params: z.object({ note: z.string() }),
    defaults: { retry: { attempts: 1 } },
    steps: [step("fails", () => {
      throw new Error("ошибка ".repeat(2000)); // two bytes a character in KV
    })],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  await assert.rejects(
    engine.store.createRun(p, { params: { note: "x".repeat(60_000) } }),
    (e: unknown) =>
      e instanceof UsageError && e.code === "invalid_params" &&
      new RegExp(
        `^Invalid params for 'limits-params': too large to store with the run \\(the run record would take \\d+ bytes, at most ${MAX_RUN_RECORD_BYTES}`,
      ).test(e.message),
  );
  assert.deepEqual((await engine.store.listRuns()).runs, []);

  // the longest note that is still taken, found without storing anything
  let lo = 0, hi = 60_000;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    try {
      engine.store.newRun(p, { params: { note: "x".repeat(mid) } });
      lo = mid;
    } catch {
      hi = mid - 1;
    }
  }
  assert.ok(lo > 40_000, `params of ${lo} characters fit`);
  const run = await engine.store.createRun(p, { params: { note: "x".repeat(lo) } });
  const ended: RunRecord = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed", "the failure with its long message is stored");
  assert.match(ended.error!.message, /^ошибка ошибка/);
  assert.equal(ended.failures, 1);
});

function historyPipeline(name: string) {
  return pipeline(name, { steps: [step("only", () => 1)] });
}

Deno.test({
  name: "100,000 runs in history: list, filter, page, get, count and sweep stay fast and correct",
  async fn() {
    const total = Number(Deno.env.get("KVFLOW_LIMITS_RUNS") ?? 100_000);
    const active = 30;
    const [a, b, rare] = ["hist-a", "hist-b", "hist-rare"].map(historyPipeline);
    const kv = await Deno.openKv(":memory:");
    try {
      // Ended runs are created through the store's own creation path, 100 a commit (KV's
      // check limit), one simulated second apart, as a long-lived deployment has them.
      let clockAt = Date.now() - (total + 10) * 1000;
      const clock = { now: () => (clockAt += 1000), after: () => () => {} };
      const seeder = new Store(kv, { queues: false, clock });
      const ids: string[] = [];
      const expected = { rare: [] as string[], bFailed: [] as string[], aActive: 0 };
      // runs by "pipeline/status", as the metrics must show them
      const counts = new Map<string, number>();
      const tally = (key: string) => counts.set(key, (counts.get(key) ?? 0) + 1);
      const [started, seedCpu] = [performance.now(), cpuMicros()];
      for (let i = 0; i < total - active; i += 100) {
        const op = kv.atomic();
        for (let j = i; j < Math.min(i + 100, total - active); j++) {
          const p = j % 10_000 === 5 ? rare : j % 5 < 3 ? a : b;
          const created = seeder.newRun(p);
          const failed = j % 20 === 8 || j % 20 === 12; // 8: a hist-b run, 12: hist-a
          seeder.addRunCreation(op, {
            ...created,
            status: failed ? "failed" : "succeeded",
            startedAt: created.createdAt,
            endedAt: created.createdAt + 400,
            dueAt: null,
            error: failed ? { step: "only", message: "boom" } : null,
            failures: failed ? 1 : 0,
          });
          ids.push(created.id);
          tally(`${p.name}/${failed ? "failed" : "succeeded"}`);
          if (p === rare) expected.rare.push(created.id);
          if (p === b && failed) expected.bFailed.push(created.id);
        }
        assert.ok((await op.commit()).ok);
      }
      for (let j = 0; j < active; j++) {
        const p = j % 2 ? b : a;
        ids.push((await seeder.createRun(p)).id);
        tally(`${p.name}/queued`);
        if (p === a) expected.aActive++;
      }
      const seedMs = performance.now() - started;
      console.log(
        `history: ${total} runs created in ${(seedMs / 1000).toFixed(1)} s ` +
          `(${((cpuMicros() - seedCpu) / 1e6).toFixed(1)} s of CPU)`,
      );

      await using engine = await openEngine({ kv, pipelines: [a, b, rare], queues: false });
      const store = engine.store;
      const timed = async <T>(what: string, fn: () => Promise<T>, boundMs = 1000) => {
        const t0 = performance.now();
        const result = await fn();
        const ms = performance.now() - t0;
        console.log(`history: ${what} in ${ms.toFixed(1)} ms`);
        assert.ok(ms < boundMs, `${what} took ${ms} ms`);
        return result;
      };
      const newestFirst = (runs: RunRecord[]) =>
        runs.every((r, i) => i === 0 || runs[i - 1].createdAt >= r.createdAt);

      const first = await timed("first page", () => store.listRuns());
      assert.deepEqual(first.runs.map((r) => r.id), ids.slice(-20).reverse());
      assert.ok(first.cursor);

      const rarePage = await timed(
        "one pipeline's runs",
        () => store.listRuns({ pipeline: "hist-rare" }),
      );
      assert.deepEqual(rarePage.runs.map((r) => r.id), expected.rare.slice(-20).reverse());

      const failed = await timed(
        "failed runs",
        () => store.listRuns({ status: "failed", limit: 50 }),
      );
      assert.equal(failed.runs.length, 50);
      assert.ok(failed.runs.every((r) => r.status === "failed") && newestFirst(failed.runs));

      // a rare pipeline among 95,000 succeeded runs: its own index, no scan
      const rareSucceeded = await timed(
        "one pipeline's succeeded runs",
        () => store.listRuns({ pipeline: "hist-rare", status: "succeeded" }),
      );
      assert.deepEqual(
        rareSucceeded.runs.map((r) => r.id),
        expected.rare.slice(-20).reverse(),
      );
      assert.deepEqual(
        (await store.listRuns({ pipeline: "hist-rare", status: "failed" })).runs,
        [],
      );

      // page through one pipeline's failures with the cursor
      const paged: RunRecord[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const page = await timed(
          `page ${++pages} of hist-b's failures`,
          () => store.listRuns({ pipeline: "hist-b", status: "failed", limit: 500, cursor }),
        );
        paged.push(...page.runs);
        cursor = page.cursor;
      } while (cursor);
      assert.deepEqual(paged.map((r) => r.id), expected.bFailed.slice().reverse());
      assert.ok(paged.every((r) => r.pipeline === "hist-b" && r.status === "failed"));

      const oldest = await timed("get one run", () => store.getRun(ids[0]), 200);
      assert.equal(oldest?.id, ids[0]);
      assert.equal(oldest?.status, "succeeded");

      assert.equal(
        await timed("count active runs", () => store.countActive("hist-a")),
        expected.aActive,
      );
      assert.equal(await store.countActive("hist-rare"), 0);

      // the metrics read runs by pipeline and status from counts, without a scan
      const metrics = new Metrics(engine, { countTtlMs: 0 });
      const text = await timed("a metrics scrape", () => metrics.render(), 200);
      await metrics.close();
      const scraped = new Map<string, number>();
      const samples = text.matchAll(/^kvflow_runs\{pipeline="([^"]*)",status="(\w+)"\} (\d+)$/gm);
      for (const [, p, status, n] of samples) if (n !== "0") scraped.set(`${p}/${status}`, +n);
      assert.deepEqual(scraped, counts);

      // the sweep finds the 30 queued runs among 100,000 without reading the ended ones
      assert.equal((await allDue(kv)).length, active);
      await timed("a worker's sweep", () => engine.worker.sweep());
      await waitFor("the active runs to end", async () => {
        await engine.worker.idle();
        const left = (await store.countActive("hist-a")) + (await store.countActive("hist-b"));
        // a worker drives 16 runs at once: the next sweep takes the rest
        if (left > 0) await engine.worker.sweep();
        return left === 0;
      }, 10_000);
      assert.deepEqual(await allDue(kv), []);
      assert.equal(
        (await store.listRuns({ status: "succeeded", limit: active })).runs.filter((r) =>
          ids.slice(-active).includes(r.id)
        ).length,
        active,
      );
    } finally {
      kv.close();
    }
  },
});
