import assert from "node:assert/strict";
import type { RunRecord } from "../lib/mod.ts";
import { type Service, startService } from "./_support/http.ts";

interface Page {
  runs: RunRecord[];
  cursor?: string;
}

/** Creates runs through the store, 16 at a time; the worker is off, so they stay queued. */
async function createRuns(s: Service, pipeline: string, count: number): Promise<string[]> {
  const ids: string[] = [];
  const p = s.engine.pipeline(pipeline);
  for (let i = 0; i < count; i += 16) {
    const batch = await Promise.all(
      Array.from(
        { length: Math.min(16, count - i) },
        () => s.engine.store.createRun(p, { trigger: "http" }),
      ),
    );
    ids.push(...batch.map((r) => r.id));
  }
  return ids;
}

async function pageThrough(s: Service, query: string, limit: number): Promise<RunRecord[]> {
  const runs: RunRecord[] = [];
  let cursor: string | undefined;
  do {
    const page: Page = await s.get(
      `/api/runs?${query}&limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
    );
    assert.ok(page.runs.length <= limit);
    runs.push(...page.runs);
    cursor = page.cursor;
  } while (cursor);
  return runs;
}

function newestFirst(a: RunRecord, b: RunRecord): number {
  return b.createdAt - a.createdAt || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}

Deno.test("GET /api/runs pages through 1,000 runs newest first, with filters", async () => {
  await using s = await startService({ worker: false });
  const demo = await createRuns(s, "demo", 600);
  const report = await createRuns(s, "report", 400);

  const all = await pageThrough(s, "", 100);
  assert.equal(all.length, 1000);
  assert.equal(new Set(all.map((r) => r.id)).size, 1000, "no run is listed twice");
  assert.deepEqual(all.map((r) => r.id), [...all].sort(newestFirst).map((r) => r.id));
  assert.deepEqual(new Set(all.map((r) => r.id)), new Set([...demo, ...report]));

  const first: Page = await s.get("/api/runs");
  assert.equal(first.runs.length, 20, "the default page has 20 runs");

  const onlyDemo = await pageThrough(s, "pipeline=demo", 250);
  assert.equal(onlyDemo.length, 600);
  assert.ok(onlyDemo.every((r) => r.pipeline === "demo"));

  const queuedReports = await pageThrough(s, "pipeline=report&status=queued", 64);
  assert.deepEqual(new Set(queuedReports.map((r) => r.id)), new Set(report));
  assert.deepEqual((await s.get("/api/runs?status=failed")).runs, []);

  const whole: Page = await s.get("/api/runs?limit=1000");
  assert.equal(whole.runs.length, 1000);
  // A full page always has a cursor; after the last run the next page is empty.
  const after: Page = await s.get(`/api/runs?cursor=${encodeURIComponent(whole.cursor!)}`);
  assert.deepEqual(after, { runs: [] });
  const none: Page = await s.get("/api/runs?pipeline=nothing");
  assert.deepEqual(none, { runs: [] });
});

Deno.test("GET /api/runs pagination is stable while runs are created between pages", async () => {
  await using s = await startService({ worker: false });
  const before = await createRuns(s, "demo", 1000);
  const listed: string[] = [];
  let cursor: string | undefined;
  let page = 0;
  do {
    const r: Page = await s.get(
      `/api/runs?limit=90${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
    );
    listed.push(...r.runs.map((run) => run.id));
    cursor = r.cursor;
    // Newer runs land in front of the first page while the client pages on.
    if (page++ < 5) await createRuns(s, "demo", 30);
  } while (cursor);
  assert.equal(listed.length, 1000, "every run that existed is listed once, none twice");
  assert.deepEqual(new Set(listed), new Set(before));
  const fresh: Page = await s.get("/api/runs?limit=200");
  assert.equal(fresh.runs.filter((r) => !before.includes(r.id)).length, 150);
});

Deno.test("GET /api/runs refuses a bad limit, status or cursor with 400", async () => {
  await using s = await startService({ worker: false });
  await createRuns(s, "demo", 5);
  const { cursor } = await s.get("/api/runs?limit=2");
  for (
    const query of [
      "limit=0",
      "limit=1001",
      "limit=abc",
      "limit=-1",
      "limit=2.5",
      "status=bogus",
      "cursor=!!!",
      `cursor=${"A".repeat(3000)}`,
      "pipeline=",
    ]
  ) {
    const r = await s.request("GET", `/api/runs?${query}`);
    assert.equal(r.status, 400, query);
    const error = (r.body as { error: { code: string; issues: unknown[] } }).error;
    assert.equal(error.code, "invalid_query", query);
    assert.ok(error.issues.length > 0, query);
  }
  // A cursor that decodes, or one from another listing: a page or a 400, never a 500.
  for (const query of ["cursor=AAAA", `pipeline=report&cursor=${encodeURIComponent(cursor)}`]) {
    const r = await s.request("GET", `/api/runs?${query}`);
    assert.ok(r.status === 200 || r.status === 400, `${query}: ${r.status}`);
  }
  const page = await s.get(`/api/runs?limit=2&cursor=${encodeURIComponent(cursor)}`);
  assert.equal(page.runs.length, 2);
});
