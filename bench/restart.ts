/**
 * Restart to completion after SIGKILL: a process (`bench/entry.ts run bench-restart`, the
 * real CLI) runs a 20-step chain and is killed with SIGKILL in step 11, once steps 1–10
 * are checkpointed; then a fresh process is spawned and timed until the run has succeeded:
 * `bench/entry.ts resume <id>`, and (on another killed run) `bench/entry.ts worker`, which
 * finds the dead process's run by itself. Next to it: the start of a Deno process (an empty
 * script) and of the CLI (`pipelines`), and the KV commit floor on the same file.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { Store } from "../lib/store/store.ts";
import { fileFloor } from "./floor.ts";
import { RESTART, RESTART_PARK_AT, RESTART_STEPS } from "./pipelines.ts";
import { fmt, log, median, sleep } from "./_util.ts";
import type { Row } from "./report.ts";

const ENTRY = fileURLToPath(new URL("./entry.ts", import.meta.url));
const EMPTY = fileURLToPath(new URL("./empty.ts", import.meta.url));

/** Sizes of the restart benchmark. */
export interface RestartSizes {
  /** Kill-and-restart repeats. */
  repeats: number;
  /** Commits of the floor measured next to each. */
  floorCommits: number;
}

/** One kill and restart. */
export interface Restart {
  /** Spawn of the fresh process → the run's `endedAt` in KV (wall clock). */
  toSucceededMs: number;
  /** Spawn → the re-run step's second attempt starting (the takeover). */
  toTakeoverMs: number;
  /** Spawn → the fresh process's exit (`resume`), or → the run seen succeeded (`worker`). */
  toExitMs: number;
  /** Floor mean on the same file, ms. */
  floorMs: number;
}

/** Everything the restart benchmark measured. */
export interface RestartResult {
  /** With `resume <id>`. */
  restarts: Restart[];
  /** With a fresh `worker`, which is not told the run id. */
  workerRestarts: Restart[];
  /** Spawn → exit of `deno run` of an empty script, ms (one per repeat). */
  emptyMs: number[];
  /** Spawn → exit of the CLI's `pipelines` command on the same file, ms. */
  cliMs: number[];
}

