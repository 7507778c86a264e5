/**
 * HTTP API benchmark: `deno task bench:http` (or `deno run -A bench/http_bench.ts
 * [--runs N] [--quick] [--json]`).
 *
 * 1. Stores 100,000 finished runs of the example pipeline in a KV file in a temp dir
 *    (deleted afterwards), by direct batched writes of exactly the records, index entries and
 *    counts the store keeps (`lib/kv/keys.ts` layout, current schema); every 100th run also gets its steps, fan-out
 *    items, attempts with log lines, artifacts and (when failed) an alert, as a real run has.
 * 2. Starts the real service on that file in its own process (`main.ts serve --port 0`).
 * 3. Times sequential requests from this process: the first page of runs (plain, by
 *    pipeline, by status), a page deep in the list by cursor, one run with everything, the
 *    health check, and `/metrics` (first: it counts the alerts; then with that count reused;
 *    runs by pipeline and status are read from their counts at every scrape); then run
 *    fetches with 8 in flight.
 * 4. Reads the serving process's RSS (`/proc/<pid>/status`) idle, after the requests, and
 *    after the metrics scan.
 *
 * Target: first page and one run each under 20 ms median.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import * as keys from "../lib/kv/keys.ts";
import type { AttemptRecord, RunRecord, RunStatus, TaskRecord } from "../lib/model/records.ts";
import type { AlertRecord } from "../lib/alerts/alert.ts";
import type { ArtifactMeta } from "../lib/model/artifacts.ts";
import { COUNTED } from "../lib/kv/indexes.ts";
import { newRunId } from "../lib/model/run_id.ts";
import { SCHEMA_VERSION } from "../lib/kv/migrations.ts";
import example from "../pipelines/example/mod.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const DETAIL_EVERY = 100;

interface Stats {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const at = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  const round = (x: number) => Math.round(x * 100) / 100;
  return {
    n: s.length,
    p50: round(at(0.5)),
    p95: round(at(0.95)),
    p99: round(at(0.99)),
    max: round(s.at(-1)!),
  };
}

/** Writes `count` finished runs; returns the ids of those with full details. */
export async function populate(
  path: string,
  count: number,
): Promise<{ detailed: string[]; ms: number }> {
  const kv = await Deno.openKv(path);
  const started = performance.now();
  const detailed: string[] = [];
  const stepNames = example.steps.map((s) => s.name);
  const now = Date.now();
  const counts = new Map<RunStatus, bigint>();
  let op = kv.atomic();
  let mutations = 0;
  const flush = async () => {
    if (mutations === 0) return;
    const result = await op.commit();
    if (!result.ok) throw new Error("A populate commit failed");
    op = kv.atomic();
    mutations = 0;
  };
  const set = async (key: Deno.KvKey, value: unknown) => {
    op.set(key, value);
    if (++mutations >= 900) await flush();
  };
  for (let i = 0; i < count; i++) {
    // Oldest first, one every ~86 s over the last 100 days.
    const createdAt = now - Math.floor(((count - i) / count) * 100 * 86_400_000);
    const status: RunStatus = i % 50 === 7 ? "failed" : i % 100 === 13 ? "cancelled" : "succeeded";
    const id = newRunId(createdAt);
    const startedAt = createdAt + 40;
    const endedAt = startedAt + 300 + (i % 17) * 10;
    const run: RunRecord = {
      id,
      pipeline: example.name,
      version: example.version,
      graph: example.graph as Record<string, string[]>,
      params: { customers: 3 },
      logicalDate: new Date(createdAt).toISOString().slice(0, 10),
      trigger: i % 3 === 0 ? "cli" : "http",
      status,
      createdAt,
      startedAt,
      endedAt,
      dueAt: null,
      error: status === "failed"
        ? { step: "invoices", message: "1 of 3 items failed; item 1: Invoice renderer unavailable" }
        : status === "cancelled"
        ? { step: null, message: "Cancelled by request" }
        : null,
      failures: status === "failed" ? 1 : 0,
      takeovers: 0,
    };
    await set(keys.run(id), run);
    await set(keys.runsByTime(createdAt, id), run.pipeline);
    await set(keys.runsByPipeline(run.pipeline, createdAt, id), status);
    await set(keys.runsByStatus(status, createdAt, id), run.pipeline);
    await set(keys.runsByPipelineStatus(run.pipeline, status, createdAt, id), COUNTED);
    counts.set(status, (counts.get(status) ?? 0n) + 1n);
    if (i % DETAIL_EVERY !== 0 && status !== "failed") continue;
    if (detailed.length < 2000) detailed.push(id);
    const failedItem = status === "failed" ? 1 : -1;
    let t = startedAt;
    for (const name of stepNames) {
      const fan = name === "invoices";
      const record: TaskRecord = {
        status: fan && failedItem >= 0
          ? "failed"
          : name === "summary" && failedItem >= 0
          ? "skipped"
          : "succeeded",
        attempt: 1,
        generation: 0,
        startedAt: t,
        endedAt: t + 20,
        nextAt: null,
        error: null,
        ...(fan ? { items: 3 } : { output: { inline: { ok: true, step: name } } }),
      };
      await set(keys.step(id, name), record);
      const items = fan ? [0, 1, 2] : [-1];
      for (const item of items) {
        const failed = item === failedItem;
        const attempts = failed ? 2 : 1;
        if (item >= 0) {
          await set(
            keys.item(id, name, item),
            {
              ...record,
              status: failed ? "failed" : "succeeded",
              attempt: attempts,
              output: { inline: `invoice-${item}` },
            } satisfies TaskRecord,
          );
        }
        for (let n = 1; n <= attempts; n++) {
          const error = failed
            ? {
              name: "Error",
              message: "Invoice renderer unavailable",
              stack:
                "Error: Invoice renderer unavailable\n    at render (pipelines/example/mod.ts:58:11)",
              retryable: true,
            }
            : null;
          await set(
            keys.attempt(id, name, item, n),
            {
              step: name,
              item,
              n,
              attempt: n,
              status: failed ? "failed" : "succeeded",
              startedAt: t,
              endedAt: t + 15,
              error,
              logs: [
                { at: t + 1, level: "info", message: `${name} started`, fields: { item } },
                { at: t + 14, level: "info", message: `${name} done` },
              ],
            } satisfies AttemptRecord,
          );
        }
        if (fan && !failed) {
          const meta: ArtifactMeta = {
            runId: id,
            name: `invoice-customer-${item}.txt`,
            contentType: "text/plain",
            size: 120,
            blob: { id: `b${item}`, size: 120, chunks: 1 },
            step: name,
            item,
            createdAt: t + 10,
          };
          await set(keys.artifact(id, meta.name), meta);
        }
      }
      t += 25;
    }
    if (status === "failed") {
      await set(
        keys.alert(id, 1),
        {
          runId: id,
          pipeline: run.pipeline,
          seq: 1,
          at: endedAt,
          step: "invoices",
          attempts: 2,
          message: run.error!.message,
          logicalDate: run.logicalDate,
          webhook: "none",
        } satisfies AlertRecord,
      );
    }
  }
  for (const [status, n] of counts) {
    await set(keys.runCount(example.name, status), new Deno.KvU64(n));
  }
  await set(keys.schema(), SCHEMA_VERSION);
  await flush();
  kv.close();
  return { detailed, ms: performance.now() - started };
}

