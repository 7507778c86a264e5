/**
 * kvflow benchmarks, all in one command, on local KV files in a temp dir (deleted
 * afterwards): `deno task bench [--quick] [--json] [--only a,b] [--write | --no-write]`.
 *
 * 1. `sequential`: ms per step of a 1,000-step chain, next to the KV commit floor.
 * 2. `throughput`: 500 concurrent 5-step runs with 1 and 2 worker processes, group
 *    commit on and off, next to raw commit throughput.
 * 3. `restart`: restart to completion after SIGKILL of a 20-step run at step 11.
 * 4. `retry`: retry lateness with the process alive and other runs going on.
 * 5. `history`: list and get latency with 100,000 runs stored, store and HTTP.
 * 6. `rss`: memory of one process with 1,000 active runs.
 *
 * Every time is also given as a ratio to the KV commit floor measured next to it, in the
 * same run. A full run without `--only` writes the table into `bench/README.md`, between
 * the `bench:table` markers.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { sequential, sequentialRows, type SequentialSizes } from "./sequential.ts";
import { throughput, throughputRows, type ThroughputSizes } from "./throughput.ts";
import { restart, restartRows, type RestartSizes } from "./restart.ts";
import { retry, retryRows, type RetrySizes } from "./retry.ts";
import { history, historyRows, type HistorySizes } from "./history.ts";
import { rss, rssRows } from "./rss.ts";
import { machine, markdown, type Row, writeTable } from "./report.ts";
import { fmt, log, TIMEOUT_MS } from "./_util.ts";

/** Sizes of one bench run. */
interface Sizes {
  sequential: SequentialSizes;
  throughput: ThroughputSizes;
  restart: RestartSizes;
  retry: RetrySizes;
  history: HistorySizes;
  /** Active runs of the memory benchmark. */
  rssRuns: number;
}

const FULL: Sizes = {
  sequential: { floorCommits: 1000, steps: 1000, repeats: 5, countSteps: 1000 },
  throughput: { runs: 500, repeats: 3, floorCommits: 1000 },
  restart: { repeats: 7, floorCommits: 500 },
  retry: { runs: 100, backgroundPerSecond: 50, floorCommits: 500 },
  history: { runs: 100_000, samples: 300, floorCommits: 500 },
  rssRuns: 1000,
};

const QUICK: Sizes = {
  sequential: { floorCommits: 300, steps: 1000, repeats: 2, countSteps: 200 },
  throughput: { runs: 100, repeats: 1, floorCommits: 300 },
  restart: { repeats: 2, floorCommits: 200 },
  retry: { runs: 30, backgroundPerSecond: 50, floorCommits: 200 },
  history: { runs: 10_000, samples: 100, floorCommits: 200 },
  rssRuns: 200,
};

const SECTIONS = ["sequential", "throughput", "restart", "retry", "history", "rss"] as const;
type Section = typeof SECTIONS[number];

const README = new URL("./README.md", import.meta.url);

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean" },
      json: { type: "boolean" },
      only: { type: "string" },
      write: { type: "boolean" },
      "no-write": { type: "boolean" },
    },
  });
  const only = values.only?.split(",").map((s) => s.trim()) ?? [...SECTIONS];
  for (const name of only) {
    if (!(SECTIONS as readonly string[]).includes(name)) {
      console.error(`Unknown section '${name}': use ${SECTIONS.join(", ")}`);
      return 2;
    }
  }
  const wanted = (s: Section) => only.includes(s);
  const sizes = values.quick ? QUICK : FULL;
  const write = values["no-write"]
    ? false
    : values.write ?? (!values.quick && only.length === SECTIONS.length);
  const info = await machine(["deno task bench", ...Deno.args].join(" "));
  const dir = await Deno.makeTempDir({ prefix: "kvflow-bench-" });
  const file = (name: string) => `${dir}/${name}.kv`;
  // Ctrl-C: drop the temp dir at once (Linux lets open files be unlinked).
  const onInterrupt = () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } finally {
      Deno.exit(130);
    }
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  const started = performance.now();
  const rows: Row[] = [];
  const raw: Record<string, unknown> = { sizes };
  let failed = false;
  const section = async <T>(
    name: Section,
    run: (signal: AbortSignal) => Promise<T>,
    toRows: (result: T) => Row[],
  ) => {
    if (!wanted(name)) return;
    const t0 = performance.now();
    // On time-out a section stops after its current measurement, so sections never overlap.
    const timeout = AbortSignal.timeout(TIMEOUT_MS);
    try {
      const result = await run(timeout);
      raw[name] = result;
      rows.push(...toRows(result));
    } catch (error) {
      failed = true;
      console.error(`bench: ${name} failed: ${error instanceof Error ? error.stack : error}`);
      rows.push({ benchmark: name, figure: "FAILED", target: "-", met: false, ratio: "-" });
    }
    log(`${name} took ${fmt((performance.now() - t0) / 1000, 1)} s`);
  };
  try {
    log(`temp dir ${dir}${values.quick ? " (quick)" : ""}`);
    await section(
      "sequential",
      (signal) => sequential(file("sequential"), sizes.sequential, signal),
      (r) => sequentialRows(r, sizes.sequential.steps),
    );
    await section(
      "throughput",
      (signal) => throughput(dir, sizes.throughput, signal),
      throughputRows,
    );
    await section("restart", (signal) => restart(dir, sizes.restart, signal), restartRows);
    await section("retry", () => retry(file("retry"), sizes.retry), retryRows);
    await section("history", () => history(dir, sizes.history), historyRows);
    await section("rss", () => rss(file("rss"), sizes.rssRuns), rssRows);
    info.loadAfter = Deno.loadavg();
    const text = markdown(rows, info);
    console.log(text);
    log(`all took ${fmt((performance.now() - started) / 1000, 0)} s`);
    if (values.json) console.log(JSON.stringify({ machine: info, ...raw }, null, 2));
    if (write && !failed) {
      await writeTable(README, text);
      await new Deno.Command(Deno.execPath(), {
        args: ["fmt", "--quiet", README.pathname],
        stdout: "null",
        stderr: "inherit",
      }).output();
      log(`table written to ${README.pathname}`);
    }
    return failed ? 1 : 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  Deno.exit(await main());
}
