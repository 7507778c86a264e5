/**
 * The dashboard's Pause and Unpause buttons, pressed in a real headless Chromium against
 * the real service and a worker on loopback: a run paused mid-step finishes that step,
 * starts no other, shows `paused` live and goes on after Unpause; a pipeline paused from
 * its page says so on its page and the home page, its new run waits as paused, and Unpause
 * starts it. A side ledger records which step bodies started.
 *
 * @module
 */
import assert from "node:assert/strict";
import { openBrowser, shot, skipBrowser } from "./_support/browser.ts";
import { startService } from "./_support/http.ts";
import { waitFor } from "./_support/helpers.ts";
import { z } from "zod";
import { type Pipeline, pipeline, step } from "../lib/mod.ts";

const TOKEN = "dashboard-pause-token-5c2e";

Deno.test({
  name: "dashboard in Chromium: Pause and Unpause a run mid-step and a pipeline, with the token",
  ignore: skipBrowser,
  async fn() {
    // each body of the first run waits until the test lets it end
    const started: string[] = [];
    const gates = new Map<string, () => void>();
    const gated = (name: string) =>
      step(name, async (_inputs, ctx) => {
        started.push(`${ctx.run.id} ${name}`);
        if (ctx.run.params && (ctx.run.params as { fast?: boolean }).fast) return name;
        await new Promise<void>((resolve) => gates.set(`${ctx.run.id} ${name}`, resolve));
        return name;
      });
    const one = gated("one");
    const two = step("two", { needs: { one } }, async (_i, ctx) => {
      started.push(`${ctx.run.id} two`);
      return await Promise.resolve("two");
    });
    const chain = pipeline("chain", {
      params: z.object({ fast: z.boolean().optional() }),
      steps: [one, two],
    });
    await using s = await startService({
      pipelines: [chain as Pipeline<unknown>],
      token: TOKEN,
    });
    const gateOf = async (runId: string, name: string) => {
      await waitFor(`${name} of ${runId} running`, () => gates.has(`${runId} ${name}`));
      return gates.get(`${runId} ${name}`)!;
    };
    await using browser = await openBrowser();
    const { tab, problems } = browser;
    await tab.evaluate(() => Object.assign(globalThis, { kvflowNoReload: true }));

    // 1. a run in its first step: Pause asks for the token, then pauses after that step
    const run = await s.post("/api/pipelines/chain/runs", { params: {} }, 201, TOKEN);
    const releaseOne = await gateOf(run.id, "one");
    await tab.goto(`${s.url}/runs/${run.id}`);
    await tab.locator('#run-status[data-status="running"]').waitFor();
    await tab.getByRole("button", { name: "Pause", exact: true }).click();
    assert.match(await tab.locator("#action-status").innerText(), /Enter the token first/);
    await tab.locator("#token").fill(TOKEN);
    await tab.getByRole("button", { name: "Save token" }).click();
    await tab.locator("#action-status", { hasText: "Pausing" }).waitFor();
    releaseOne();
    await tab.locator('#run-status[data-status="paused"]').waitFor({ timeout: 15_000 });
    const paused = await s.engine.store.requireRun(run.id);
    assert.equal(paused.status, "paused");
    assert.equal(paused.paused?.by, "run");
    assert.equal((await s.engine.store.getSteps(run.id)).get("one")?.status, "succeeded");
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(started, [`${run.id} one`], "no step started after the pause");
    await tab.screenshot({ path: shot("run-paused.png"), fullPage: true });

    // 2. Unpause: the run goes on from its checkpoint and succeeds
    await tab.getByRole("button", { name: "Unpause", exact: true }).click();
    await tab.locator('#run-status[data-status="succeeded"]').waitFor({ timeout: 15_000 });
    assert.deepEqual(started, [`${run.id} one`, `${run.id} two`]);

    // 3. the pipeline page's Pause pipeline: said on its page and on the home page
    await tab.goto(`${s.url}/pipelines/chain`);
    await tab.getByRole("button", { name: "Pause pipeline", exact: true }).click();
    await tab.locator("#pipeline-paused").waitFor({ timeout: 15_000 });
    assert.match(await tab.locator("#pipeline-paused").innerText(), /paused since/);
    assert.ok((await s.engine.pausedPipelines()).has("chain"));
    const held = await s.post("/api/pipelines/chain/runs", { params: { fast: true } }, 201, TOKEN);
    await waitFor("the new run paused", async () => {
      return (await s.engine.store.getRun(held.id))?.status === "paused";
    });
    assert.equal(started.filter((l) => l.startsWith(held.id)).length, 0, "it starts nothing");
    await tab.goto(`${s.url}/`);
    const card = tab.locator(".card", { hasText: "chain" });
    assert.match(await card.innerText(), /⏸ paused[^]*none while paused/);
    await tab.screenshot({ path: shot("home-pipeline-paused.png"), fullPage: true });

    // 4. Unpause pipeline: the run it held starts and succeeds
    await tab.goto(`${s.url}/pipelines/chain`);
    await tab.getByRole("button", { name: "Unpause pipeline", exact: true }).click();
    await tab.locator("#pipeline-paused").waitFor({ state: "detached", timeout: 15_000 });
    await waitFor("the held run succeeded", async () => {
      return (await s.engine.store.getRun(held.id))?.status === "succeeded";
    });
    assert.deepEqual(problems, []);
  },
});
