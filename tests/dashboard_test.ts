/**
 * The dashboard: server-rendered pages checked as HTML, and the 3 AM flow in a real
 * headless Chromium (Debian's `chromium`, driven by playwright-core) against the real
 * service: open a failed run, see why, enter the token, press Resume, watch it succeed.
 *
 * @module
 */
import { openBrowser, SCREENSHOTS, shot, skipBrowser } from "./_support/browser.ts";
import assert from "node:assert/strict";
import { z } from "zod";
import { type Engine, openEngine, pipeline, step } from "../lib/mod.ts";
import { dashboard, mayReadRequest } from "../lib/dashboard/mod.tsx";
import { app, serve } from "../lib/http/service.ts";
import { tempKv, waitFor } from "./_support/helpers.ts";

const TOKEN = "dashboard-test-token-8c1f2e";

/** A payroll pipeline whose `publish` step fails until `world.fixed` flips. */
function payroll(world: { fixed: boolean }) {
  const load = step("load", (_inputs, ctx) => {
    ctx.log.info("loaded employees", { count: 3 });
    return [1200, 3400, 560];
  });
  const totals = step("totals", { needs: { load } }, ({ load }) => load.reduce((a, b) => a + b));
  const slips = step("slips", {
    needs: { load },
    items: ({ load }) => load,
  }, async (cents, ctx) => {
    const ref = await ctx.artifact(`slip-${ctx.item.index}.txt`, `pay ${cents}`);
    return ref.name;
  });
  const publish = step("publish", {
    needs: { totals, slips },
    retry: { attempts: 2, delay: "5ms" },
  }, ({ totals }, ctx) => {
    ctx.log.warn("ledger refused the batch", { status: 503, total: totals });
    if (!world.fixed) throw new Error("Ledger API answered 503: batch <b>payroll</b> refused");
    return { published: totals };
  });
  return pipeline("payroll", {
    description: "Loads employees, totals pay, renders slips, publishes to the ledger",
    params: z.object({ month: z.string().default("2026-11"), dryRun: z.boolean().optional() }),
    steps: [load, totals, slips, publish],
  });
}

const hello = pipeline("hello", { steps: [step("greet", () => "hi")] });

interface Fixture extends AsyncDisposable {
  engine: Engine;
  world: { fixed: boolean };
  failed: string;
  succeeded: string;
}

/** An engine on a temp KV file with one failed payroll run and one succeeded hello run. */
async function fixture(): Promise<Fixture> {
  const kv = await tempKv();
  const world = { fixed: false };
  const engine = await openEngine({
    path: kv.path,
    pipelines: [payroll(world), hello],
    onAlert: () => {},
    pollMs: 50,
  });
  const failedRun = await engine.store.createRun(engine.pipeline("payroll"), {
    params: { month: "2026-10" },
    logicalDate: "2026-10-31",
  });
  assert.equal((await engine.runToEnd(failedRun.id)).status, "failed");
  const okRun = await engine.store.createRun(engine.pipeline("hello"), { trigger: "http" });
  assert.equal((await engine.runToEnd(okRun.id)).status, "succeeded");
  return {
    engine,
    world,
    failed: failedRun.id,
    succeeded: okRun.id,
    async [Symbol.asyncDispose]() {
      await engine.close();
      await kv[Symbol.asyncDispose]();
    },
  };
}

async function html(
  engine: Engine,
  path: string,
  init?: RequestInit,
  options: { token?: string; readToken?: string } = { token: TOKEN },
): Promise<{ status: number; body: string; headers: Headers }> {
  const response = await dashboard(engine, options).request(path, init);
  return { status: response.status, body: await response.text(), headers: response.headers };
}

