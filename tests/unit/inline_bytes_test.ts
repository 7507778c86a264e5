import assert from "node:assert/strict";
import v8 from "node:v8";
import fc from "fast-check";
import { encodeSmall, inlineBytes } from "../../lib/kv/values.ts";
import { INLINE_BYTES } from "../../lib/kv/limits.ts";

Deno.test("inlineBytes() is never below the serialized size of an output stored inline", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    fc.assert(
      fc.property(fc.jsonValue(), fc.string({ unit: "grapheme" }), (json, text) => {
        for (const value of [json, text, { text, json }, [text, 1n << 70n, new Date(0)]]) {
          if (!encodeSmall(kv, value)) continue; // measured exactly, stored inline or as a blob
          assert.ok(inlineBytes(value) >= v8.serialize(value).byteLength, Deno.inspect(value));
        }
      }),
      { numRuns: 300 },
    );
  } finally {
    kv.close();
  }
});

Deno.test("inlineBytes() of a large output is the inline maximum, not more", () => {
  assert.equal(inlineBytes("x".repeat(100_000)), INLINE_BYTES);
  assert.equal(inlineBytes({ rows: Array.from({ length: 20_000 }, (_, i) => i) }), INLINE_BYTES);
  assert.ok(inlineBytes(1) < 100 && inlineBytes(null) < 100 && inlineBytes({ n: 1 }) < 100);
});
