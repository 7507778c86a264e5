/**
 * The dashboard's events and waits, against the real service on loopback: the events
 * pages (each event with the runs it woke or started, linked), a waiting run's page (what
 * it waits for, Approve / Reject, parent and child links), readable without JavaScript;
 * and in headless Chromium: open a waiting run, enter the token, press Approve, watch the
 * run finish, on a desktop and on a phone.
 *
 * @module
 */
import { openBrowser, SCREENSHOTS, shot, skipBrowser } from "./_support/browser.ts";
import assert from "node:assert/strict";
import { type Service, startService } from "./_support/http.ts";
import { gatePipelines } from "./_support/gates.ts";
import { waitFor } from "./_support/helpers.ts";
import { sendButtons } from "../lib/dashboard/wait_panel.tsx";

const TOKEN = "dashboard-events-token-31d7";
const DATE = "2026-11-01";

async function service(): Promise<Service> {
  return await startService({ pipelines: gatePipelines(), token: TOKEN });
}

async function waitingGate(s: Service, date = DATE): Promise<string> {
  const run = await s.post("/api/pipelines/gate/runs", { logicalDate: date }, 201, TOKEN);
  await waitFor("the approval wait", async () => {
    const r = await s.engine.store.getRun(run.id);
    return r?.status === "waiting" && r.waitingFor?.kind === "event";
  });
  return run.id;
}

async function page(s: Service, path: string): Promise<{ status: number; body: string }> {
  const response = await fetch(s.url + path);
  return { status: response.status, body: await response.text() };
}

Deno.test("sendButtons: Approve / Reject for an approval, one button per event otherwise", () => {
  assert.deepEqual(sendButtons(["order.approved", "order.rejected"]), [
    { event: "order.approved", label: "Approve" },
    { event: "order.rejected", label: "Reject" },
  ]);
  assert.deepEqual(sendButtons(["a.done", "b.failed"]).map((b) => b.label), [
    "Send a.done",
    "Send b.failed",
  ]);
  assert.deepEqual(sendButtons(["x.approved"]).map((b) => b.label), ["Send x.approved"]);
});

Deno.test("dashboard: a waiting run's page says what it waits for, with Approve / Reject and the shell command", async () => {
  await using s = await service();
  const runId = await waitingGate(s);
  const { status, body } = await page(s, `/runs/${runId}`);
  assert.equal(status, 200);
  const panel = /<div id="live-wait"[\s\S]*?<\/section><\/div>/.exec(body)?.[0] ?? "";
  assert.match(panel, /Waiting for t\.approved or t\.rejected/);
  assert.match(panel, /<code>t\.approved<\/code> or <code>t\.rejected<\/code>/);
  assert.match(panel, /<code>date = 2026-11-01<\/code>/);
  assert.match(panel, /Since<\/dt><dd><time datetime="/);
  assert.match(
    panel,
    /Times out<\/dt><dd><time datetime="[^"]+">[^<]+<\/time> <small>in 2\d h \d+ min<\/small>/,
  );
  assert.match(panel, /data-action="send"[^>]*data-event="t\.approved"[^>]*>Approve</);
  assert.match(panel, /data-event="t\.rejected"[^>]*>Reject</);
  assert.match(panel, /data-data="{&quot;date&quot;:&quot;2026-11-01&quot;}"/);
  assert.match(panel, /id="send-reason"/);
  assert.match(
    panel,
    /deno task send t\.approved --data &#39;{&quot;date&quot;:&quot;2026-11-01&quot;}&#39;/,
  );
  // without JavaScript the facts are all there; the buttons say they need it
  assert.match(body, /class="no-js-only muted">The buttons need JavaScript/);
  assert.ok(!body.includes(TOKEN));

  await s.post("/api/events", { name: "t.approved", data: { date: DATE } }, 201, TOKEN);
  await s.waitForStatus(runId, ["succeeded"]);
  const after = await page(s, `/runs/${runId}`);
  assert.match(after.body, /<div id="live-wait" data-live=""><\/div>/, "no panel once it ended");
});