Deno.test("dashboard: GET / lists runs with status, pipeline, trigger, logical date and duration", async () => {
  await using f = await fixture();
  const { status, body, headers } = await html(f.engine, "/");
  assert.equal(status, 200);
  assert.match(headers.get("content-type") ?? "", /text\/html/);
  assert.match(headers.get("content-security-policy") ?? "", /script-src 'self'/);
  // failed runs are called out above the list, with their error
  assert.match(body, /1 failed run needs a look/);
  assert.match(body, /publish: Ledger API answered 503/);
  const table = body.slice(body.indexOf('id="runs-table"'));
  for (
    const fact of [
      f.failed,
      f.succeeded,
      'data-status="failed"',
      'data-status="succeeded"',
      ">payroll</a>",
      ">hello</a>",
      ">cli</td>",
      ">http</td>",
      ">2026-10-31</td>",
    ]
  ) {
    assert.ok(table.includes(fact), `runs table shows ${fact}`);
  }
  assert.match(table, /data-label="Duration">\d+ ms</);
  // pipelines with their next scheduled run (none yet) and a way to trigger
  assert.match(body, /id="pipelines"/);
  assert.match(body, /no schedule/);
  assert.match(body, /href="\/pipelines\/payroll#trigger"/);
});

Deno.test("dashboard: filters are plain links and forms; an unknown status is a 400 page", async () => {
  await using f = await fixture();
  const failed = await html(f.engine, "/?status=failed");
  assert.equal(failed.status, 200);
  const runsOf = (body: string) =>
    body.slice(body.indexOf('id="runs-table"'), body.indexOf('id="pipelines"'));
  assert.ok(runsOf(failed.body).includes(f.failed));
  assert.ok(!runsOf(failed.body).includes(f.succeeded));
  assert.match(failed.body, /<option value="failed" selected/);

  const hello = await html(f.engine, "/?pipeline=hello");
  assert.ok(hello.body.includes(f.succeeded));
  assert.ok(!runsOf(hello.body).includes(f.failed));
  assert.match(hello.body, /href="\/\?pipeline=hello&amp;status=failed"/);

  const none = await html(f.engine, "/?pipeline=hello&status=failed");
  assert.match(none.body, /No runs match/);

  const bad = await html(f.engine, "/?status=exploded");
  assert.equal(bad.status, 400);
  assert.match(bad.body, /Unknown status &#39;exploded&#39;/);
  assert.equal((await html(f.engine, "/?limit=0")).status, 400);
  assert.equal((await html(f.engine, "/?cursor=%%%")).status, 400);
});

Deno.test("dashboard: the list pages through older runs with a cursor link", async () => {
  await using f = await fixture();
  for (let i = 0; i < 4; i++) await f.engine.store.createRun(f.engine.pipeline("hello"));
  const first = await html(f.engine, "/?pipeline=hello&limit=3");
  const next = first.body.match(/href="(\/\?pipeline=hello&amp;limit=3&amp;cursor=[^"]+)"/);
  assert.ok(next, "an 'Older runs' link keeps the filter and limit");
  const second = await html(f.engine, next[1].replaceAll("&amp;", "&"));
  assert.equal(second.status, 200);
  const ids = (text: string) => [...text.matchAll(/href="\/runs\/([^"]+)"/g)].map((m) => m[1]);
  const runsOf = (body: string) =>
    body.slice(body.indexOf('id="runs-table"'), body.indexOf('id="pipelines"'));
  const firstIds = new Set(ids(runsOf(first.body)));
  const secondIds = ids(runsOf(second.body));
  assert.equal(firstIds.size, 3);
  assert.equal(secondIds.length, 2, "5 hello runs: 3 on the first page, 2 on the second");
  for (const id of secondIds) assert.ok(!firstIds.has(id), `${id} is on one page only`);
});

