import assert from "node:assert/strict";
import { isRunId, newRunId } from "../../lib/model/run_id.ts";

Deno.test("run ids made in one second do not repeat at thousands of runs a second", () => {
  // 200,000 ids of one second: with 30 random bits about 19 pairs would repeat, with 50
  // bits one repeat comes in about 56,000 such tests
  const now = Date.UTC(2026, 11, 5, 9, 30, 0);
  const seen = new Set<string>();
  for (let i = 0; i < 200_000; i++) {
    const id = newRunId(now + (i % 1000));
    assert.ok(!seen.has(id), `${id} made twice`);
    seen.add(id);
  }
  const id = [...seen][0];
  assert.match(id, /^20261205-093000-[0-9a-hjkmnp-tv-z]{10}$/);
  assert.ok(isRunId(id));
});
