/**
 * The sender of the wait chaos test: another process that creates runs and sends events
 * with `engine.send`, each at its planned time, all jobs at once. Its engine knows the
 * wait pipelines (so events are indexed by their correlation) but is not started: it
 * drives only the runs its own sends wake, as any process that sends does.
 *
 * `WAITS_PLAN` names a JSON file of {@linkcode SenderJob}s; every action done is appended
 * to `WAITS_DONE` (`job:action`), and each send's answer to `WAITS_SENT` (JSON lines). A
 * sender started again after a SIGKILL skips what is done and repeats what was in
 * flight: a repeated send has the same id.
 *
 * @module
 */
import { openEngine } from "../../lib/mod.ts";
import { UsageError } from "../../lib/model/errors.ts";
import { WAITS_PIPELINES } from "../fixtures/waits.ts";

/** One action of a job, at a wall time (ms since the epoch). */
export type SenderAction =
  | { at: number; kind: "create"; pipeline: string; id: string; key: string }
  | { at: number; kind: "send"; name: string; id: string; key: string };

/** A sequence of actions, done in order. */
export interface SenderJob {
  actions: SenderAction[];
}

/** One send's answer, as the sender logs it. */
export interface SentLine {
  id: string;
  name: string;
  duplicate: boolean;
  woke: string[];
  at: number;
  pid: number;
}

const plan: SenderJob[] = JSON.parse(await Deno.readTextFile(Deno.env.get("WAITS_PLAN")!));
const donePath = Deno.env.get("WAITS_DONE")!;
const sentPath = Deno.env.get("WAITS_SENT")!;
let doneText = "";
try {
  doneText = await Deno.readTextFile(donePath);
} catch (error) {
  if (!(error instanceof Deno.errors.NotFound)) throw error;
}
const done = new Set(doneText.split("\n").filter((l) => l !== ""));

const engine = await openEngine({
  pipelines: WAITS_PIPELINES,
  leaseMs: Number(Deno.env.get("KVFLOW_LEASE_MS") ?? 5000),
  onAlert: () => {},
});
const append = (path: string, line: string) =>
  Deno.writeTextFileSync(path, line + "\n", { append: true });

async function act(action: SenderAction): Promise<void> {
  if (action.kind === "create") {
    try {
      await engine.store.createRun(engine.pipeline(action.pipeline), {
        id: action.id,
        params: { key: action.key },
      });
    } catch (error) {
      // created before this sender was killed and started again
      if (!(error instanceof UsageError && error.code === "conflict")) throw error;
    }
    return;
  }
  const result = await engine.send(action.name, { key: action.key }, { id: action.id });
  const line: SentLine = {
    id: action.id,
    name: action.name,
    duplicate: result.duplicate,
    woke: result.woke.map((w) => w.runId),
    at: result.event.at,
    pid: Deno.pid,
  };
  append(sentPath, JSON.stringify(line));
}

console.error(`sender ${Deno.pid} started`);
await Promise.all(plan.map(async (job, j) => {
  for (const [a, action] of job.actions.entries()) {
    if (done.has(`${j}:${a}`)) continue;
    const wait = action.at - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await act(action);
    append(donePath, `${j}:${a}`);
  }
}));
// the runs its sends woke, handed back to the workers
await engine.close(1000);
console.error(`sender ${Deno.pid} done`);
