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
import { withChildren } from "../define/pipeline.ts";
import { EXIT, type Invocation, openCliEngine, openEngineForRun } from "./invocation.ts";
import { loadPipeline, registryFor } from "./load.ts";
import { parseParams } from "./params.ts";
import { priorityFlag } from "./parse.ts";
import { runWaitText, sendCommand } from "./waiting.ts";
import { heldText } from "../define/flow_view.ts";

/**
 * How often a parked run in the foreground looks whether a delivery rang it: an event sent
 * from another process reaches it within this (a queue hint between processes may take a
 * minute); each look is a read of the run, its lease and its bell.
 */
const PARKED_POLL_MS = 250;

/** `run`: starts a run and drives it here, or with `--detach` queues it for a worker. */
export async function run(invocation: Invocation): Promise<number> {
  const target = invocation.args[0];
  const { pipelines, loaders } = invocation.context;
  const { pipeline, module } = await loadPipeline(
    target,
    await registryFor(target, pipelines, loaders),
  );
  const params = parseParams(pipeline, invocation.flags.param ?? [], invocation.flags.params);
  // the pipelines it invokes as children run here too
  const engine = await openCliEngine(
    invocation,
    withChildren([pipeline]),
    !invocation.flags.detach,
  );
  try {
    const run = await engine.store.createRun(pipeline, {
      params,
      logicalDate: invocation.flags.date,
      trigger: "cli",
      module,
      priority: priorityFlag(invocation.flags.priority),
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

/**
 * Drives a run to its end in this process, printing its progress. While its steps run,
 * Ctrl-C interrupts it (it fails resumably); while it is parked (it waits for a time, an
 * event or a child and holds nothing), Ctrl-C detaches and leaves it waiting.
 */
async function foreground(
  invocation: Invocation,
  engine: Engine,
  run: RunRecord,
): Promise<number> {
  const started = Date.now();
  invocation.out(`▶ run ${run.id} · ${run.pipeline} · ${run.logicalDate} · ${run.trigger}`);
  const interrupt = new AbortController();
  const detach = new AbortController();
  const follow = AbortSignal.any([interrupt.signal, detach.signal]);
  let parked = false;
  const stopWatching = engine.subscribe((event) => {
    if (event.type !== "run" || event.run.id !== run.id) return;
    const wasParked = parked;
    parked = event.run.status === "waiting";
    if (parked && !wasParked) parkedLines(invocation, event.run);
  });
  const onSignal = () => {
    if (follow.aborted) exit(EXIT.interrupted);
    if (parked && !engine.worker.driverOf(run.id)) {
      detach.abort();
      return;
    }
    interrupt.abort();
    engine.worker.interrupt("Interrupted by signal (Ctrl-C)");
  };
  const stopListening = onStopSignal(onSignal);
  try {
    // a send from another process rings the run's bell: look at it often while parked
    let heldBy = "";
    const end = await engine.runToEnd(run.id, {
      signal: follow,
      parkedPollMs: PARKED_POLL_MS,
      onHeld: (held) => {
        // once per reason: a limit's hold, then a throttle's, say
        if (held.held!.by === heldBy) return;
        heldBy = held.held!.by;
        invocation.out(`  … ${heldText(held.held!)}`);
      },
    });
    if (detach.signal.aborted && !TERMINAL.has(end.status)) {
      detachedLines(invocation, end);
      return EXIT.ok;
    }
    await engine.worker.settleAlerts();
    const took = formatMs(Date.now() - started);
    if (end.status === "paused") {
      invocation.out(
        invocation.paint.warn(
          `⏸ run ${end.id} paused after ${took}: ${end.paused?.reason ?? "paused"}`,
        ),
      );
      invocation.out(
        `  it goes on once unpaused: deno task unpause ${
          end.paused?.by === "pipeline" ? end.pipeline : end.id
        } (a worker continues it: deno task serve or deno task worker)`,
      );
      return EXIT.ok;
    }
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
    stopWatching();
  }
}

/** What a run in the foreground prints when it parks: that it holds nothing, and the way on. */
function parkedLines(invocation: Invocation, run: RunRecord): void {
  const send = run.waitingFor ? sendCommand(run.waitingFor) : null;
  invocation.out(
    invocation.paint.dim(
      `  … parked: the run holds nothing while it waits; Ctrl-C detaches and leaves it waiting`,
    ),
  );
  if (send) invocation.out(invocation.paint.dim(`    to let it go on: ${send}`));
}

/** What a detached run prints: where it was left and how to follow it. */
function detachedLines(invocation: Invocation, run: RunRecord): void {
  const waiting = runWaitText(run);
  invocation.out(
    invocation.paint.warn(
      `⏸ detached from run ${run.id}: it is ${run.status}${waiting ? `: ${waiting}` : ""}`,
    ),
  );
  invocation.out(`  follow it with: deno task status ${run.id}`);
  invocation.out(
    "  once it is woken or due, a worker continues it: deno task serve (or deno task worker)",
  );
}
