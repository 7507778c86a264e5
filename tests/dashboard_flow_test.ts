/**
 * The dashboard shows flow control, in a real headless Chromium against the real service:
 * why a queued run is held and its priority, in the runs list and on the run page, and a
 * pipeline's flow control and retention on its page. Held runs are made through the store
 * (one checked commit through the index moves), with no worker to claim them.
 *
 * @module
 */
import assert from "node:assert/strict";
import { openBrowser, shot, skipBrowser } from "./_support/browser.ts";
import { hold, tempKv } from "./_support/helpers.ts";
import { metered, plain } from "./fixtures/flow_surfaces.ts";
import { openEngine } from "../lib/mod.ts";
import { serve } from "../lib/http/service.ts";

Deno.test({
  name: "dashboard in Chromium: held runs say why and show their priority; pipelines their flow",
  ignore: skipBrowser,
  async fn() {
    await using kv = await tempKv();
    const engine = await openEngine({ path: kv.path, pipelines: [metered, plain], pollMs: 50 });
    const limited = await engine.store.createRun(metered, { params: { customer: "acme" } });
    const throttled = await engine.store.createRun(metered, { params: { customer: "globex" } });
    const free = await engine.store.createRun(plain);
    const now = Date.now();
    await hold(engine.kv, limited.id, {
      by: "limit",
      key: "acme",
      since: now,
      until: null,
      reason: "2 of 2 slots of key 'acme' taken",
    });
    await hold(engine.kv, throttled.id, {
      by: "throttle",
      key: "*",
      since: now,
      until: now + 3_600_000,
      reason: "5 starts in the last 1m",
    });
    const port = Promise.withResolvers<number>();
    const server = serve(engine, { port: 0, log: () => {}, onListen: (p) => port.resolve(p) });
    const url = `http://127.0.0.1:${await port.promise}`;
    try {
      await using browser = await openBrowser();
      const { tab: page, problems } = browser;

      // the runs list: a badge with the cause, the reason on hover, the priority
      await page.goto(`${url}/`);
      await page.locator("#runs-table").waitFor();
      const row = page.locator("#runs-table tr", { hasText: limited.id });
      const badge = row.locator('.s-held[data-held="limit"]');
      assert.match(await badge.innerText(), /held: limit — 2 of 2 slots of key 'acme' taken/);
      assert.equal(await badge.getAttribute("title"), "2 of 2 slots of key 'acme' taken");
      assert.match(await row.innerText(), /priority 3/);
      const other = page.locator("#runs-table tr", { hasText: throttled.id });
      assert.match(
        await other.locator('.s-held[data-held="throttle"]').innerText(),
        /held: throttle until \d\d:\d\d:\d\d/,
      );
      const plainRow = page.locator("#runs-table tr", { hasText: free.id });
      assert.equal(await plainRow.locator(".s-held").count(), 0);
      assert.doesNotMatch(await plainRow.innerText(), /priority/);
      await page.screenshot({ path: shot("flow-runs-list.png"), fullPage: true });

      // the run page: why it waits and when it starts, its priority and its keys
      await page.goto(`${url}/runs/${limited.id}`);
      const panel = page.locator("#run-held");
      assert.match(await panel.innerText(), /held: limit — 2 of 2 slots of key 'acme' taken/);
      assert.match(await panel.innerText(), /when a slot of its key frees/);
      assert.equal(await page.locator("#run-priority").innerText(), "3");
      const flow = await page.locator("#run-flow").innerText();
      assert.match(flow, /limit 2 at once, key acme \(scope metered\)/);
      assert.match(flow, /throttle 5 per 1m/);
      assert.match(flow, /debounced, key \*/);
      await page.screenshot({ path: shot("flow-run-held.png"), fullPage: true });

      await page.goto(`${url}/runs/${throttled.id}`);
      assert.match(
        await page.locator("#run-held").innerText(),
        /held: throttle until \d\d:\d\d:\d\d\s+5 starts in the last 1m\. It starts once/,
      );

      await page.goto(`${url}/runs/${free.id}`);
      assert.equal(await page.locator("#run-held").count(), 0);
      assert.equal(await page.locator("#run-priority").innerText(), "0");
      assert.equal(await page.locator("#run-flow").count(), 0);

      // the pipeline page: its flow control, line by line, and its retention
      await page.goto(`${url}/pipelines/metered`);
      const config = await page.locator("#pipeline-flow").innerText();
      for (
        const line of [
          "limit 2 at once per key (scope metered)",
          "throttle 5 per 1m (scope metered)",
          "debounce quiet 30s, at most 5m",
          "priority 3",
          "step send: limit 4 at once per key (scope metered/send)",
          "step send: throttle 10 per 1s (scope mail-api)",
        ]
      ) assert.ok(config.includes(line), `${line} in ${config}`);
      assert.match(
        await page.locator("dl").first().innerText(),
        /kept 7d after success,\s+60d after failure,\s+30d after cancel/,
      );
      await page.screenshot({ path: shot("flow-pipeline.png"), fullPage: true });
      await page.goto(`${url}/pipelines/plain`);
      assert.equal(await page.locator("#pipeline-flow").innerText(), "none");

      // readable on a phone
      await page.setViewportSize({ width: 390, height: 844 });
      await page.goto(`${url}/`);
      await page.screenshot({ path: shot("flow-runs-list-phone.png"), fullPage: true });
      const width = await page.evaluate<number>("document.documentElement.scrollWidth");
      assert.ok(width <= 390, `no sideways scrolling on a phone (page is ${width}px wide)`);
      assert.deepEqual(problems, []);
    } finally {
      await server.shutdown();
      await engine.close();
    }
  },
});
