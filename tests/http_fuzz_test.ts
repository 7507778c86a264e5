import assert from "node:assert/strict";
import fc from "fast-check";
import { type Service, startService, world } from "./_support/http.ts";

const TOKEN = "fuzz-token-0123456789";
const REQUESTS = 3000;
const IN_FLIGHT = 6;
const ROUTES = [
  ["GET", "/api/pipelines"],
  ["GET", "/api/pipelines/:name"],
  ["GET", "/api/runs"],
  ["GET", "/api/runs/:id"],
  ["GET", "/api/runs/:id/artifacts/:artifact"],
  ["GET", "/api/runs/:id/events"],
  ["POST", "/api/pipelines/:name/runs"],
  ["POST", "/api/runs/:id/resume"],
  ["POST", "/api/runs/:id/rerun"],
  ["POST", "/api/runs/:id/cancel"],
  ["GET", "/openapi.json"],
  ["GET", "/healthz"],
  ["GET", "/metrics"],
] as const;

interface Fuzz {
  method: string;
  path: string;
  headers: [string, string][];
  body: string | Uint8Array | null;
  /** Whether the path names a stored run or a registered pipeline. */
  real: boolean;
  /** Whether to send the right bearer token (never for a real target: nothing may change). */
  authorized: boolean;
}

/** Every key in KV with its versionstamp. */
async function snapshot(kv: Deno.Kv): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const e of kv.list({ prefix: [] })) out.set(JSON.stringify(e.key), e.versionstamp);
  return out;
}

function requests(real: { runs: string[]; pipelines: string[]; artifacts: string[] }) {
  const oddText = fc.oneof(
    fc.string({ maxLength: 40 }),
    fc.string({ unit: "grapheme", maxLength: 20 }),
    fc.constantFrom(
      "..",
      ".",
      "%",
      "%zz",
      "%00",
      "%2F",
      "%E0%A4%A",
      "%ff%fe",
      "a/b",
      "\u0000",
      " ",
    ),
    fc.string({ minLength: 200, maxLength: 3000 }),
  );
  const segment = (known: string[]) =>
    fc.oneof(
      fc.constantFrom(...known).map((v) => ({ value: encodeURIComponent(v), real: true })),
      // well-formed but unknown: the request gets past the path check to the body
      fc.stringMatching(/^[a-z0-9][a-z0-9.-]{0,30}$/).filter((v) => !known.includes(v)).map((
        value,
      ) => ({ value, real: false })),
      fc.tuple(oddText.filter((v) => !known.includes(v)), fc.boolean()).map(([v, encode]) => ({
        value: encode ? encodeURIComponent(v) : v.replace(/[#?]/g, "_"),
        real: false,
      })),
    );
  // Mutations read bodies: send them three times as often.
  const route = fc.oneof(
    ...ROUTES.map((r) => ({ weight: r[0] === "POST" ? 3 : 1, arbitrary: fc.constant(r) })),
  );
  const routed = fc.tuple(
    route,
    segment(real.runs),
    segment(real.pipelines),
    segment(real.artifacts),
  ).map(([[method, template], id, name, artifact]) => ({
    method: method as string,
    path: template.replace(":id", id.value).replace(":name", name.value).replace(
      ":artifact",
      artifact.value,
    ),
    real: (template.includes(":id") && id.real) || (template.includes(":name") && name.real),
  }));
  const wild = fc.array(oddText, { maxLength: 6 }).map((parts) => ({
    method: "GET",
    path: "/" + parts.map((p) => p.replace(/[#?]/g, "_")).join("/"),
    real: true,
  }));
  const query = fc.array(
    fc.tuple(
      fc.oneof(fc.constantFrom("limit", "status", "cursor", "pipeline", "limit[]"), oddText),
      fc.oneof(
        fc.constantFrom("0", "-1", "1e3", "20", "1001", "NaN", "queued", "bogus", "AAAA", ""),
        fc.integer().map(String),
        oddText,
      ),
    ),
    { maxLength: 4 },
  ).map((pairs) =>
    pairs.length
      ? "?" + pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join("&")
      : ""
  );
  const method = fc.oneof(
    { weight: 1, arbitrary: fc.constantFrom("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO") },
    { weight: 4, arbitrary: fc.constant("") },
  );
  const fieldValue = fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    fc.constantFrom("2026-02-30", "2026-01-01", "load", "left", 1.5, -1, true, null, [], {}),
  );
  const body: fc.Arbitrary<string | Uint8Array | null> = fc.oneof(
    { weight: 3, arbitrary: fc.constant(null) },
    { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v) ?? "") },
    {
      weight: 5,
      arbitrary: fc.dictionary(
        fc.constantFrom("params", "logicalDate", "from", "force", "reason", "extra"),
        fieldValue,
        { maxKeys: 3 },
      ).map((v) => JSON.stringify(v)),
    },
    { weight: 2, arbitrary: fc.string({ maxLength: 200 }) },
    {
      weight: 2,
      arbitrary: fc.jsonValue().map((v) => (JSON.stringify(v) ?? "x").slice(0, -1) + "\u0000"),
    },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 2000 }) },
    { weight: 1, arbitrary: fc.integer({ min: 30, max: 5000 }).map((n) => "[".repeat(n)) },
    {
      weight: 2,
      arbitrary: fc.integer({ min: 60_000, max: 600_000 }).map((n) =>
        JSON.stringify({ params: { region: "x".repeat(n) } })
      ),
    },
  );
  const headerValue = fc.oneof(
    fc.constantFrom(
      "application/json",
      "application/json; charset=utf-8",
      "application/json; charset=utf-16",
      "APPLICATION/JSON",
      "application/problem+json",
      "text/plain",
      "multipart/form-data; boundary=x",
      "application/x-www-form-urlencoded",
      "",
      ";;;",
    ),
    fc.string({ maxLength: 60 }),
  );
  const headers = fc.record({
    contentType: fc.option(headerValue, { nil: undefined }),
    authorization: fc.option(
      fc.oneof(
        fc.constantFrom("Bearer", "Bearer ", "bearer x", "Basic Zm9vOmJhcg==", `Bearer ${TOKEN}x`),
        fc.string({ maxLength: 80 }).map((s) => `Bearer ${s}`),
      ),
      { nil: undefined },
    ),
    idempotency: fc.option(fc.string({ maxLength: 300 }), { nil: undefined }),
    extra: fc.array(fc.tuple(fc.constantFrom("x-a", "accept", "cookie", "origin"), fc.string()), {
      maxLength: 2,
    }),
    wantToken: fc.boolean(),
  });
  return fc.record({
    target: fc.oneof({ weight: 6, arbitrary: routed }, { weight: 1, arbitrary: wild }),
    method,
    query,
    body,
    headers,
  }).map(({ target, method, query, body, headers: h }): Fuzz => {
    const list: [string, string][] = [];
    if (h.contentType !== undefined) list.push(["content-type", h.contentType]);
    if (h.idempotency !== undefined) list.push(["idempotency-key", h.idempotency]);
    list.push(...h.extra);
    const authorized = !target.real && h.wantToken;
    if (authorized) list.push(["authorization", `Bearer ${TOKEN}`]);
    else if (h.authorization !== undefined) list.push(["authorization", h.authorization]);
    return {
      method: method || target.method,
      path: target.path + query,
      headers: list,
      body,
      real: target.real,
      authorized,
    };
  });
}