function cli(args: string[], kvPath: string, env: Record<string, string> = {}) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ENTRY, ...args],
    env: { KVFLOW_KV_PATH: kvPath, NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

async function timed(command: Deno.Command): Promise<number> {
  const t0 = performance.now();
  const out = await command.output();
  const ms = performance.now() - t0;
  if (!out.success) {
    throw new Error(`exited ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return ms;
}

async function once(
  dir: string,
  n: number,
  floorCommits: number,
  mode: "resume" | "worker",
): Promise<Restart> {
  const kvPath = `${dir}/restart-${mode}-${n}.kv`;
  const holdFile = `${dir}/restart-${mode}-${n}.held`;
  const first = cli(["run", RESTART.name], kvPath, { KVFLOW_BENCH_HOLD_FILE: holdFile })
    .spawn();
  let runId = "";
  try {
    const deadline = Date.now() + 60_000;
    while (!runId) {
      try {
        runId = await Deno.readTextFile(holdFile);
      } catch {
        if (Date.now() > deadline) throw new Error("restart: the run never reached its step 11");
        await sleep(2);
      }
    }
  } finally {
    first.kill("SIGKILL");
    await first.output();
  }
  const kv = await Deno.openKv(kvPath);
  try {
    const store = new Store(kv, { queues: false });
    const steps = await store.getSteps(runId);
    const done = [...steps.values()].filter((s) => s.status === "succeeded").length;
    if (done !== RESTART_PARK_AT) throw new Error(`restart: ${done} steps checkpointed at kill`);
  } finally {
    kv.close();
  }
  const floor = await fileFloor(kvPath, floorCommits);
  const spawnedAt = Date.now();
  const toExitMs = mode === "resume"
    ? await timed(cli(["resume", runId], kvPath))
    : await untilSucceeded(kvPath, runId);
  const kv2 = await Deno.openKv(kvPath);
  try {
    const store = new Store(kv2, { queues: false });
    const run = await store.requireRun(runId);
    if (run.status !== "succeeded") throw new Error(`restart: run ${run.status} after resume`);
    const out = await store.getOutput(runId, `r${RESTART_STEPS - 1}`);
    if (out !== RESTART_STEPS - 1) throw new Error(`restart: last output ${out}`);
    const second = (await store.getAttempts(runId)).find((a) =>
      a.step === `r${RESTART_PARK_AT}` && a.n === 2
    );
    if (!second) throw new Error("restart: no second attempt of the parked step");
    return {
      toSucceededMs: run.endedAt! - spawnedAt,
      toTakeoverMs: second.startedAt - spawnedAt,
      toExitMs,
      floorMs: floor.mean,
    };
  } finally {
    kv2.close();
  }
}

/** Spawns a `worker` and stops it once `runId` succeeded; ms from spawn to that look. */
async function untilSucceeded(kvPath: string, runId: string): Promise<number> {
  const t0 = performance.now();
  const worker = cli(["worker"], kvPath).spawn();
  const kv = await Deno.openKv(kvPath);
  try {
    const store = new Store(kv, { queues: false });
    const deadline = Date.now() + 60_000;
    while ((await store.requireRun(runId)).status !== "succeeded") {
      if (Date.now() > deadline) throw new Error("restart: the worker never finished the run");
      await sleep(2);
    }
    return performance.now() - t0;
  } finally {
    kv.close();
    worker.kill("SIGTERM");
    await worker.output();
  }
}

/** Kills and restarts, each next to a process-start measurement. */
export async function restart(
  dir: string,
  sizes: RestartSizes,
  signal?: AbortSignal,
): Promise<RestartResult> {
  const warmPath = `${dir}/restart-warm.kv`;
  // The module graph is compiled and cached by the first start: leave that out.
  await timed(new Deno.Command(Deno.execPath(), { args: ["run", "-A", EMPTY] }));
  await timed(cli(["pipelines"], warmPath));
  const restarts: Restart[] = [];
  const workerRestarts: Restart[] = [];
  const emptyMs: number[] = [];
  const cliMs: number[] = [];
  for (let r = 0; r < sizes.repeats; r++) {
    signal?.throwIfAborted();
    emptyMs.push(
      await timed(
        new Deno.Command(Deno.execPath(), { args: ["run", "-A", EMPTY], stdout: "null" }),
      ),
    );
    cliMs.push(await timed(cli(["pipelines"], warmPath)));
    restarts.push(await once(dir, r, sizes.floorCommits, "resume"));
    workerRestarts.push(await once(dir, r, sizes.floorCommits, "worker"));
    const x = restarts[r];
    const w = workerRestarts[r];
    log(
      `restart ${r + 1}: spawn → succeeded ${fmt(x.toSucceededMs, 0)} ms (takeover at ${
        fmt(x.toTakeoverMs, 0)
      }, exit at ${fmt(x.toExitMs, 0)}); empty deno run ${fmt(emptyMs[r], 0)} ms, CLI ${
        fmt(cliMs[r], 0)
      } ms; fresh worker → succeeded ${fmt(w.toSucceededMs, 0)} ms`,
    );
  }
  return { restarts, workerRestarts, emptyMs, cliMs };
}

/** Table rows of the restart benchmark. */
export function restartRows(r: RestartResult): Row[] {
  const done = r.restarts.map((x) => x.toSucceededMs);
  const mid = median(done);
  const inFloors = median(r.restarts.map((x) => x.toSucceededMs / x.floorMs));
  const floor = median(r.restarts.map((x) => x.floorMs));
  return [
    {
      benchmark:
        `**3. restart to completion after SIGKILL**: 20-step run, 10 checkpointed, \`resume\` in a fresh process (${done.length} kills)`,
      figure: `**median ${fmt(mid, 0)} ms**, max ${
        fmt(Math.max(...done), 0)
      } ms (spawn → run succeeded); takeover at ${
        fmt(median(r.restarts.map((x) => x.toTakeoverMs)), 0)
      } ms, process exit at ${fmt(median(r.restarts.map((x) => x.toExitMs)), 0)} ms`,
      target: "<= 1 s (DBOS on Postgres: 1.6 s)",
      met: mid <= 1000,
      ratio: `${fmt(inFloors, 0)} floor commits (floor ${fmt(floor, 3)} ms)`,
    },
    {
      benchmark:
        "3. the same with a fresh `worker` process, which finds the dead process's run itself",
      figure: `median ${fmt(median(r.workerRestarts.map((x) => x.toSucceededMs)), 0)} ms, max ${
        fmt(Math.max(...r.workerRestarts.map((x) => x.toSucceededMs)), 0)
      } ms (spawn → run succeeded); takeover at ${
        fmt(median(r.workerRestarts.map((x) => x.toTakeoverMs)), 0)
      } ms`,
      target: "<= 1 s",
      met: median(r.workerRestarts.map((x) => x.toSucceededMs)) <= 1000,
      ratio: `${
        fmt(median(r.workerRestarts.map((x) => x.toSucceededMs / x.floorMs)), 0)
      } floor commits`,
    },
    {
      benchmark: "of which Deno process start: `deno run` of an empty script, spawn → exit",
      figure: `median ${fmt(median(r.emptyMs), 0)} ms, max ${
        fmt(Math.max(...r.emptyMs), 0)
      } ms; the CLI's \`pipelines\` command ${fmt(median(r.cliMs), 0)} ms`,
      target: "-",
      met: null,
      ratio: `${fmt(median(r.emptyMs) / floor, 0)} floor commits`,
    },
  ];
}
