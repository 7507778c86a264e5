/**
 * The grid of `/pipelines/<name>`: runs as columns, steps as rows, checked as HTML on a real
 * engine with real runs (succeeded, failed, a fan-out with failed items, a retried step),
 * its paging and bad input, the KV reads it costs, and the page in a real headless
 * Chromium at phone and desktop width (the desktop shot is the README's `docs/grid.png` when `KVFLOW_DOCS_SCREENSHOTS=1`).
 *
 * @module
 */
import { openBrowser, shot, skipBrowser } from "./_support/browser.ts";
import assert from "node:assert/strict";
import { z } from "zod";
import { type Engine, openEngine, pipeline, step } from "../lib/mod.ts";
import { dashboard } from "../lib/dashboard/mod.tsx";
import { serve } from "../lib/http/service.ts";
import { gridRuns, gridTasks } from "../lib/store/grid.ts";
import { delay, tempKv } from "./_support/helpers.ts";

/** An extract, a fan-out over five items, a step that may fail once, and a report. */
function nightly() {
  const extract = step("extract", async (_inputs, ctx) => {
    await delay((ctx.run.params as { ms: number }).ms);
    return [1, 2, 3, 4, 5];
  });
  const score = step("score", {
    needs: { extract },
    items: ({ extract }) => extract,
    retry: { attempts: 1 },
  }, async (n, ctx) => {
    await delay(2);
    if (ctx.item.index < (ctx.run.params as { failItems: number }).failItems) {
      throw new Error(`item ${ctx.item.index} has no score`);
    }
    return n * 2;
  });
  const upload = step("upload", {
    needs: { extract },
    retry: { attempts: 3, delay: "5ms" },
  }, async (_inputs, ctx) => {
    await delay((ctx.run.params as { ms: number }).ms / 2);
    if ((ctx.run.params as { flaky: boolean }).flaky && ctx.attempt === 1) {
      throw new Error("bucket answered 503");
    }
    return "ok";
  });
  const report = step("report", { needs: { score, upload } }, () => "sent");
  return pipeline("grid-nightly", {
    params: z.object({
      ms: z.number().default(5),
      failItems: z.number().default(0),
      flaky: z.boolean().default(false),
    }),
    steps: [extract, score, upload, report],
  });
}

const RUNS = [
  { ms: 5 },
  { ms: 20 },
  { ms: 10, flaky: true },
  { ms: 15, failItems: 2 },
  { ms: 30 },
  { ms: 12 },
];

interface Fixture extends AsyncDisposable {
  engine: Engine;
  /** Run ids, oldest first (RUNS order). */
  ids: string[];
}

async function fixture(): Promise<Fixture> {
  const kv = await tempKv();
  const engine = await openEngine({
    path: kv.path,
    pipelines: [nightly(), pipeline("other", { steps: [step("one", () => 1)] })],
    onAlert: () => {},
    pollMs: 50,
  });
  const ids: string[] = [];
  for (const [i, params] of RUNS.entries()) {
    const run = await engine.store.createRun(engine.pipeline("grid-nightly"), {
      params,
      logicalDate: `2026-11-0${i + 1}`,
    });
    await engine.runToEnd(run.id);
    ids.push(run.id);
  }
  return {
    engine,
    ids,
    async [Symbol.asyncDispose]() {
      await engine.close();
      await kv[Symbol.asyncDispose]();
    },
  };
}

async function page(engine: Engine, path: string): Promise<{ status: number; body: string }> {
  const response = await dashboard(engine, {}).request(path);
  return { status: response.status, body: await response.text() };
}

/** The grid's table, one row of cells per step: [status, text, href] per run. */
function gridRows(body: string): Map<string, { cells: string[][]; rate: string; svg: string }> {
  const table = body.match(/<table class="grid">([\s\S]*?)<\/table>/)?.[1];
  assert.ok(table, "the page has a grid table");
  const rows = new Map<string, { cells: string[][]; rate: string; svg: string }>();
  for (const row of table.matchAll(/<tr data-step="([^"]+)">([\s\S]*?)<\/tr>/g)) {
    const cells = [...row[2].matchAll(
      /<td class="grid-cell" data-run="([^"]+)" data-status="([^"]+)">([\s\S]*?)<\/td>/g,
    )].map((m) => [
      m[2],
      text(m[3]),
      m[3].match(/href="([^"]+)"/)?.[1] ?? "",
      m[1],
    ]);
    rows.set(row[1], {
      cells,
      rate: text(row[2].match(/<td class="grid-rate"[^>]*>([\s\S]*?)<\/td>/)?.[1] ?? ""),
      svg: row[2].match(/<svg[\s\S]*?<\/svg>/)?.[0] ?? "",
    });
  }
  return rows;
}