/** The serving process: the real CLI's `serve` on the populated file. */
export async function startServer(
  kvPath: string,
): Promise<{ child: Deno.ChildProcess; url: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "serve", "--port", "0"],
    cwd: ROOT,
    env: { KVFLOW_KV_PATH: kvPath, NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (true) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`The server exited before listening:\n${text}`);
    text += value;
    const match = text.match(/serving on http:\/\/127\.0\.0\.1:(\d+)/);
    if (match) {
      // Keep draining stderr so the child never blocks on a full pipe.
      (async () => {
        while (!(await reader.read()).done);
      })();
      return { child, url: `http://127.0.0.1:${match[1]}` };
    }
  }
}

export function rssMiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = Number(status.match(/VmRSS:\s+(\d+)\s+kB/)?.[1] ?? NaN);
  return Math.round(kb / 1024);
}

export async function time(url: string, expect = 200): Promise<number> {
  const started = performance.now();
  const response = await fetch(url);
  await response.arrayBuffer();
  const ms = performance.now() - started;
  if (response.status !== expect) throw new Error(`${url}: HTTP ${response.status}`);
  return ms;
}

async function series(label: string, urls: () => string, n: number): Promise<[string, Stats]> {
  for (let i = 0; i < 10; i++) await time(urls());
  const samples: number[] = [];
  for (let i = 0; i < n; i++) samples.push(await time(urls()));
  return [label, stats(samples)];
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      runs: { type: "string" },
      quick: { type: "boolean" },
      json: { type: "boolean" },
      requests: { type: "string" },
    },
  });
  const count = Number(values.runs ?? (values.quick ? 10_000 : 100_000));
  const n = Number(values.requests ?? (values.quick ? 100 : 300));
  const dir = await Deno.makeTempDir({ prefix: "kvflow-http-bench-" });
  let server: Deno.ChildProcess | undefined;
  try {
    const kvPath = `${dir}/kvflow.kv`;
    console.error(`populating ${count.toLocaleString("en")} runs…`);
    const { detailed, ms: populateMs } = await populate(kvPath, count);
    const fileMiB = Math.round(Deno.statSync(kvPath).size / 1048576);
    console.error(`  ${Math.round(populateMs)} ms, KV file ${fileMiB} MiB; starting the server…`);
    const started = await startServer(kvPath);
    server = started.child;
    const { url } = started;
    await time(`${url}/healthz`);
    const rssIdle = rssMiB(server.pid);

    const deep = await (await fetch(`${url}/api/runs?limit=1000`)).json();
    let pick = 0;
    const nextRun = () => detailed[(pick++ * 7919) % detailed.length];
    const results: [string, Stats][] = [];
    results.push(await series("GET /api/runs (first page, 20)", () => `${url}/api/runs`, n));
    results.push(
      await series("GET /api/runs?pipeline=example", () => `${url}/api/runs?pipeline=example`, n),
    );
    results.push(
      await series("GET /api/runs?status=failed", () => `${url}/api/runs?status=failed`, n),
    );
    results.push(
      await series(
        "GET /api/runs?cursor=… (page after 1,000)",
        () => `${url}/api/runs?cursor=${encodeURIComponent(deep.cursor)}`,
        n,
      ),
    );
    results.push(
      await series(
        "GET /api/runs/:id (steps, items, attempts)",
        () => `${url}/api/runs/${nextRun()}`,
        n,
      ),
    );
    results.push(await series("GET /healthz", () => `${url}/healthz`, n));
    const rssAfterRequests = rssMiB(server.pid);

    // Eight clients at once, fetching runs.
    const concurrentStarted = performance.now();
    let done = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      for (let i = 0; i < n / 4; i++) {
        await time(`${url}/api/runs/${nextRun()}`);
        done++;
      }
    }));
    const perSecond = Math.round(done / ((performance.now() - concurrentStarted) / 1000));

    const metricsCold = await time(`${url}/metrics`);
    const warm: number[] = [];
    for (let i = 0; i < 5; i++) warm.push(await time(`${url}/metrics`));
    const metricsWarm = stats(warm);
    const rssAfterMetrics = rssMiB(server.pid);

    const target = (label: string) => results.find(([l]) => l.startsWith(label))![1].p50;
    const firstPage = target("GET /api/runs (first");
    const oneRun = target("GET /api/runs/:id");
    const pass = firstPage < 20 && oneRun < 20;

    const lines = [
      `HTTP API with ${
        count.toLocaleString("en")
      } runs stored (KV file ${fileMiB} MiB, populated in ${
        Math.round(populateMs / 1000)
      } s), ${n} sequential requests per row after 10 warm-up requests, client and server on this machine:`,
      "",
      "| request | p50 ms | p95 ms | p99 ms | max ms |",
      "| --- | --- | --- | --- | --- |",
      ...results.map(([label, s]) => `| ${label} | ${s.p50} | ${s.p95} | ${s.p99} | ${s.max} |`),
      `| GET /metrics, first (counts the alerts) | ${round2(metricsCold)} | | | |`,
      `| GET /metrics, alert count reused (5 in a row) | ${metricsWarm.p50} | | | ${metricsWarm.max} |`,
      "",
      `- GET /api/runs/:id with 8 in flight: ${perSecond} requests/s`,
      `- serving process RSS: ${rssIdle} MiB idle after start, ${rssAfterRequests} MiB after the requests, ${rssAfterMetrics} MiB after the metrics scan`,
      `- target (first page and one run under 20 ms median): ${
        pass ? "met" : "MISSED"
      } (${firstPage} ms, ${oneRun} ms)`,
    ];
    console.log(lines.join("\n"));
    if (values.json) {
      console.log(JSON.stringify(
        {
          runs: count,
          fileMiB,
          populateMs,
          results: Object.fromEntries(results),
          concurrentPerSecond: perSecond,
          metricsColdMs: metricsCold,
          metricsWarm,
          rssMiB: { idle: rssIdle, afterRequests: rssAfterRequests, afterMetrics: rssAfterMetrics },
          pass,
        },
        null,
        2,
      ));
    }
    if (!pass) Deno.exitCode = 1;
  } finally {
    if (server) {
      server.kill("SIGTERM");
      await server.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
