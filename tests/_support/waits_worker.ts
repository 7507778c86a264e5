/**
 * A worker process for the parked-runs test: opens an engine on `KVFLOW_KV_PATH` with the
 * wait pipelines, creates `PARK_RUNS` runs of `parked` (keys `p0`, `p1`, …) in this
 * process, a hundred to a commit, and serves until SIGTERM: it claims them, starts their
 * waits and parks them. On SIGUSR1 it prints one line
 * `stats {"activeRuns":…,"triggered":…}` so a test can see how many runs it drives.
 *
 * @module
 */
import { openEngine } from "../../lib/mod.ts";
import { WAITS_PIPELINES } from "../fixtures/waits.ts";

const engine = await openEngine({
  pipelines: WAITS_PIPELINES,
  pollMs: Number(Deno.env.get("KVFLOW_POLL_MS") ?? 1000),
  maxRuns: Number(Deno.env.get("KVFLOW_MAX_RUNS") ?? 16),
  onAlert: () => {},
});
const runs = Number(Deno.env.get("PARK_RUNS") ?? 0);
const began = Date.now();
const parked = engine.pipeline("parked");
for (let i = 0; i < runs; i += 100) {
  const op = engine.kv.atomic();
  for (let j = i; j < Math.min(runs, i + 100); j++) {
    engine.store.addRunCreation(op, engine.store.newRun(parked, { params: { key: `p${j}` } }));
  }
  if (!(await op.commit()).ok) throw new Error("could not create the runs");
}
console.log(`created ${runs} in ${Date.now() - began} ms`);
engine.start();
console.log(`worker ${engine.worker.id} started`);

Deno.addSignalListener("SIGUSR1", () => {
  console.log(`stats ${JSON.stringify({ activeRuns: engine.worker.activeRuns, triggered: runs })}`);
});
const { promise, resolve } = Promise.withResolvers<void>();
Deno.addSignalListener("SIGTERM", () => resolve());
await promise;
await engine.close(1000);
console.log("worker stopped");
Deno.exit(0);
