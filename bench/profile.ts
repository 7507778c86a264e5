/**
 * Profiles the sequential path: runs a chain of trivial steps a few times on a temp KV
 * file. Run it under the V8 profiler and summarize the profile:
 *
 * ```sh
 * deno run -A --cpu-prof --cpu-prof-dir=/tmp/kvflow-prof bench/profile.ts [steps] [runs]
 * deno run -A bench/cpuprofile.ts /tmp/kvflow-prof/*.cpuprofile [steps x runs]
 * ```
 *
 * @module
 */
import { openEngine } from "../lib/mod.ts";
import { chain } from "./pipelines.ts";

if (import.meta.main) {
  const steps = Number(Deno.args[0] ?? 1000);
  const runs = Number(Deno.args[1] ?? 4);
  const dir = await Deno.makeTempDir({ prefix: "kvflow-profile-" });
  const seq = chain("profiled", steps);
  const engine = await openEngine({ path: `${dir}/profile.kv`, pipelines: [seq] });
  try {
    for (let r = 0; r < runs; r++) {
      const run = await engine.store.createRun(seq);
      const t0 = performance.now();
      const end = await engine.runToEnd(run.id);
      const ms = performance.now() - t0;
      console.error(`run ${r + 1}: ${end.status}, ${(ms / steps).toFixed(3)} ms/step`);
    }
  } finally {
    await engine.close();
    await Deno.remove(dir, { recursive: true });
  }
}
