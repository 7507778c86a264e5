import assert from "node:assert/strict";
import { getAll } from "../../lib/kv/reads.ts";
import { KV_GET_MANY_KEYS } from "../../lib/kv/limits.ts";

Deno.test("getAll reads more keys than one getMany may, in their order, absent ones too", async () => {
  using kv = await Deno.openKv(":memory:");
  const keys = Array.from({ length: 25 }, (_, i) => ["k", i]);
  for (const [, i] of keys) if ((i as number) % 3 !== 0) await kv.set(["k", i], `v${i}`);
  // what it works around: KV refuses a longer getMany
  await assert.rejects(() => kv.getMany(keys), /Too many ranges/);
  const got = await getAll<string>(kv, keys);
  assert.equal(got.length, 25);
  got.forEach((e, i) => {
    assert.deepEqual(e.key, ["k", i]);
    assert.equal(e.value, i % 3 === 0 ? null : `v${i}`);
  });
  assert.deepEqual(await getAll(kv, []), []);
  assert.equal((await getAll(kv, keys.slice(0, KV_GET_MANY_KEYS))).length, KV_GET_MANY_KEYS);
});