Deno.test("dashboard: a failed run's page puts the error, stack and logs first, then graph, timeline, artifacts", async () => {
  await using f = await fixture();
  const { status, body } = await html(f.engine, `/runs/${f.failed}`);
  assert.equal(status, 200);
  const at = (text: string) => {
    const i = body.indexOf(text);
    assert.ok(i >= 0, `page shows ${text}`);
    return i;
  };
  const problem = at("Failed at step publish");
  const error = at("Ledger API answered 503: batch &lt;b&gt;payroll&lt;/b&gt; refused");
  const stack = at('<pre class="stack">Error: Ledger API answered 503');
  const logs = at("ledger refused the batch");
  const resume = at('data-action="resume"');
  const graph = at('id="live-graph"');
  const timeline = at('id="live-timeline"');
  const artifacts = at("<h2>Artifacts</h2>");
  assert.ok(problem < error && error < stack && stack < logs, "the failure reads top down");
  assert.ok(logs < resume && resume < graph && graph < timeline && timeline < artifacts);
  assert.match(body, /after 2 attempts/);
  assert.match(body, /deno task resume /);
  // the graph shows needs; the timeline has one bar per attempt, retries on one row
  assert.match(body, /data-step="publish"><b>publish<\/b><small data-state="">✗ failed/);
  assert.match(body, /needs slips, totals/);
  const bars = [...body.matchAll(/class="bar s-(\w+)" href="#step-publish"/g)].map((m) => m[1]);
  assert.deepEqual(bars, ["failed", "failed"]);
  assert.match(body, /class="label" role="listitem">slips\[2\]</);
  // artifacts link to the API
  for (let i = 0; i < 3; i++) {
    assert.ok(
      body.includes(`href="/api/runs/${f.failed}/artifacts/slip-${i}.txt"`),
      `artifact slip-${i}.txt is linked`,
    );
  }
  // buttons by state: a failed run can be resumed or rerun, not cancelled
  assert.match(body, /data-action="resume" data-url="\/api\/runs\/[^"]+\/resume"\s*>/);
  assert.match(body, /data-action="cancel" data-url="[^"]+" disabled/);
  assert.match(body, /<option value="publish" selected/);
  assert.match(body, /Alert 1/);
});

