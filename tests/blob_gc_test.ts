/**
 * Blobs that nothing refers to are reclaimed. A large value's chunks are committed before
 * the checkpoint that refers to them, under a pending marker; when the writer dies, loses
 * its lease or finds the disk full in between, or a rerun replaces the value, the marker
 * is what is left, and the next lease holder (or the run's end, resume or cancel)
 * deletes the chunks. A blob that a record refers to is never deleted.
 *
 * @module
 */
import assert from "node:assert/strict";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import { commitAtomic } from "../lib/kv/commit.ts";
import { type PendingBlob, writeBlob } from "../lib/kv/blobs.ts";
import { CHUNK_BYTES } from "../lib/kv/limits.ts";
import * as keys from "../lib/kv/keys.ts";
import { Sandbox } from "./_support/harness.ts";
import { auditBlobs, delay } from "./_support/helpers.ts";

/** A blob being written: its pending marker, and the index of its last chunk so far. */
type Writing = PendingBlob & { id: string; top: number };

/** The first blob of a run that is pending and has chunks, or undefined. */
async function writing(kv: Deno.Kv, runId: string): Promise<Writing | undefined> {
  for await (const m of kv.list<PendingBlob>({ prefix: keys.blobPendingPrefix(runId) })) {
    const id = m.key[m.key.length - 1] as string;
    const last = kv.list({ prefix: keys.blobPrefix(runId, id) }, { reverse: true, limit: 1 });
    for await (const c of last) return { ...m.value, id, top: c.key[c.key.length - 1] as number };
  }
  return undefined;
}

Deno.test("a worker SIGKILLed between the chunk commits and the checkpoint of an output: the worker that takes the run over reclaims the chunks, and every blob in KV is referenced", async () => {
  await using box = await Sandbox.create();
  // 8,000 KiB of text a step: 137 chunks in 12 commits, so there is time between them
  const args = ["run", "tests/fixtures/bulky.ts", "--param", "kb=8000", "--detach"];
  const queued = await box.cli(args);
  assert.equal(queued.code, 0, queued.stderr);
  const id = queued.stdout.trim();
  const env = { KVFLOW_POLL_MS: "100" };

  const a = box.spawn(["worker"], { env });
  const partial = await box.withStore(async ({ kv }) => {
    // Polled tightly: the 12 chunk commits of one step take some tens of ms.
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      const w = await writing(kv, id);
      // at least one commit of b2's chunks landed, and more are to come
      if (w && "step" in w && w.step === "b2" && w.top >= 11 && w.top < w.chunks - 13) {
        a.kill("SIGKILL");
        return w;
      }
      await delay(2);
    }
    throw new Error("Timed out waiting for b2's output to be half written");
  });
  await a.exit();
  const left = await box.withStore(async (store) => ({
    steps: await store.getSteps(id),
    blobs: await auditBlobs(store.kv),
    marker: (await store.kv.get(keys.blobPending(id, partial.id))).value,
  }));
  assert.equal(left.steps.get("b1")?.status, "succeeded");
  assert.equal(left.steps.get("b2")?.status, "running", "killed before b2's checkpoint");
  assert.deepEqual(left.blobs.unreferenced, [`${id}/${partial.id}`]);
  assert.deepEqual(left.blobs.pending, [`${id}/${partial.id}`]);
  assert.deepEqual(left.marker, { step: "b2", item: -1, chunks: partial.chunks });

  const b = box.spawn(["worker"], { env });
  const run = await box.waitForRun(id, (r) => r.status === "succeeded", 90_000);
  assert.equal(run.takeovers, 1);
  b.kill("SIGTERM");
  assert.equal((await b.exit()).code, 0);

  const blobs = await box.withStore(({ kv }) => auditBlobs(kv));
  assert.deepEqual(blobs.unreferenced, [], "no chunk is left that nothing refers to");
  assert.deepEqual(blobs.pending, []);
  assert.deepEqual(blobs.missing, []);
  assert.equal(blobs.stored.size, 6, "one blob for each step's output");
  const steps = await box.withStore((store) => store.getSteps(id));
  assert.equal(steps.get("b2")?.attempt, 2, "the killed attempt ran again");
});