Deno.test("dashboard: parent and child runs link both ways; a sleeping child says until when", async () => {
  await using s = await service();
  const parent = await s.post("/api/pipelines/parent/runs", {}, 201, TOKEN);
  const childId = `${parent.id}:call`;
  await waitFor("the child sleeps", async () => {
    const r = await s.engine.store.getRun(childId);
    return r?.status === "waiting" && r.waitingFor?.kind === "sleep";
  });
  await waitFor("the parent waits", async () => {
    const r = await s.engine.store.getRun(parent.id);
    return r?.status === "waiting" && r.waitingFor?.kind === "child";
  });
  const childHref = `/runs/${encodeURIComponent(childId)}`;
  const p = await page(s, `/runs/${parent.id}`);
  assert.match(p.body, /Waiting for a child run/);
  assert.match(
    p.body,
    new RegExp(`Child runs</dt><dd><ul class="effects"><li><a href="${childHref}"`),
  );
  assert.match(p.body, new RegExp(`Child run</dt><dd><a href="${childHref}"`));
  const c = await page(s, childHref);
  assert.equal(c.status, 200);
  assert.match(c.body, new RegExp(`Parent run</dt><dd><a href="/runs/${parent.id}"[^>]*>`));
  assert.match(c.body, /step call/);
  assert.match(c.body, /<h2 id="waiting-for">Sleeping<\/h2>/);
  assert.match(c.body, /Until<\/dt>/);
  assert.ok(!/data-action="send"/.test(c.body), "a sleep has nothing to send");
});

Deno.test("dashboard: /events lists events with the runs each woke or started; /events/:id shows one", async () => {
  await using s = await service();
  const runId = await waitingGate(s);
  await s.post(
    "/api/events",
    { name: "t.rejected", data: { date: DATE }, id: "no-reason" },
    201,
    TOKEN,
  );
  await s.post("/api/events", { name: "t.approved", data: { date: DATE }, id: "ok-1" }, 201, TOKEN);
  await s.post(
    "/api/events",
    { name: "t.refunded", data: { orderId: "Z9" }, id: "ref-1" },
    201,
    TOKEN,
  );
  await s.waitForStatus(runId, ["succeeded"]);

  const list = await page(s, "/events");
  assert.equal(list.status, 200);
  assert.match(list.body, /<a href="\/events">Events<\/a>/, "linked from the nav");
  const rows = [...list.body.matchAll(/<tr data-event="([^"]+)">/g)].map((m) => m[1]);
  assert.deepEqual(rows, ["ref-1", "ok-1", "no-reason"], "newest first");
  assert.match(list.body, new RegExp(`woke <a href="/runs/${runId}" class="mono">${runId}</a>`));
  assert.match(
    list.body,
    /started <a href="\/runs\/refunds%3Aon%3Aref-1" class="mono">refunds:on:ref-1<\/a>/,
  );
  assert.match(list.body, new RegExp(`did not match <a href="/runs/${runId}"`));

  const named = await page(s, "/events?name=t.approved");
  assert.deepEqual([...named.body.matchAll(/<tr data-event="([^"]+)">/g)].map((m) => m[1]), [
    "ok-1",
  ]);
  const paged = await page(s, "/events?limit=2");
  const next = /href="(\/events\?limit=2&amp;cursor=[^"]+)">Older events/.exec(paged.body)?.[1];
  assert.ok(next, "a link to older events");
  const older = await page(s, next.replaceAll("&amp;", "&"));
  assert.deepEqual([...older.body.matchAll(/<tr data-event="([^"]+)">/g)].map((m) => m[1]), [
    "no-reason",
  ]);

  const one = await page(s, "/events/ok-1");
  assert.equal(one.status, 200);
  assert.match(one.body, /<code>date = 2026-11-01<\/code>/);
  assert.match(one.body, /&quot;date&quot;: &quot;2026-11-01&quot;/);
  assert.match(
    one.body,
    new RegExp(`woke <a href="/runs/${runId}"[^>]*>${runId}</a><small> at approval</small>`),
  );

  const started = await page(s, "/runs/refunds%3Aon%3Aref-1");
  assert.match(started.body, /event by event <a href="\/events\/ref-1" class="mono">ref-1<\/a>/);

  assert.equal((await page(s, "/events/nope")).status, 404);
  assert.equal((await page(s, "/events?name=bad%20name")).status, 400);
  assert.equal((await page(s, "/events?limit=0")).status, 400);
  assert.equal((await page(s, "/events?cursor=abc")).status, 400);
});