Deno.test("dashboard: an active run's page shows what runs now and what retries when, and offers Cancel", async () => {
  const gate = Promise.withResolvers<void>();
  const slow = step("slow", async () => await gate.promise);
  const flaky = step("flaky", { retry: { attempts: 2, delay: "1h" } }, () => {
    throw new Error("Rate limited: try again in an hour");
  });
  const busy = pipeline("busy", { steps: [slow] });
  const later = pipeline("later", { steps: [flaky] });
  await using engine = await openEngine({
    path: ":memory:",
    pipelines: [busy, later],
    onAlert: () => {},
  });

  const running = await engine.store.createRun(busy);
  const ended = engine.runToEnd(running.id);
  await waitFor(
    "the slow step to start",
    async () => (await engine.store.getSteps(running.id)).get("slow")?.status === "running",
  );
  const page = await html(engine, `/runs/${running.id}`);
  assert.match(page.body, /id="run-status" class="badge s-running"/);
  assert.match(page.body, /Connecting for live updates/);
  assert.match(page.body, /class="bar s-running"/);
  assert.match(page.body, /so far/);
  assert.match(page.body, /data-action="cancel" data-url="[^"]+"\s*>/);
  assert.match(page.body, /data-action="resume" data-url="[^"]+" disabled/);
  assert.match((await html(engine, "/")).body, /<tr data-active="">/);
  gate.resolve();
  assert.equal((await ended).status, "succeeded");

  const waiting = await engine.store.createRun(later);
  await engine.worker.execute(waiting.id);
  assert.equal((await engine.store.requireRun(waiting.id)).status, "waiting");
  const retry = await html(engine, `/runs/${waiting.id}`);
  assert.match(retry.body, /<h2 id="retrying">Retrying<\/h2>/);
  assert.match(retry.body, /flaky: attempt 1 failed: Rate limited: try again in an hour/);
  assert.match(retry.body, /Next attempt <time datetime="/);
  await engine.store.cancel(waiting.id);
  assert.match((await html(engine, `/runs/${waiting.id}`)).body, /The run was cancelled/);
});

Deno.test("dashboard: unknown runs and pipelines are HTML 404 pages", async () => {
  await using f = await fixture();
  for (const path of ["/runs/20990101-000000-nothere", "/runs/%3Cscript%3E", "/pipelines/nope"]) {
    const page = await html(f.engine, path);
    assert.equal(page.status, 404, path);
    assert.match(page.headers.get("content-type") ?? "", /text\/html/);
    assert.ok(!page.body.includes("<script>"), "the id is escaped");
  }
});

Deno.test("dashboard: pages escape what steps and params contain, and never render a token", async () => {
  await using f = await fixture();
  const evil = "<img src=x onerror=alert(1)>";
  const run = await f.engine.store.createRun(f.engine.pipeline("payroll"), {
    params: { month: evil },
  });
  for (const path of ["/", `/runs/${run.id}`, `/runs/${f.failed}`, "/pipelines/payroll"]) {
    const page = await html(f.engine, path, undefined, { token: TOKEN, readToken: "read-secret" });
    assert.ok(!page.body.includes(TOKEN), `${path} never shows the token`);
    assert.ok(!page.body.includes("read-secret"), `${path} never shows the read token`);
    const withBearer = await html(f.engine, path, {
      headers: { authorization: `Bearer ${TOKEN}` },
    }, { token: TOKEN, readToken: "read-secret" });
    assert.equal(withBearer.status, 200, path);
    assert.ok(!withBearer.body.includes(TOKEN));
    assert.ok(!withBearer.body.includes(evil), `${path} escapes params`);
    assert.ok(!withBearer.body.includes("batch <b>payroll"), `${path} escapes errors`);
  }
  const page = await html(f.engine, `/runs/${run.id}`);
  assert.ok(page.body.includes("&lt;img src=x onerror=alert(1)&gt;"));
});

Deno.test("dashboard: a pipeline page shows steps and needs, params, 'no schedule' and a trigger form", async () => {
  await using f = await fixture();
  const { status, body } = await html(f.engine, "/pipelines/payroll");
  assert.equal(status, 200);
  assert.match(body, /Loads employees, totals pay/);
  assert.match(body, /no schedule/);
  assert.match(body, /needs load/);
  assert.match(body, /data-label="Name" class="mono">month</);
  assert.match(body, /data-label="Default" class="mono">&quot;2026-11&quot;</);
  assert.match(body, /data-action="trigger" data-url="\/api\/pipelines\/payroll\/runs"/);
  assert.match(body, /id="token-form"/);
  assert.ok(body.includes(f.failed), "recent runs are listed");
  // without a token the service is loopback-only and the page says no token is needed
  const open = await html(f.engine, "/pipelines/payroll", undefined, {});
  assert.ok(!open.body.includes('id="token-form"'));
  assert.match(open.body, /data-auth="none"/);
});

Deno.test("dashboard: a scheduled pipeline shows its next tick, cron, time zone and policies", async () => {
  const nightly = pipeline("nightly-report", {
    schedule: { cron: "0 3 * * *", timezone: "Europe/Berlin", catchup: "latest" },
    steps: [step("report", () => "done")],
  });
  await using engine = await openEngine({ path: ":memory:", pipelines: [nightly, hello] });
  const list = (await html(engine, "/")).body;
  const card = list.slice(list.indexOf('href="/pipelines/nightly-report"'));
  // 03:00 in Berlin is 01:00 or 02:00 UTC, depending on daylight saving time
  assert.match(card, /Next run<\/dt><dd><span><time datetime="\d{4}-\d\d-\d\dT0[12]:00:00\.000Z"/);
  assert.match(card, /<code>0 3 \* \* \*<\/code> Europe\/Berlin/);
  const helloCard = list.slice(list.indexOf('href="/pipelines/hello"'));
  assert.match(helloCard, /no schedule/);
  const page = (await html(engine, "/pipelines/nightly-report")).body;
  assert.match(page, /missed ticks: the latest one runs; overlap: skip \(at most 1 active\)/);
  assert.equal([...page.matchAll(/<div><time datetime=/g)].length, 3, "the three ticks after it");
});

Deno.test("dashboard: with a read token, pages need the sign-in cookie or a bearer token", async () => {
  await using f = await fixture();
  const options = { token: TOKEN, readToken: "read-secret" };
  const ui = dashboard(f.engine, options);
  const denied = await ui.request(`/runs/${f.failed}?x=1`);
  assert.equal(denied.status, 401);
  const login = await denied.text();
  assert.match(login, /Sign in/);
  assert.ok(!login.includes(f.failed + "</"), "no run facts before signing in");
  assert.match(login, new RegExp(`name="next" value="/runs/${f.failed}\\?x=1"`));

  const form = (token: string, next = "/") =>
    ui.request("/login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token, next }).toString(),
    });
  const refused = await form("wrong");
  assert.equal(refused.status, 401);
  assert.match(await refused.text(), /That token was refused/);
  assert.equal(refused.headers.get("set-cookie"), null);

  const offsite = await form("read-secret", "//evil.example/");
  assert.equal(offsite.status, 303);
  assert.equal(offsite.headers.get("location"), "/");
  await offsite.body?.cancel();

  const signedIn = await form("read-secret", `/runs/${f.failed}`);
  assert.equal(signedIn.status, 303);
  assert.equal(signedIn.headers.get("location"), `/runs/${f.failed}`);
  const cookie = signedIn.headers.get("set-cookie") ?? "";
  assert.match(cookie, /kvflow_session=[0-9a-f]{64}; Path=\/; HttpOnly; SameSite=Strict/);
  assert.ok(!cookie.includes("read-secret"), "the cookie is derived, never the token itself");
  await signedIn.body?.cancel();
  const session = cookie.split(";")[0];
  const page = await ui.request(`/runs/${f.failed}`, { headers: { cookie: session } });
  assert.equal(page.status, 200);
  assert.match(await page.text(), /Sign out/);
  const request = (headers: HeadersInit) => new Request("http://x/api/runs", { headers });
  assert.equal(await mayReadRequest(request({ cookie: session }), options), true);
  assert.equal(await mayReadRequest(request({ cookie: "kvflow_session=00" }), options), false);
  assert.equal(await mayReadRequest(request({ authorization: `Bearer ${TOKEN}` }), options), true);
  assert.equal(await mayReadRequest(request({}), {}), true);
  const forged = await ui.request("/", { headers: { cookie: "kvflow_session=read-secret" } });
  assert.equal(forged.status, 401);
  await forged.body?.cancel();
});

