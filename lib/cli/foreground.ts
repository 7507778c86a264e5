/**
 * The commands that drive a run in the foreground: `run`, `resume`, `rerun`, and
 * `cancel`. A failed run exits 1 and prints the command that resumes it.
 *
 * @module
 */
import { KvUnavailableError } from "../model/errors.ts";
import type { Engine } from "../engine/engine.ts";
import { type RunRecord, TERMINAL } from "../model/records.ts";
import { exit, onStopSignal } from "../platform/process.ts";
import { formatMs } from "../define/duration.ts";
import { EXIT, type Invocation, openCliEngine, openEngineForRun } from "./invocation.ts";
import { loadPipeline } from "./load.ts";
import { parseParams } from "./params.ts";

/** `run`: starts a run and drives it here, or with `--detach` queues it for a worker. */
export async function run(invocation: Invocation): Promise<number> {
  const target = invocation.args[0];
  const { pipeline, module } = await loadPipeline(target, invocation.context.pipelines);
  const params = parseParams(pipeline, invocation.flags.param ?? [], invocation.flags.params);
  const engine = await openCliEngine(invocation, [pipeline], !invocation.flags.detach);
  try {
    const run = await engine.store.createRun(pipeline, {
      params,
      logicalDate: invocation.flags.date,
      trigger: "cli",
      module,
    });
    if (invocation.flags.detach) {
      invocation.out(run.id);
      invocation.err(
        `kvflow: run ${run.id} queued; a worker (deno task worker or serve) will pick it up. Follow it with: deno task status ${run.id}`,
      );
      return EXIT.ok;
    }
    return await foreground(invocation, engine, run);
  } finally {
    await engine.close();
  }
}

/** `resume`: requeues a run from its checkpoints and drives it here. */
export async function resume(invocation: Invocation): Promise<number> {
  const runId = invocation.args[0];
  const engine = await openEngineForRun(invocation, runId);
  try {
    const run = await engine.store.requireRun(runId);
    const requeued = await engine.store.resume(
      run,
      engine.pipeline(run.pipeline),
      invocation.flags.force,
    );
    return await foreground(invocation, engine, requeued);
  } finally {
    await engine.close();
  }
}

/** `rerun`: requeues a run from a step on and drives it here. */
export async function rerun(invocation: Invocation): Promise<number> {
  const runId = invocation.args[0];
  const engine = await openEngineForRun(invocation, runId);
  try {
    const run = await engine.store.requireRun(runId);
    const requeued = await engine.store.rerun(
      run,
      engine.pipeline(run.pipeline),
      invocation.flags.from!,
      invocation.flags.force,
    );
    return await foreground(invocation, engine, requeued);
  } finally {
    await engine.close();
  }
}

/** `cancel`: cancels a run. */
export async function cancel(invocation: Invocation): Promise<number> {
  const runId = invocation.args[0];
  const engine = await openCliEngine(invocation, []);
  try {
    const run = await engine.store.cancel(runId);
    invocation.out(`run ${run.id} cancelled`);
    return EXIT.ok;
  } finally {
    await engine.close();
  }
}

/** Drives a run to its end in this process, printing its progress; Ctrl-C interrupts it. */
async function foreground(
  invocation: Invocation,
  engine: Engine,
  run: RunRecord,
): Promise<number> {
  const started = Date.now();
  invocation.out(`▶ run ${run.id} · ${run.pipeline} · ${run.logicalDate} · ${run.trigger}`);
  const interrupt = new AbortController();
  const onSignal = () => {
    if (interrupt.signal.aborted) exit(EXIT.interrupted);
    interrupt.abort();
    engine.worker.interrupt("Interrupted by signal (Ctrl-C)");
  };
  const stopListening = onStopSignal(onSignal);
  try {
    const end = await engine.runToEnd(run.id, { signal: interrupt.signal });
    await engine.worker.settleAlerts();
    const took = formatMs(Date.now() - started);
    if (end.status === "succeeded") {
      invocation.out(invocation.paint.ok(`✓ run ${end.id} succeeded in ${took}`));
      return EXIT.ok;
    }
    const why = end.error
      ? `: ${end.error.step ? `step '${end.error.step}': ` : ""}${end.error.message}`
      : "";
    invocation.out(
      invocation.paint.bad(
        `✗ run ${end.id} ${
          TERMINAL.has(end.status) ? end.status : `left ${end.status}`
        } after ${took}${why}`,
      ),
    );
    invocation.out(`  fix the cause, then resume with: deno task resume ${end.id}`);
    return interrupt.signal.aborted ? EXIT.interrupted : EXIT.failed;
  } catch (error) {
    if (!(error instanceof KvUnavailableError)) throw error;
    // The run stays as its last commit left it; its lease runs out, or resume takes it.
    invocation.err(
      `kvflow: run ${run.id} stopped: ${error.message}; its checkpoints are kept: fix the cause, then resume with: deno task resume ${run.id}`,
    );
    return EXIT.failed;
  } finally {
    stopListening();
  }
}