interface Answer {
  status: number;
  text: string;
  json: boolean;
}

async function send(s: Service, f: Fuzz): Promise<Answer | null> {
  const headers = new Headers();
  for (const [k, v] of f.headers) {
    try {
      headers.append(k, v);
    } catch {
      // not a valid header value for fetch: leave it out
    }
  }
  let url: URL;
  try {
    // Concatenated, never resolved against a base: "//host/…" must stay a path on this server.
    url = new URL(s.url + f.path);
  } catch {
    return null;
  }
  if (url.origin !== s.url) return null; // only ever this server on loopback
  const body = f.method === "GET" || f.method === "HEAD" ? undefined : f.body ?? undefined;
  const response = await fetch(url, {
    method: f.method,
    headers,
    body: body as BodyInit | undefined,
    signal: AbortSignal.timeout(10_000),
  });
  const text = !response.body
    ? ""
    : response.headers.get("content-type")?.startsWith("text/event-stream")
    ? await readAtMost(response, 2000)
    : await response.text();
  return { status: response.status, text, json: isJson(response) };
}

function isJson(response: Response): boolean {
  return /^application\/json/.test(response.headers.get("content-type") ?? "");
}

async function readAtMost(response: Response, ms: number): Promise<string> {
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const next = await Promise.race([
      reader.read(),
      new Promise<{ done: true; value: undefined }>((resolve) => {
        timer = setTimeout(() => resolve({ done: true, value: undefined }), deadline - Date.now());
      }),
    ]).finally(() => clearTimeout(timer));
    if (next.done) break;
    text += next.value;
  }
  await reader.cancel();
  return text;
}

function describe(f: Fuzz): string {
  const body = f.body === null
    ? "no body"
    : typeof f.body === "string"
    ? `body ${JSON.stringify(f.body.slice(0, 200))} (${f.body.length} chars)`
    : `${f.body.length} bytes`;
  return `${f.method} ${f.path.slice(0, 300)} ${JSON.stringify(f.headers).slice(0, 300)} ${body}`;
}

