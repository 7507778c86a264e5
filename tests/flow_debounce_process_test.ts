/**
 * Debounce across processes: three real subprocesses send bursts of events with one
 * debounce key at once, while this process's worker starts the runs. Each quiet burst
 * gives exactly one run, whose params are the payload of the burst's last committed send;
 * every send went into a run.
 *
 * @module
 */
import assert from "node:assert/strict";
import { openEngine, type RunRecord } from "../lib/mod.ts";
import * as keys from "../lib/kv/keys.ts";
import type { EventEffect, EventRecord } from "../lib/model/events.ts";
import { digest } from "./fixtures/debounce_sender.ts";
import { tempKv, waitFor } from "./_support/helpers.ts";

const SENDER = new URL("./fixtures/debounce_sender.ts", import.meta.url).pathname;
const BURSTS = 3;
const PER_BURST = 8;

interface Sent {
  id: string;
  burst: number;
  n: number;
  duplicate: boolean;
}

async function sender(path: string, name: string, t0: number): Promise<Sent[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SENDER, path, name, String(t0), String(BURSTS), String(PER_BURST)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  return new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("bursts of events from 3 processes give one run per quiet burst, with the last committed payload", async () => {
  await using temp = await tempKv();
  const engine = await openEngine({
    path: temp.path,
    pipelines: [digest],
    pollMs: 50,
    onAlert: () => {},
  });
  try {
    engine.worker.start();
    // the senders start their first burst together, once all three have loaded
    const t0 = Date.now() + 4000;
    const sent = (await Promise.all(["a", "b", "c"].map((s) => sender(temp.path, s, t0)))).flat();
    assert.equal(sent.length, 3 * BURSTS * PER_BURST);
    assert.ok(sent.every((s) => !s.duplicate));

    // every send's event names the one run its trigger went into
    const kv = engine.store.kv;
    const runOf = new Map<string, string>();
    const stamp = new Map<string, string>();
    const data = new Map<string, unknown>();
    const kinds = new Map<string, string>();
    for (const s of sent) {
      const event = await kv.get<EventRecord>(keys.event(s.id));
      assert.ok(event.value, `event ${s.id} stored`);
      stamp.set(s.id, event.versionstamp!);
      data.set(s.id, event.value.data);
      const effects: EventEffect[] = [];
      for await (const e of kv.list<EventEffect>({ prefix: keys.eventEffectPrefix(s.id) })) {
        effects.push(e.value);
      }
      assert.equal(effects.length, 1, `event ${s.id}: ${JSON.stringify(effects)}`);
      assert.ok(["started", "joined"].includes(effects[0].kind), effects[0].kind);
      runOf.set(s.id, effects[0].runId);
      kinds.set(s.id, effects[0].kind);
    }
    const runIds = [...new Set(runOf.values())];
    assert.equal(runIds.length, BURSTS, "one run per quiet burst");
    // each run was started by one event (its burst's first) and joined by the others
    for (const runId of runIds) {
      const into = sent.filter((s) => runOf.get(s.id) === runId).map((s) => kinds.get(s.id));
      assert.equal(into.filter((k) => k === "started").length, 1, runId);
    }
    for (const runId of runIds) {
      await waitFor(
        `run ${runId}`,
        async () => (await engine.store.getRun(runId))?.status === "succeeded",
        20_000,
      );
      const run = (await engine.store.getRun(runId)) as RunRecord;
      const mine = sent.filter((s) => runOf.get(s.id) === runId);
      assert.equal(new Set(mine.map((s) => s.burst)).size, 1, "a run gathers one burst");
      // event records are written once, in the commit of their trigger: their versionstamps
      // order the triggers as KV committed them
      const last = mine.reduce((a, b) => (stamp.get(a.id)! > stamp.get(b.id)! ? a : b));
      assert.deepEqual(run.params, data.get(last.id), "the last committed payload");
      assert.ok(run.startedAt! >= run.createdAt);
    }
    const all = (await engine.store.listRuns({ pipeline: "digest", limit: 100 })).runs;
    assert.equal(all.length, BURSTS, "no other run");
  } finally {
    await engine.close(1000);
  }
});