function text(html: string): string {
  return html.replace(/<title>[\s\S]*?<\/title>/g, "").replace(/<[^>]+>/g, "").replace(
    /\s+/g,
    " ",
  ).trim();
}

Deno.test("grid: runs are columns newest first, steps rows in definition order, cells say status and duration", async () => {
  await using f = await fixture();
  const { status, body } = await page(f.engine, "/pipelines/grid-nightly");
  assert.equal(status, 200);
  const rows = gridRows(body);
  assert.deepEqual([...rows.keys()], ["extract", "score", "upload", "report"]);
  const newestFirst = [...f.ids].reverse();
  for (const row of rows.values()) assert.deepEqual(row.cells.map((c) => c[3]), newestFirst);
  // column headers link each run, newest first
  const heads = [...body.matchAll(/<th scope="col" data-run="([^"]+)"/g)].map((m) => m[1]);
  assert.deepEqual(heads, newestFirst);

  // RUNS[3] (column 2, newest first) failed two of five items; report was skipped
  const failed = 2;
  assert.deepEqual(rows.get("extract")!.cells.map((c) => c[0]), Array(6).fill("succeeded"));
  assert.deepEqual(
    rows.get("score")!.cells.map((c) => c[0]),
    ["succeeded", "succeeded", "failed", "succeeded", "succeeded", "succeeded"],
  );
  assert.match(rows.get("score")!.cells[failed][1], /^✗ failed [\d.]+ (ms|s) 3\/5 ✓ 2 ✗$/);
  assert.match(rows.get("score")!.cells[0][1], /^✓ succeeded [\d.]+ (ms|s) 5\/5 ✓$/);
  assert.equal(rows.get("report")!.cells[failed][0], "skipped");
  assert.match(rows.get("report")!.cells[failed][1], /^– skipped$/);
  // every cell has a duration in words and says its status as text
  for (const cell of rows.get("extract")!.cells) {
    assert.match(cell[1], /^✓ succeeded [\d.]+ (ms|s)$/);
  }

  // the retried upload of RUNS[2] (column 3) shows its two attempts and links the last one
  const retried = rows.get("upload")!.cells[3];
  assert.equal(retried[0], "succeeded");
  assert.match(retried[1], /^✓ succeeded [\d.]+ (ms|s) ×2$/);
  assert.equal(retried[2], `/runs/${f.ids[2]}#attempt-upload-2`);
  // that anchor is on the run page
  const run = await page(f.engine, `/runs/${f.ids[2]}`);
  assert.match(run.body, /<div class="attempt" id="attempt-upload-2">/);
  // a fan-out cell links the step's row, which the run page has
  assert.equal(rows.get("score")!.cells[failed][2], `/runs/${f.ids[3]}#step-score`);
  assert.match((await page(f.engine, `/runs/${f.ids[3]}`)).body, /<tr id="step-score">/);

  // success rate over the shown runs where the step ended (a skip is not an end)
  assert.equal(rows.get("extract")!.rate, "100 % 6/6");
  assert.equal(rows.get("score")!.rate, "83 % 5/6");
  assert.equal(rows.get("upload")!.rate, "100 % 6/6");
  assert.equal(rows.get("report")!.rate, "100 % 5/5");

  // each row ends with an SVG trend: a line and a dot per ended run, the failure in red
  const svg = rows.get("score")!.svg;
  assert.match(svg, /^<svg class="trend" width="120" height="28"/);
  assert.match(svg, /role="img" aria-label="score duration, oldest to newest: /);
  assert.equal([...svg.matchAll(/<circle /g)].length, 6);
  assert.equal([...svg.matchAll(/class="t-failed"/g)].length, 1);
  assert.match(svg, /<polyline points="[\d.]+,[\d.]+( [\d.]+,[\d.]+){5}"/);
  assert.equal([...rows.get("report")!.svg.matchAll(/<circle /g)].length, 5);

  // what the page showed before stays: recent runs (10) and the trigger form
  assert.match(body, /<h2>Recent runs<\/h2>/);
  assert.match(body, /id="trigger"/);
  // no script is needed to read it: the grid is in the HTML, in a scrolling region
  assert.match(
    body,
    /<div class="grid-wrap" tabindex="0" role="region" aria-labelledby="grid-title">/,
  );
});

Deno.test("grid: ?runs=N pages back in time with 'older' and forward with 'newer'", async () => {
  await using f = await fixture();
  const columns = (body: string) =>
    [...gridRows(body).get("extract")!.cells].map((c) => f.ids.indexOf(c[3]));
  const link = (body: string, rel: "next" | "prev") =>
    body.match(new RegExp(`<a href="([^"]+)" rel="${rel}">`))?.[1]?.replaceAll("&amp;", "&");

  const first = await page(f.engine, "/pipelines/grid-nightly?runs=2");
  assert.deepEqual(columns(first.body), [5, 4]);
  assert.equal(link(first.body, "prev"), undefined, "the newest page has no newer link");
  const older = link(first.body, "next");
  assert.equal(older, `/pipelines/grid-nightly?runs=2&before=${f.ids[4]}#grid`);

  const second = await page(f.engine, older!);
  assert.equal(second.status, 200);
  assert.deepEqual(columns(second.body), [3, 2]);
  assert.match(second.body, /older →/);
  assert.match(second.body, /← newer/);

  const third = await page(f.engine, link(second.body, "next")!);
  assert.deepEqual(columns(third.body), [1, 0]);
  assert.equal(link(third.body, "next"), undefined, "the oldest page has no older link");

  const back = await page(f.engine, link(third.body, "prev")!);
  assert.deepEqual(columns(back.body), [3, 2]);
  const newest = await page(f.engine, link(back.body, "prev")!);
  assert.deepEqual(columns(newest.body), [5, 4]);

  // the default is 25 runs: all six here, no paging links
  const all = await page(f.engine, "/pipelines/grid-nightly");
  assert.deepEqual(columns(all.body), [5, 4, 3, 2, 1, 0]);
  assert.doesNotMatch(all.body, /rel="next"|rel="prev"/);
});

Deno.test("grid: bad runs or cursors are 400 pages, an unknown pipeline a 404 page", async () => {
  await using f = await fixture();
  const other = await f.engine.store.createRun(f.engine.pipeline("other"), {});
  const cases: [string, number, RegExp][] = [
    [
      "/pipelines/grid-nightly?runs=0",
      400,
      /Invalid runs &quot;0&quot;: use an integer from 1 to 100/,
    ],
    ["/pipelines/grid-nightly?runs=101", 400, /from 1 to 100/],
    ["/pipelines/grid-nightly?runs=abc", 400, /Invalid runs/],
    ["/pipelines/grid-nightly?runs=2.5", 400, /Invalid runs/],
    ["/pipelines/grid-nightly?before=a%20b", 400, /Invalid cursor &quot;a b&quot;: not a run id/],
    ["/pipelines/grid-nightly?before=nonsense", 400, /no run of pipeline &#39;grid-nightly&#39;/],
    ["/pipelines/grid-nightly?after=%E2%9C%93", 400, /Invalid cursor/],
    [
      `/pipelines/grid-nightly?before=${other.id}`,
      400,
      /no run of pipeline &#39;grid-nightly&#39; has that id/,
    ],
    [
      `/pipelines/grid-nightly?before=${f.ids[1]}&after=${f.ids[3]}`,
      400,
      /either &#39;before&#39; or &#39;after&#39;, not both/,
    ],
    ["/pipelines/nope", 404, /Unknown pipeline/],
  ];
  for (const [path, status, message] of cases) {
    const got = await page(f.engine, path);
    assert.equal(got.status, status, path);
    assert.match(got.body, message, path);
    assert.doesNotMatch(got.body, /\n\s+at |\.tsx?:\d+:\d+/, `${path}: no stack trace`);
  }
});

Deno.test("grid: reads step records by key and counts items only of fan-outs that did not succeed", async () => {
  await using f = await fixture();
  const calls: string[] = [];
  const kv = new Proxy(f.engine.kv, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const what = name === "list"
          ? `list ${String((args[0] as { prefix: Deno.KvKey }).prefix[1])}`
          : String(name);
        calls.push(what);
        return value.apply(target, args);
      };
    },
  });
  const steps = ["extract", "score", "upload", "report"];
  const runs = await gridRuns(kv, "grid-nightly", { runs: 25 });
  const tasks = await gridTasks(kv, runs.runs, steps);
  assert.equal(runs.runs.length, 6);
  assert.equal(tasks.steps.size, 24);
  // one list of the pipeline's index, the 6 run records in one getMany, the 24 step
  // records in three, and the items of the one fan-out that failed: 6 reads, no attempts
  assert.deepEqual(calls.sort(), [
    "getMany",
    "getMany",
    "getMany",
    "getMany",
    "list item",
    "list runs_by_pipeline",
  ]);
});

