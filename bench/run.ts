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
 * 7. `event`: event sent → the waiting step's dependent starts, same process and another.
 * 8. `sleep`: sleep lateness, under the worker's hold time and over it (parked).
 * 9. `send`: sends per second with 0, 1 and 100 matching waits.
 * 10. `parked`: 10,000 and 100,000 parked runs: worker memory, sweep, idle CPU, send.
 * 11. `prune`: a month of a busy pipeline with a 3-day retention and a moved clock: the KV
 *     file's size day by day (it must stop growing), and runs pruned per second.
 * 2b. `inflight`: throughput against runs in flight (50, 500, 5,000) in one process, with
 *     CPU time per step of each thread and bytes written per step.
 * 12. `limit`: flow control: the 500-run throughput with and without a run limit, and the
 *     claim latency of a queued run when its slot frees, same process and another.
 * 13. `remote`: the engine over a simulated remote KV (10 checks a commit, no queues, a
 *     round trip of 5, 20, 50 ms a call): the sequential step, throughput with 1, 4 and 16
 *     engines, round trips per step next to home's.
 * 14. `wake`: another process's commit (new run, resume, event, freed slot) → first step in
 *     a worker process, its watch of the KV file on and off; the worker's idle CPU.
 *
 * `--only waits` selects 7–10.
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
import { eventRows, type EventSizes, eventWake } from "./event_wake.ts";
import { sleepLateness, sleepRows, type SleepSizes } from "./sleep_lateness.ts";
import { sendRows, sends, type SendSizes } from "./sends.ts";
import { logParked, parked, parkedRows, type ParkedSizes } from "./parked.ts";
import { prune, pruneRows, type PruneSizes } from "./prune.ts";
import { flowBench, flowRows, type FlowSizes } from "./flow.ts";
import { inflight, inflightRows, type InflightSizes } from "./inflight.ts";
import { remote, remoteRows, type RemoteSizes } from "./remote.ts";
import { crossWake, crossWakeRows, type CrossWakeSizes } from "./cross_wake.ts";
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
  event: EventSizes;
  sleep: SleepSizes;
  send: SendSizes;
  parked: ParkedSizes;
  prune: PruneSizes;
  limit: FlowSizes;
  inflight: InflightSizes;
  remote: RemoteSizes;
  wake: CrossWakeSizes;
}

const FULL: Sizes = {
  sequential: { floorCommits: 1000, steps: 1000, repeats: 5, countSteps: 1000 },
  throughput: { runs: 500, repeats: 3, floorCommits: 1000 },
  restart: { repeats: 7, floorCommits: 500 },
  retry: { runs: 100, backgroundPerSecond: 50, floorCommits: 500 },
  history: { runs: 100_000, samples: 300, floorCommits: 500 },
  rssRuns: 1000,
  event: { local: 200, cross: 40, floorCommits: 500 },
  sleep: { short: 300, long: 30, floorCommits: 300 },
  send: { sends: 500, groups: 5, inFlight: 16, floorCommits: 500 },
  parked: { engineRuns: 10_000, total: 100_000, samples: 20, cpuSeconds: 5 },
  prune: { days: 30, runsPerDay: 100, retentionDays: 3, backlog: 1000, ordersPerDay: 40 },
  limit: { runs: 500, repeats: 5, local: 50, cross: 20 },
  inflight: { runs: [50, 500, 5000], repeats: 3 },
  remote: {
    rtts: [5, 20, 50],
    steps: 30,
    repeats: 3,
    throughputRtt: 20,
    workers: [1, 4, 16],
    inFlight: [8, 64],
    rounds: 2,
    servers: ["memory", "file"],
  },
  wake: { watched: 60, polled: 12, cpuSeconds: 10 },
};

const QUICK: Sizes = {
  sequential: { floorCommits: 300, steps: 1000, repeats: 2, countSteps: 200 },
  throughput: { runs: 100, repeats: 1, floorCommits: 300 },
  restart: { repeats: 2, floorCommits: 200 },
  retry: { runs: 30, backgroundPerSecond: 50, floorCommits: 200 },
  history: { runs: 10_000, samples: 100, floorCommits: 200 },
  rssRuns: 200,
  event: { local: 50, cross: 10, floorCommits: 200 },
  sleep: { short: 60, long: 6, floorCommits: 200 },
  send: { sends: 100, groups: 2, inFlight: 16, floorCommits: 200 },
  parked: { engineRuns: 2000, total: 10_000, samples: 10, cpuSeconds: 2 },
  prune: { days: 12, runsPerDay: 50, retentionDays: 3, backlog: 300, ordersPerDay: 20 },
  limit: { runs: 100, repeats: 1, local: 10, cross: 5 },
  inflight: { runs: [50, 500], repeats: 1 },
  remote: {
    rtts: [5, 20],
    steps: 10,
    repeats: 1,
    throughputRtt: 20,
    workers: [1, 4],
    inFlight: [8],
    rounds: 1,
    servers: ["memory"],
  },
  wake: { watched: 10, polled: 4, cpuSeconds: 2 },
};

const SECTIONS = [
  "sequential",
  "throughput",
  "inflight",
  "restart",
  "retry",
  "history",
  "rss",
  "event",
  "sleep",
  "send",
  "parked",
  "prune",
  "limit",
  "remote",
  "wake",
] as const;
type Section = typeof SECTIONS[number];

/** Names `--only` takes for several sections. */
const GROUPS: Record<string, Section[]> = { waits: ["event", "sleep", "send", "parked"] };

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
  const only = values.only?.split(",").flatMap((s) => GROUPS[s.trim()] ?? [s.trim()]) ??
    [...SECTIONS];
  for (const name of only) {
    if (!(SECTIONS as readonly string[]).includes(name)) {
      console.error(
        `Unknown section '${name}': use ${[...SECTIONS, ...Object.keys(GROUPS)].join(", ")}`,
      );
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
    await section("inflight", (signal) => inflight(dir, sizes.inflight, signal), inflightRows);
    await section("restart", (signal) => restart(dir, sizes.restart, signal), restartRows);
    await section("retry", () => retry(file("retry"), sizes.retry), retryRows);
    await section("history", () => history(dir, sizes.history), historyRows);
    await section("rss", () => rss(file("rss"), sizes.rssRuns), rssRows);
    await section(
      "event",
      (signal) => eventWake(file("event"), sizes.event, signal),
      eventRows,
    );
    await section("sleep", () => sleepLateness(file("sleep"), sizes.sleep), sleepRows);
    await section("send", () => sends(file("send"), sizes.send), sendRows);
    await section("parked", async () => {
      const report = await parked(file("parked"), sizes.parked);
      logParked(report);
      return report;
    }, parkedRows);
    await section("prune", () => prune(dir, sizes.prune), pruneRows);
    await section("limit", (signal) => flowBench(dir, sizes.limit, signal), flowRows);
    await section("remote", (signal) => remote(dir, sizes.remote, signal), remoteRows);
    await section("wake", (signal) => crossWake(file("wake"), sizes.wake, signal), crossWakeRows);
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
