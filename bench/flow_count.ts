/**
 * What a never-reached limit adds, counted: the flow benchmark's 500 diamonds (no limit, a
 * run limit, a step limit) driven by one in-process engine on a counting KV. KV commits and
 * checks do not drift with the machine's load as steps per second do, and the 500-run
 * benchmark is bound by commits (a grouped commit holds at most 100 checks).
 *
 * `deno run -A bench/flow_count.ts [free,keyed,step] [runs]`
 *
 * @module
 */
import { openEngine, type Pipeline } from "../lib/mod.ts";
import { countingKv, diffCounts } from "./kv_count.ts";
import { BENCH_DIAMOND } from "./entry.ts";
import { KEYED_DIAMOND, LIMIT_KEYS, STEP_LIMITED_DIAMOND } from "./flow_pipelines.ts";
import { withStore } from "./_util.ts";

const SETTINGS: Record<string, Pipeline<unknown>> = {
  free: BENCH_DIAMOND,
  keyed: KEYED_DIAMOND,
  step: STEP_LIMITED_DIAMOND,
};

/** Drives `runs` diamonds of one setting to their end; prints what KV was asked to do. */
async function count(dir: string, setting: string, runs: number): Promise<void> {
  const p = SETTINGS[setting];
  if (!p) throw new Error(`unknown setting '${setting}' (free, keyed, step)`);
  const path = `${dir}/${setting}.kv`;
  await withStore(path, async (store) => {
    for (let i = 0; i < runs; i += 16) {
      await Promise.all(
        Array.from({ length: Math.min(16, runs - i) }, (_, j) =>
          store.createRun(
            p,
            setting === "keyed" ? { params: { key: `k${(i + j) % LIMIT_KEYS}` } } : {},
          )),
      );
    }
  });
  const raw = await Deno.openKv(path);
  const { kv, counts } = countingKv(raw);
  let ended = 0;
  let allEnded!: () => void;
  const done = new Promise<void>((resolve) => (allEnded = resolve));
  const engine = await openEngine({
    kv,
    pipelines: [p],
    maxRuns: runs,
    maxSteps: 2 * runs,
    pollMs: 50,
    onAlert: () => {},
    onEvent: (e) => {
      if (e.type === "run" && e.run.status === "succeeded" && ++ended === runs) allEnded();
    },
  });
  try {
    const before = { ...counts };
    engine.start();
    await done;
    const d = diffCounts(before, counts);
    const { batches, commits } = engine.store.committer.stats;
    console.log(
      `${setting}: ${d.commit} KV commits (${commits} by the group committer, for ${batches} ` +
        `parts), ${d.check} checks, ${d.set} sets, ${d.delete} deletes, ${d.list} lists, ` +
        `${d.get + d.getMany} gets`,
    );
  } finally {
    await engine.close();
    raw.close();
  }
}

if (import.meta.main) {
  const settings = (Deno.args[0] ?? "free,keyed,step").split(",");
  const runs = Number(Deno.args[1] ?? 500);
  const dir = await Deno.makeTempDir({ prefix: "kvflow-flow-count-" });
  try {
    for (const setting of settings) await count(dir, setting, runs);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
