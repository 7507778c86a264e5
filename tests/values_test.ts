import assert from "node:assert/strict";
import { z } from "zod";
import { type ArtifactRef, openEngine, pipeline, step } from "../lib/mod.ts";
import { CHUNK_BYTES } from "../lib/kv/limits.ts";

const MiB = 1024 * 1024;

async function blobKeys(kv: Deno.Kv, runId: string): Promise<Deno.KvKey[]> {
  const out: Deno.KvKey[] = [];
  for await (const e of kv.list({ prefix: ["kvflow", "blob", runId] })) out.push(e.key);
  return out;
}

function pattern(size: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed + (i >> 12)) & 0xff;
  return bytes;
}

Deno.test("a 5 MiB output is stored in chunks and read back equal by a later step", async () => {
  const big = pattern(5 * MiB, 7);
  let consumerCalls = 0;
  const produce = step("produce", () => ({ label: "sales", bytes: big }));
  const consume = step("consume", { needs: { produce } }, ({ produce }) => {
    consumerCalls++;
    // the first attempt fails for good, so the resumed run must read the output from KV
    if (consumerCalls === 1) throw new Error("not yet");
    assert.equal(produce.label, "sales");
    assert.ok(produce.bytes instanceof Uint8Array);
    assert.ok(produce.bytes !== big, "the value was decoded from KV, not shared in memory");
    return { length: produce.bytes.byteLength, equal: equalBytes(produce.bytes, big) };
  });
  const p = pipeline("big-output", {
    steps: [produce, consume],
    defaults: { retry: { attempts: 1 } },
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");

  const record = (await engine.store.getSteps(run.id)).get("produce")!;
  assert.ok(record.output && "blob" in record.output, "stored by reference");
  const chunks = await blobKeys(engine.kv, run.id);
  assert.ok(chunks.length >= Math.ceil(5 * MiB / CHUNK_BYTES), `${chunks.length} chunks`);
  assert.equal(chunks.length, record.output.blob.chunks);

  await engine.store.resume(await engine.store.requireRun(run.id), p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(await engine.store.getOutput(run.id, "consume"), {
    length: 5 * MiB,
    equal: true,
  });
  const read = await engine.store.getOutput(run.id, "produce") as { bytes: Uint8Array };
  assert.ok(equalBytes(read.bytes, big));
});

Deno.test("a 5 MiB string output passes to a dependent step intact", async () => {
  const text = "kvflow ".repeat(Math.ceil(5 * MiB / 7)).slice(0, 5 * MiB);
  const produce = step("produce", () => text);
  const consume = step("consume", { needs: { produce } }, ({ produce }) => ({
    length: produce.length,
    same: produce === text,
  }));
  const p = pipeline("big-string", { steps: [produce, consume] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(await engine.store.getOutput(run.id, "consume"), {
    length: 5 * MiB,
    same: true,
  });
  assert.equal(await engine.store.getOutput(run.id, "produce"), text);
  assert.ok((await blobKeys(engine.kv, run.id)).length > 50);
});

Deno.test("small outputs are stored inline, without blob chunks", async () => {
  const small = step("small", () => ({ n: 1, when: new Date(0), tags: new Set(["a"]) }));
  const p = pipeline("small", { steps: [small] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(await engine.store.getOutput(run.id, "small"), {
    n: 1,
    when: new Date(0),
    tags: new Set(["a"]),
  });
  assert.deepEqual(await blobKeys(engine.kv, run.id), []);
});

Deno.test("a non-serializable output fails the step at once with a clear message", async () => {
  let calls = 0;
  const fn = step("returns-function", { retry: { attempts: 3, delay: "5ms" } }, () => {
    calls++;
    return { callback: () => "nope" };
  });
  const p = pipeline("unserializable", { steps: [fn] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  const ended = await engine.runToEnd(run.id);
  assert.equal(ended.status, "failed");
  assert.equal(calls, 1, "retrying cannot make a function serializable");
  const error = (await engine.store.getSteps(run.id)).get("returns-function")!.error!;
  assert.equal(error.name, "NonRetryableError");
  assert.equal(error.retryable, false);
  assert.match(error.message, /^Output is not serializable: .*return plain data/);
});

Deno.test("an output that fails its zod schema fails the step, naming the field", async () => {
  let calls = 0;
  const typed = step("typed", {
    output: z.object({ total: z.number(), currency: z.enum(["EUR", "USD"]) }),
    retry: { attempts: 3, delay: "5ms" },
  }, () => {
    calls++;
    // deno-lint-ignore no-explicit-any
    return { total: "12.50", currency: "EUR" } as any;
  });
  const p = pipeline("schema", { steps: [typed] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  assert.equal(calls, 1);
  const error = (await engine.store.getSteps(run.id)).get("typed")!.error!;
  assert.equal(error.name, "NonRetryableError");
  assert.match(error.message, /^Output of step 'typed' does not match its schema: total: /);
});

Deno.test("an output schema's parsed value is what gets stored", async () => {
  const typed = step("typed", {
    output: z.object({ n: z.coerce.number() }),
  }, () => ({ n: "42" as unknown as number, dropped: true }));
  const p = pipeline("schema-parse", { steps: [typed] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");
  assert.deepEqual(await engine.store.getOutput(run.id, "typed"), { n: 42 });
});

Deno.test("ctx.artifact() stores bytes by reference; later steps and the store read them", async () => {
  const pdf = pattern(3 * MiB, 3);
  const render = step("render", async (_inputs, ctx) => {
    const report = await ctx.artifact("report.pdf", pdf, { contentType: "application/pdf" });
    const note = await ctx.artifact("note.txt", "résumé: ok");
    return { report, note };
  });
  const mail = step("mail", { needs: { render } }, async ({ render }, ctx) => {
    const bytes = await ctx.readArtifact(render.report);
    const note = new TextDecoder().decode(await ctx.readArtifact("note.txt"));
    return { size: bytes.byteLength, equal: equalBytes(bytes, pdf), note };
  });
  const p = pipeline("artifacts", { steps: [render, mail] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p] });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "succeeded");

  const refs = await engine.store.getOutput(run.id, "render") as Record<string, ArtifactRef>;
  assert.deepEqual(refs.report, {
    artifact: true,
    runId: run.id,
    name: "report.pdf",
    contentType: "application/pdf",
    size: 3 * MiB,
  });
  assert.deepEqual(await engine.store.getOutput(run.id, "mail"), {
    size: 3 * MiB,
    equal: true,
    note: "résumé: ok",
  });
  const { meta, bytes } = await engine.store.readArtifact(run.id, "report.pdf");
  assert.equal(meta.contentType, "application/pdf");
  assert.equal(meta.step, "render");
  assert.ok(equalBytes(bytes, pdf));
  const note = await engine.store.readArtifact(run.id, "note.txt");
  assert.equal(note.meta.contentType, "text/plain; charset=utf-8");
  assert.equal(new TextDecoder().decode(note.bytes), "résumé: ok");
  assert.deepEqual(
    (await engine.store.getArtifacts(run.id)).map((a) => [a.name, a.size]).sort(),
    [["note.txt", new TextEncoder().encode("résumé: ok").byteLength], ["report.pdf", 3 * MiB]],
  );
  await assert.rejects(
    engine.store.readArtifact(run.id, "missing.pdf"),
    { name: "UsageError", message: /has no artifact 'missing.pdf'/ },
  );
});

Deno.test("an artifact with a bad name fails the step with a clear error", async () => {
  const save = step("save", { retry: { attempts: 1 } }, async (_inputs, ctx) => {
    await ctx.artifact("../etc/passwd", "x");
    return 1;
  });
  const p = pipeline("bad-artifact", { steps: [save] });
  await using engine = await openEngine({ path: ":memory:", pipelines: [p], onAlert: () => {} });
  const run = await engine.store.createRun(p);
  assert.equal((await engine.runToEnd(run.id)).status, "failed");
  const error = (await engine.store.getSteps(run.id)).get("save")!.error!;
  assert.match(error.message, /Invalid artifact name "..\/etc\/passwd"/);
  assert.deepEqual(await engine.store.getArtifacts(run.id), []);
});

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
