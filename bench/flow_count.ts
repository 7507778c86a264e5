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
import type { Pipeline } from "../lib/mod.ts";
import { type CommitShape, countingKv, diffCounts } from "./kv_count.ts";
import { BENCH_DIAMOND } from "./entry.ts";
import { KEYED_DIAMOND, LIMIT_KEYS, STEP_LIMITED_DIAMOND } from "./flow_pipelines.ts";
import { openDriving, withStore } from "./_util.ts";

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
  let shapes: CommitShape[] | null = null;
  const { kv, counts } = countingKv(raw, (shape) => shapes?.push(shape));
  const { engine, allSucceeded } = await openDriving(p, runs, { kv });
  try {
    const before = { ...counts };
    shapes = [];
    engine.start();
    await allSucceeded;
    const d = diffCounts(before, counts);
    const { batches, commits } = engine.store.committer.stats;
    console.log(
      `${setting}: ${d.commit} KV commits (${commits} by the group committer, for ${batches} ` +
        `parts), ${d.check} checks, ${d.set} sets, ${d.delete} deletes, ${d.list} lists, ` +
        `${d.get + d.getMany} gets`,
    );
    console.log(`  ${describeShapes(shapes)}`);
  } finally {
    await engine.close();
    raw.close();
  }
}

/**
 * How full the commits were: those cut by KV's 100 checks (95 or more) and the rest, and
 * the checks by the kind of key they check (lease, run, slot, …).
 */
function describeShapes(shapes: CommitShape[]): string {
  const full = shapes.filter((s) => s.checkKinds.length >= 95);
  const rest = shapes.filter((s) => s.checkKinds.length < 95);
  const restChecks = rest.reduce((n, s) => n + s.checkKinds.length, 0);
  const kinds = new Map<string, number>();
  for (const s of shapes) {
    for (const k of s.checkKinds) kinds.set(k, (kinds.get(k) ?? 0) + 1);
  }
  const byKind = [...kinds].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(", ");
  return `${full.length} commits with 95-100 checks, ${rest.length} with fewer ` +
    `(${restChecks} checks in all); checks by key: ${byKind}`;
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