// ---- the browser ----

Deno.test({
  name: "grid in Chromium: readable at phone and desktop width, only the grid scrolls sideways",
  ignore: skipBrowser,
  async fn() {
    await using f = await fixture();
    const port = Promise.withResolvers<number>();
    const server = serve(f.engine, {
      port: 0,
      log: () => {},
      onListen: (p) => port.resolve(p),
    });
    const url = `http://127.0.0.1:${await port.promise}/pipelines/grid-nightly`;
    await using browser = await openBrowser();
    const { tab, problems } = browser;
    try {
      for (const [name, width, height] of [["phone", 390, 844], ["desktop", 1280, 900]] as const) {
        await tab.setViewportSize({ width, height });
        await tab.goto(url);
        const grid = tab.locator("#grid table.grid");
        await grid.waitFor();
        assert.equal(await grid.locator("tbody tr").count(), 4, name);
        assert.equal(await grid.locator("td.grid-cell").count(), 24, name);
        assert.equal(await grid.locator("svg.trend").count(), 4, name);
        assert.match(
          await grid.locator('tr[data-step="score"]').innerText(),
          /3\/5 ✓ 2 ✗/,
          name,
        );
        const layout = await tab.evaluate<Record<string, number>>(`(() => {
          const box = document.querySelector(".grid-wrap");
          const step = document.querySelector("table.grid tbody th.grid-step").getBoundingClientRect();
          return {
            page: document.documentElement.scrollWidth,
            viewport: document.documentElement.clientWidth,
            boxWidth: box.clientWidth,
            boxScroll: box.scrollWidth,
            stepLeft: step.left,
          };
        })()`);
        assert.ok(
          layout.page <= layout.viewport,
          `${name}: the page does not scroll sideways (${layout.page} > ${layout.viewport})`,
        );
        if (name === "phone") {
          assert.ok(layout.boxScroll > layout.boxWidth, "on a phone the grid scrolls in its box");
          // the step names stay in view while the grid scrolls
          await tab.evaluate(`document.querySelector(".grid-wrap").scrollLeft = 400`);
          const left = await tab.evaluate<number>(
            `document.querySelector("table.grid tbody th.grid-step").getBoundingClientRect().left`,
          );
          assert.ok(Math.abs(left - layout.stepLeft) < 2, "the step column is sticky");
          await tab.screenshot({ path: shot("grid-phone.png"), fullPage: true });
        } else {
          // the README's picture is refreshed on request, not by every test run
          const docs = Deno.env.get("KVFLOW_DOCS_SCREENSHOTS") === "1";
          await tab.locator("#grid").screenshot({
            path: docs
              ? new URL("../docs/grid.png", import.meta.url).pathname
              : shot("grid-desktop.png"),
          });
        }
      }
      // a cell takes the reader to the attempt on the run page
      await tab.locator(`tr[data-step="upload"] td[data-run="${f.ids[2]}"] a`).click();
      await tab.waitForURL(`**/runs/${f.ids[2]}#attempt-upload-2`);
      assert.ok(await tab.locator("#attempt-upload-2").isVisible(), "the attempt is shown");
      assert.deepEqual(problems, []);
    } finally {
      await server.shutdown();
    }
  },
});