Deno.test("fuzz: thousands of malformed requests get no 5xx and change nothing stored", async () => {
  world.fixed = false;
  await using s = await startService({ token: TOKEN });
  // Stored state to guard: a succeeded, a failed (with artifacts and an alert), a cancelled run.
  const ok = await s.post("/api/pipelines/demo/runs", {}, 201, TOKEN);
  const failed = await s.post("/api/pipelines/report/runs", {}, 201, TOKEN);
  const held = await s.post("/api/pipelines/hold/runs", {}, 201, TOKEN);
  await s.waitForStatus(held.id, ["running"]);
  await s.post(`/api/runs/${held.id}/cancel`, {}, 200, TOKEN);
  await s.waitForStatus(ok.id, ["succeeded"]);
  await s.waitForStatus(failed.id, ["failed"]);
  await s.waitForStatus(held.id, ["cancelled"]);
  // let the cancelled step's driver notice and leave
  while (s.engine.worker.activeRuns > 0) await new Promise((r) => setTimeout(r, 20));
  const before = await snapshot(s.engine.kv);

  const seed = Number(Deno.env.get("FUZZ_SEED") ?? Date.now() % 1_000_000);
  const cases = fc.sample(
    requests({
      runs: [ok.id, failed.id, held.id],
      pipelines: [...s.engine.pipelines.keys()],
      artifacts: ["report.pdf", "page.html"],
    }),
    { numRuns: REQUESTS, seed },
  );
  const statuses = new Map<number, number>();
  let sent = 0;
  let next = 0;
  const failures: string[] = [];
  const started = Date.now();
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < cases.length) {
      const f = cases[next++];
      let result: Answer | null;
      try {
        result = await send(s, f);
      } catch (error) {
        failures.push(`${describe(f)} → ${error}`);
        continue;
      }
      if (!result) continue;
      sent++;
      statuses.set(result.status, (statuses.get(result.status) ?? 0) + 1);
      if (result.status >= 500) failures.push(`${describe(f)} → ${result.status} ${result.text}`);
      // The API answers errors as JSON; dashboard pages (outside /api) as HTML pages.
      const api = /^\/(api\/|healthz|metrics|openapi\.json)/.test(new URL(s.url + f.path).pathname);
      const shaped = result.json && result.text.startsWith('{"error":{');
      if (result.status >= 400 && f.method !== "HEAD" && (api || result.json) && !shaped) {
        failures.push(`${describe(f)} → ${result.status} without the error shape: ${result.text}`);
      }
      if (result.text.includes(TOKEN)) failures.push(`${describe(f)} → the answer shows the token`);
    }
  }));
  const took = Date.now() - started;
  console.log(
    `fuzz seed ${seed}: ${sent} requests in ${took} ms; statuses ${
      JSON.stringify(Object.fromEntries([...statuses].sort(([a], [b]) => a - b)))
    }`,
  );
  assert.deepEqual(failures.slice(0, 10), [], `seed ${seed}: ${failures.length} failures`);
  assert.ok(sent >= REQUESTS * 0.95, `only ${sent} of ${REQUESTS} requests could be sent`);

  const health = await s.get("/healthz");
  assert.equal(health.ok, true, "the service is still healthy");
  const after = await snapshot(s.engine.kv);
  assert.deepEqual([...after], [...before], "nothing stored changed");
  assert.ok(!s.logs.some((l) => l.includes("failed (reference")), s.logs.join("\n"));
  // and it still works
  const run = await s.post("/api/pipelines/demo/runs", {}, 201, TOKEN);
  await s.waitForStatus(run.id, ["succeeded"]);
});

Deno.test("fuzz: raw malformed HTTP gets a 4xx or a closed connection, never a 5xx", async () => {
  await using s = await startService({ token: TOKEN });
  const port = s.server.addr.port;
  const raw = [
    `POST /api/pipelines/demo/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 99999999\r\n\r\n{}`,
    "POST /api/pipelines/demo/runs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    `POST /api/pipelines/demo/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
    `POST /api/pipelines/demo/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    `GET /api/runs HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(200_000)}\r\n\r\n`,
    "GET /api/runs/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /api/runs HTTP/1.0\r\n\r\n",
    "BREW /coffee HTCPCP/1.0\r\n\r\n",
    "\u0000\u0001\u0002garbage\r\n\r\n",
    `GET /${"x".repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
  ];
  for (const request of raw) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await conn.write(new TextEncoder().encode(request)).catch(() => 0);
      const buffer = new Uint8Array(4096);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        conn.read(buffer).catch(() => null),
        new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), 3000))),
      ]).finally(() => clearTimeout(timer));
      const head = n ? new TextDecoder().decode(buffer.subarray(0, n)) : "";
      const status = Number(head.match(/^HTTP\/1\.[01] (\d{3})/)?.[1] ?? 0);
      assert.ok(status < 500, `${JSON.stringify(request.slice(0, 80))} → ${head.slice(0, 200)}`);
    } finally {
      conn.close();
    }
  }
  assert.equal((await s.get("/healthz")).ok, true);
  assert.deepEqual((await s.get("/api/runs")).runs, [], "no raw request created a run");
});