Deno.test("dashboard: the stylesheet and script are served from memory", async () => {
  await using f = await fixture();
  const { body } = await html(f.engine, "/");
  const css = body.match(/href="(\/assets\/kvflow\.css\?v=\w+)"/)![1];
  const js = body.match(/src="(\/assets\/kvflow\.js\?v=\w+)"/)![1];
  const ui = dashboard(f.engine, {});
  const cssResponse = await ui.request(css);
  assert.match(cssResponse.headers.get("content-type") ?? "", /text\/css/);
  assert.match(cssResponse.headers.get("cache-control") ?? "", /immutable/);
  assert.match(await cssResponse.text(), /@media \(max-width: 719px\)/);
  const jsResponse = await ui.request(js);
  assert.match(jsResponse.headers.get("content-type") ?? "", /javascript/);
  assert.match(await jsResponse.text(), /EventSource/);
  const missing = await ui.request("/assets/nope.js");
  assert.equal(missing.status, 404);
  await missing.body?.cancel();
});

Deno.test("dashboard: the service mounts the pages beside the JSON API", async () => {
  await using f = await fixture();
  const service = app(f.engine, { token: TOKEN });
  const page = await service.request(`/runs/${f.failed}`);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /Failed at step publish/);
  const api = await service.request(`/api/runs/${f.failed}`);
  assert.equal(api.status, 200);
  assert.match(api.headers.get("content-type") ?? "", /json/);
  await api.body?.cancel();
});

// ---- the browser ----

