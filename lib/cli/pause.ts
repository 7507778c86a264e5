/**
 * `pause` and `unpause`, of a pipeline (by name) or of a run (by id).
 *
 * @module
 */
import type { PauseOutcome } from "../engine/engine.ts";
import { EXIT, type Invocation, openCliEngine } from "./invocation.ts";

/** `pause <pipeline|run-id>`: pauses it; pausing a paused one changes nothing. */
export async function pause(invocation: Invocation): Promise<number> {
  return await change(invocation, "pause");
}

/** `unpause <pipeline|run-id>`: lets it go on; unpausing what is not paused changes nothing. */
export async function unpause(invocation: Invocation): Promise<number> {
  return await change(invocation, "unpause");
}

async function change(invocation: Invocation, verb: "pause" | "unpause"): Promise<number> {
  const target = invocation.args[0];
  const engine = await openCliEngine(invocation, invocation.context.pipelines);
  try {
    const outcome = verb === "pause"
      ? await engine.pause(target, "Paused by request (CLI)")
      : await engine.unpause(target);
    if (invocation.flags.json) invocation.out(JSON.stringify(outcome, null, 2));
    else invocation.out(describe(outcome, verb));
    return EXIT.ok;
  } finally {
    await engine.close();
  }
}

function describe(outcome: PauseOutcome, verb: "pause" | "unpause"): string {
  if (outcome.kind === "pipeline") {
    return verb === "pause"
      ? `pipeline ${outcome.pipeline} paused: triggers are queued, its schedule waits`
      : `pipeline ${outcome.pipeline} unpaused: ${outcome.runs} queued run(s) due now`;
  }
  const run = outcome.run;
  if (verb === "unpause") return `run ${run.id} unpaused: ${run.status}`;
  return run.status === "paused"
    ? `run ${run.id} paused`
    : `run ${run.id} pausing: its worker finishes the attempts in flight, then lets it go`;
}
