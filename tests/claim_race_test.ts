import assert from "node:assert/strict";
import { z } from "zod";
import { pipeline, step } from "../lib/mod.ts";
import { Store } from "../lib/store/store.ts";
import * as keys from "../lib/kv/keys.ts";
import type { Lease } from "../lib/model/records.ts";

const plain = pipeline("claim-race", { steps: [step("only", () => 1)] });
const limited = pipeline("claim-race-limited", {
  params: z.object({ key: z.string() }),
  limit: { key: (params) => params.key, max: 1 },
  steps: [step("only", () => 1)],
});

function holder(owner: string): Omit<Lease, "deadline"> {
  return { owner, host: "test-host", pid: 1 };
}

/** Two handles on one KV file, as two worker processes have. */
async function twoStores(path: string): Promise<[Store, Store, () => void]> {
  const a = await Deno.openKv(path);
  const b = await Deno.openKv(path);
  return [
    new Store(a, { queues: false }),
    new Store(b, { queues: false }),
    () => {
      a.close();
      b.close();
    },
  ];
}

Deno.test("claim: of two workers claiming a run that never had a lease at once, exactly one gets it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kvflow-claim-race-" });
  const [a, b, close] = await twoStores(`${dir}/kv.sqlite`);
  try {
    for (let i = 0; i < 30; i++) {
      const run = await a.createRun(plain);
      const claims = await Promise.all([
        a.claim(run.id, holder("worker-a"), 30_000, plain.name),
        b.claim(run.id, holder("worker-b"), 30_000, plain.name),
      ]);
      const won = claims.filter((c) => c !== null);
      assert.equal(won.length, 1, `run ${i}: ${won.length} claims succeeded`);
      const lease = await a.kv.get<Lease>(keys.lease(run.id));
      assert.equal(lease.value?.owner, won[0]!.lease.owner);
      assert.equal(lease.versionstamp, won[0]!.leaseVersion);
    }
  } finally {
    close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("claim: of many workers racing for the one slot of a run limit, one run starts and the others stay queued", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kvflow-claim-race-" });
  const [a, b, close] = await twoStores(`${dir}/kv.sqlite`);
  try {
    const runs = await Promise.all(
      Array.from({ length: 6 }, () => a.createRun(limited, { params: { key: "k" } })),
    );
    const claims = await Promise.all(
      runs.map((run, i) =>
        (i % 2 === 0 ? a : b).claim(run.id, holder(`worker-${i}`), 30_000, limited.name)
      ),
    );
    assert.equal(claims.filter((c) => c !== null).length, 1);
    let slots = 0;
    for await (const _ of a.kv.list({ prefix: keys.allSlotsPrefix() })) slots++;
    assert.equal(slots, 1);
  } finally {
    close();
    await Deno.remove(dir, { recursive: true });
  }
});