Deno.test({
  name:
    "dashboard in Chromium: open a failed run, see why, resume it with the token, watch it succeed live",
  ignore: skipBrowser,
  async fn() {
    await using f = await fixture();
    f.engine.worker.start();
    const server = await listen(f.engine);
    await using browser = await openBrowser();
    const { tab: page, problems } = browser;
    try {
      // 1. the list: the failed run stands out
      await page.goto(`${server.url}/`);
      await page.locator("#runs-table").waitFor();
      assert.match(await page.locator("#attention").innerText(), /1 failed run needs a look/);
      const row = page.locator("#runs-table tr", { hasText: f.failed });
      assert.match(await row.innerText(), /failed[\s\S]*payroll[\s\S]*cli[\s\S]*2026-10-31/);
      await page.screenshot({ path: shot("runs-list.png"), fullPage: true });

      // 2. open it: the error and its logs are the first thing on the page
      await row.locator(`a[href="/runs/${f.failed}"]`).click();
      await page.waitForURL(`**/runs/${f.failed}`);
      const problem = page.locator("#live-problems");
      assert.match(await problem.innerText(), /Failed at step publish/);
      assert.match(await problem.innerText(), /Ledger API answered 503: batch <b>payroll<\/b>/);
      assert.match(await problem.innerText(), /ledger refused the batch/);
      assert.equal(await page.locator("#run-status").getAttribute("data-status"), "failed");
      assert.equal(await page.locator(".bar.s-failed").count(), 2, "a bar per attempt");
      await page.screenshot({ path: shot("run-failed.png"), fullPage: true });

      // 3. the token is asked for once, kept in sessionStorage, never in the page
      await page.locator("#token").fill(TOKEN);
      await page.getByRole("button", { name: "Save token" }).click();
      await page.locator("#token-saved").waitFor();
      assert.equal(await page.evaluate(() => sessionStorage.getItem("kvflow.token")), TOKEN);
      assert.ok(!(await page.content()).includes(TOKEN));

      // 4. the fix is deployed; Resume; the status turns green without a reload
      f.world.fixed = true;
      await page.evaluate(() => Object.assign(globalThis, { kvflowNoReload: true }));
      await page.getByRole("button", { name: "Resume" }).click();
      await page.locator('#run-status[data-status="succeeded"]').waitFor({ timeout: 15_000 });
      assert.equal(await page.evaluate(() => "kvflowNoReload" in globalThis), true);
      await page.locator("#live-problems .panel").waitFor({ state: "detached" });
      await page.locator('.node[data-step="publish"].s-succeeded').waitFor();
      assert.match(await page.locator("#action-status").innerText(), /Resumed/);
      assert.equal((await f.engine.store.requireRun(f.failed)).status, "succeeded");
      await page.screenshot({ path: shot("run-succeeded.png"), fullPage: true });

      // 5. a wrong token is refused and asked for again; the action goes on once it is right
      await page.getByRole("button", { name: "Forget it" }).click();
      await page.locator("#rerun-from").selectOption("totals");
      await page.getByRole("button", { name: "Rerun from step" }).click();
      assert.match(await page.locator("#action-status").innerText(), /Enter the token first/);
      await page.locator("#token").fill("not-the-token");
      await page.getByRole("button", { name: "Save token" }).click();
      await page.locator("#action-status", { hasText: "The token was refused" }).waitFor();
      assert.equal((await f.engine.store.getSteps(f.failed)).get("totals")?.generation, 0);
      await page.locator("#token").fill(TOKEN);
      await page.getByRole("button", { name: "Save token" }).click();
      await page.locator("#action-status", { hasText: "Rerun queued" }).waitFor();
      await page.locator('#run-status[data-status="succeeded"]').waitFor({ timeout: 15_000 });
      assert.equal((await f.engine.store.getSteps(f.failed)).get("totals")?.generation, 1);

      // 6. Trigger from a pipeline page lands on the new run, which is followed live
      await page.goto(`${server.url}/pipelines/payroll`);
      await page.screenshot({ path: shot("pipeline.png"), fullPage: true });
      await page.goto(`${server.url}/pipelines/hello`);
      await page.getByRole("button", { name: "Trigger" }).click();
      await page.waitForURL(/\/runs\/[^/]+$/);
      assert.notEqual(new URL(page.url()).pathname, `/runs/${f.succeeded}`);
      await page.locator('#run-status[data-status="succeeded"]').waitFor({ timeout: 15_000 });
      assert.match(await page.locator("#live-facts").innerText(), /Trigger\s+http/);

      // 7. readable on a phone
      await page.setViewportSize({ width: 390, height: 844 });
      await page.goto(`${server.url}/`);
      await page.screenshot({ path: shot("runs-list-phone.png"), fullPage: true });
      await page.goto(`${server.url}/runs/${f.failed}`);
      const width = await page.evaluate<number>("document.documentElement.scrollWidth");
      assert.ok(width <= 390, `no sideways scrolling on a phone (page is ${width}px wide)`);
      await page.screenshot({ path: shot("run-phone.png"), fullPage: true });
      // the one refused request of step 5 is the only error the browser may report
      assert.deepEqual(problems.filter((p) => !/status of 403 \(Forbidden\)/.test(p)), []);
      console.error(`dashboard screenshots: ${SCREENSHOTS.pathname}`);
    } finally {
      await server.close();
    }
  },
});

/** The real service on a free loopback port, with the token. */
async function listen(engine: Engine): Promise<{ url: string; close(): Promise<void> }> {
  const port = Promise.withResolvers<number>();
  const server = serve(engine, {
    port: 0,
    token: TOKEN,
    log: () => {},
    onListen: (p) => port.resolve(p),
  });
  return { url: `http://127.0.0.1:${await port.promise}`, close: () => server.shutdown() };
}