Deno.test("a rerun reclaims the blobs of the step outputs, item outputs and artifacts it replaces", async () => {
  const big = (seed: number, size: number) => new Uint8Array(size).fill(seed);
  let renders = 0;
  const render = step("render", async (_inputs, ctx) => {
    renders++;
    await ctx.artifact("report.bin", big(renders, 200_000));
    return big(renders, 100_000);
  });
  const spread = step("spread", {
    needs: { render },
    items: () => [1, 2, 3],
  }, (n) => big(n, 60_000));
  const sum = step(
    "sum",
    { needs: { render, spread } },
    ({ render, spread }) =>
      render.byteLength + spread.reduce((total, x) => total + x.byteLength, 0),
  );
  const p = pipeline("blob-gc-rerun", { steps: [render, spread, sum] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  const first = await auditBlobs(engine.kv);
  assert.equal(first.stored.size, 5, "an artifact, an output and three item outputs");
  assert.deepEqual(first.unreferenced, []);

  await engine.store.rerun(await engine.store.requireRun(run.id), p, "render");
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(renders, 2);
  const second = await auditBlobs(engine.kv);
  assert.deepEqual(second.unreferenced, [], "the replaced blobs were reclaimed");
  assert.deepEqual(second.pending, []);
  assert.deepEqual(second.missing, []);
  assert.equal(second.stored.size, 5);
  for (const blob of first.stored) assert.ok(!second.stored.has(blob), `${blob} is still stored`);
  assert.deepEqual(await engine.store.getOutput(run.id, "sum"), 100_000 + 3 * 60_000);
  assert.deepEqual(
    (await engine.store.readArtifact(run.id, "report.bin")).bytes,
    big(2, 200_000),
  );
});

Deno.test("a pending blob is reclaimed by the next claim, never while its writer holds the lease, and a referenced one is kept", async () => {
  const only = step("only", () => new Uint8Array(100_000).fill(7));
  const p = pipeline("blob-gc-claim", { steps: [only] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const store = new Store(engine.kv, { queues: false });
  const holder = (owner: string) => ({ owner, host: "test", pid: 0 });
  const run = await store.createRun(p);

  // Worker A claims the run and writes a blob for `only` under its lease, then stops.
  const claimA = (await store.claim(run.id, holder("a"), 1))!;
  const fenceA = { key: keys.lease(run.id), versionstamp: claimA.leaseVersion };
  const bytes = new Uint8Array(3 * CHUNK_BYTES + 1).fill(1);
  const owner = { step: "only", item: -1 };
  const blob = await writeBlob(
    engine.kv,
    run.id,
    bytes,
    owner,
    (op) => commitAtomic(op.check(fenceA)),
  );
  assert.equal(await store.reclaimBlobs(run.id), 0, "an active run's blobs are its holder's");
  assert.deepEqual((await auditBlobs(engine.kv)).unreferenced, [`${run.id}/${blob.id}`]);

  // A's lease runs out; B's claim fences A out and reclaims A's blob.
  await delay(5);
  const claimB = (await store.claim(run.id, holder("b"), 60_000))!;
  assert.ok(claimB);
  const audit = await auditBlobs(engine.kv);
  assert.deepEqual(audit.stored, new Set(), "B's claim reclaimed A's blob");
  assert.deepEqual(audit.pending, []);
  await assert.rejects(
    writeBlob(engine.kv, run.id, bytes, owner, (op) => commitAtomic(op.check(fenceA))),
    /the write was refused/,
    "A writes nothing any more",
  );
  assert.deepEqual((await auditBlobs(engine.kv)).stored, new Set());
});

Deno.test("an ended run's pending blobs are reclaimed on cancel and resume; a blob its record refers to only loses its marker", async () => {
  let calls = 0;
  const produce = step("produce", () => new Uint8Array(100_000).fill(9));
  const consume = step("consume", {
    needs: { produce },
    retry: { attempts: 1 },
  }, ({ produce }) => {
    if (++calls === 1) throw new Error("not yet");
    return produce.byteLength;
  });
  const p = pipeline("blob-gc-ended", { steps: [produce, consume] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const { store, kv } = engine;
  const run = await store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  const kept = (await store.getSteps(run.id)).get("produce")!.output as {
    blob: { id: string; chunks: number };
  };
  // A checkpoint that referred to a blob but was cut short before deleting its marker, and
  // a blob that a dead writer left: the first stays, the second goes.
  await kv.set(keys.blobPending(run.id, kept.blob.id), {
    step: "produce",
    item: -1,
    chunks: kept.blob.chunks,
  });
  const owner = { step: "consume", item: -1 };
  const orphan = await writeBlob(kv, run.id, new Uint8Array(CHUNK_BYTES * 2), owner);
  let audit = await auditBlobs(kv);
  assert.deepEqual(audit.unreferenced, [`${run.id}/${orphan.id}`]);
  assert.equal(audit.pending.length, 2);
  await store.resume(await store.requireRun(run.id), p);
  audit = await auditBlobs(kv);
  assert.deepEqual(audit.stored, new Set([`${run.id}/${kept.blob.id}`]), "orphan reclaimed");
  assert.deepEqual(audit.pending, []);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.equal(await store.getOutput(run.id, "consume"), 100_000);

  // Cancel: the chunks a worker was writing when its lease was taken away.
  const again = await store.createRun(p);
  await store.claim(again.id, { owner: "w", host: "test", pid: 0 }, 60_000);
  await writeBlob(kv, again.id, new Uint8Array(CHUNK_BYTES * 2), { step: "produce", item: -1 });
  await store.cancel(again.id);
  audit = await auditBlobs(kv);
  assert.deepEqual(audit.unreferenced, [], `left after cancel: ${audit.unreferenced}`);
  assert.deepEqual(audit.pending, []);
});