// ---- the browser ----

Deno.test({
  name: "dashboard in Chromium: open a waiting run, press Approve with the token, watch it finish",
  ignore: skipBrowser,
  async fn() {
    await using s = await service();
    const runId = await waitingGate(s);
    const rejectedId = await waitingGate(s, "2026-11-02");
    await using browser = await openBrowser();
    const { tab, problems } = browser;

    // 1. the waiting run says what it waits for
    await tab.goto(`${s.url}/runs/${runId}`);
    assert.equal(await tab.locator("#run-status").getAttribute("data-status"), "waiting");
    const panel = tab.locator("#live-wait");
    assert.match(await panel.innerText(), /Waiting for t\.approved or t\.rejected/);
    assert.match(await panel.innerText(), /date = 2026-11-01/);
    await tab.screenshot({ path: shot("run-waiting.png"), fullPage: true });

    // 2. Approve asks for the token first, then sends the event; the run finishes live
    await tab.evaluate(() => Object.assign(globalThis, { kvflowNoReload: true }));
    await tab.getByRole("button", { name: "Approve" }).click();
    assert.match(await tab.locator("#action-status").innerText(), /Enter the token first/);
    await tab.locator("#token").fill(TOKEN);
    await tab.getByRole("button", { name: "Save token" }).click();
    await tab.locator("#action-status", { hasText: "Sent t.approved" }).waitFor();
    await tab.locator('#run-status[data-status="succeeded"]').waitFor({ timeout: 15_000 });
    assert.equal(await tab.evaluate(() => "kvflowNoReload" in globalThis), true);
    await tab.locator("#live-wait section").waitFor({ state: "detached" });
    await tab.locator('.node[data-step="finish"].s-succeeded').waitFor();
    assert.equal((await s.engine.store.requireRun(runId)).status, "succeeded");
    const { events } = await s.engine.listEvents({ name: "t.approved" });
    assert.equal(events.length, 1);
    assert.equal(events[0].source, "http");
    assert.deepEqual(events[0].data, { date: DATE });
    await tab.screenshot({ path: shot("run-approved.png"), fullPage: true });

    // 3. Reject with a reason fails the run with it
    await tab.goto(`${s.url}/runs/${rejectedId}`);
    await tab.locator("#send-reason").fill("numbers do not add up");
    await tab.getByRole("button", { name: "Reject" }).click();
    await tab.locator('#run-status[data-status="failed"]').waitFor({ timeout: 15_000 });
    await tab.locator("#live-problems", { hasText: "Rejected: numbers do not add up" }).waitFor();

    // 4. the events page links what each event did
    await tab.goto(`${s.url}/events`);
    await tab.locator(`#events-table a[href="/runs/${runId}"]`).waitFor();
    await tab.screenshot({ path: shot("events.png"), fullPage: true });
    await tab.locator(`#events-table a[href="/runs/${runId}"]`).click();
    await tab.waitForURL(`**/runs/${runId}`);

    // 5. on a phone: no sideways scrolling, the buttons within reach
    const third = await waitingGate(s, "2026-11-03");
    await tab.setViewportSize({ width: 390, height: 844 });
    await tab.goto(`${s.url}/runs/${third}`);
    const width = await tab.evaluate<number>("document.documentElement.scrollWidth");
    assert.ok(width <= 390, `no sideways scrolling on a phone (page is ${width}px wide)`);
    await tab.getByRole("button", { name: "Approve" }).waitFor();
    await tab.screenshot({ path: shot("run-waiting-phone.png"), fullPage: true });
    await tab.goto(`${s.url}/events`);
    const eventsWidth = await tab.evaluate<number>("document.documentElement.scrollWidth");
    assert.ok(eventsWidth <= 390, `events page is ${eventsWidth}px wide on a phone`);
    await tab.screenshot({ path: shot("events-phone.png"), fullPage: true });

    assert.deepEqual(problems, []);
    console.error(`dashboard screenshots: ${SCREENSHOTS.pathname}`);
  },
});
