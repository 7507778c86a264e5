/**
 * A trial of a step: its body run once, here, on the inputs a run recorded (the
 * checkpointed outputs of its needs, the params, the logical date), with a real context
 * (log, signal, the step's timeout) and an idempotency key marked as a trial. It writes
 * nothing to KV: no attempt record, no lease, no checkpoint; its artifacts stay in memory.
 * So it is safe on a run that failed, waits, or runs elsewhere right now. What the body
 * itself does (a mail, a post, a file) is real.
 *
 * @module
 */
import v8 from "node:v8";
import type { ArtifactOptions, ArtifactRef } from "../../define/context.ts";
import { diffGraphs, type Pipeline } from "../../define/pipeline.ts";
import { resolveRetry } from "../../define/retry.ts";
import { toMs } from "../../define/duration.ts";
import { type ErrorInfo, toErrorInfo, UsageError } from "../../model/errors.ts";
import type { LogLine, RunRecord, TaskRecord } from "../../model/records.ts";
import { pendingTask } from "../../model/transitions.ts";
import { systemClock } from "../../model/clock.ts";
import * as keys from "../../kv/keys.ts";
import { keySize } from "../../kv/keys.ts";
import type { Store } from "../../store/store.ts";
import { abortAttempt, Attempts, checkOutput, untilAborted } from "./attempt.ts";
import { artifactBytes, type ArtifactStore, stepContext } from "./context.ts";
import { newFan } from "./fan_out.ts";
import { callItems } from "./items.ts";
import type { StepNode } from "./graph.ts";

/** The suffix that marks a trial's idempotency key. */
export const TRIAL_KEY_SUFFIX = ":try";

/** A step of a run made ready to try: its inputs read, its items expanded. */
export interface Trial {
  /** Where the run is read from (`ctx.readArtifact` reads the run's artifacts there). */
  readonly store: Store;
  /** The run, as read. */
  readonly run: RunRecord;
  /** The pipeline, as its code is now. */
  readonly pipeline: Pipeline<unknown>;
  /** The step's node, as the attempt machinery runs it. */
  readonly node: StepNode;
  /** The item tried, or -1 for a step that is not a fan-out. */
  readonly item: number;
  /** The step's inputs: the outputs of its needs. */
  readonly inputs: Record<string, unknown>;
  /** For a fan-out step whose `items` threw: that error (the trial fails with it). */
  readonly itemsError?: ErrorInfo;
}

/** An artifact a trial's body stored: kept in memory, never written. */
export interface TrialArtifact {
  /** Its name. */
  name: string;
  /** Its MIME type. */
  contentType: string;
  /** Its size in bytes. */
  size: number;
}

/** How a trial went. */
export type TrialResult =
  & {
    /** The lines the body logged. */
    logs: LogLine[];
    /** How long the body ran, in ms. */
    durationMs: number;
    /** The idempotency key the body saw. */
    idempotencyKey: string;
    /** The artifacts it stored, in memory. */
    artifacts: TrialArtifact[];
  }
  & (
    | { ok: true; output: unknown; outputBytes: number }
    | { ok: false; error: ErrorInfo }
  );

/** What to try: a step, and for a fan-out step one item. */
export interface TrialTarget {
  /** The step's name. */
  step: string;
  /** The item, for a fan-out step. */
  item?: number;
}

/**
 * Reads what a step of a run needs to be tried, and checks that it can be: the step
 * exists, runs a body, its needs all succeeded in the run, and its needs are the same in
 * the pipeline's code as in the graph the run recorded. Reads only.
 *
 * @param store the store to read the run from
 * @param run the run
 * @param pipeline the run's pipeline, as its code is now
 * @param target the step, and the item of a fan-out step
 * @returns the trial, ready to run
 * @throws {UsageError} naming what stands in the way, in one line
 */
export async function prepareTrial(
  store: Store,
  run: RunRecord,
  pipeline: Pipeline<unknown>,
  target: TrialTarget,
): Promise<Trial> {
  const { step } = target;
  const def = pipeline.byName.get(step);
  const recorded = run.graph;
  if (!def) {
    if (recorded && step in recorded) {
      const changes = diffGraphs(recorded, pipeline.graph);
      throw new UsageError(
        `Step '${step}' of run ${run.id} is no longer in pipeline '${pipeline.name}': ${
          changes.join("; ")
        }`,
      );
    }
    throw new UsageError(
      `Unknown step '${step}' of pipeline '${pipeline.name}': its steps are ${
        pipeline.steps.map((s) => s.name).join(", ")
      }`,
    );
  }
  if (def.wait) {
    throw new UsageError(
      `Step '${step}' is a wait (${WAIT_WORDS[def.wait.kind]}): it has no body to try`,
    );
  }
  checkInputsUnchanged(run, pipeline, step);
  const steps = await store.getSteps(run.id);
  const missing = Object.values(def.needs)
    .map((need) => ({ name: need.name, status: steps.get(need.name)?.status ?? "pending" }))
    .filter((need) => need.status !== "succeeded");
  if (missing.length > 0) {
    throw new UsageError(
      `Step '${step}' cannot be tried on run ${run.id}: the output of ${
        missing.map((m) => `'${m.name}' (${m.status})`).join(", ")
      } is missing`,
    );
  }
  const inputs: Record<string, unknown> = {};
  for (const [input, need] of Object.entries(def.needs)) {
    inputs[input] = await store.getOutput(run.id, need.name);
  }
  const record = steps.get(step) ?? pendingTask();
  const timeoutMs = def.timeout === undefined
    ? pipeline.defaults.timeoutMs
    : toMs(def.timeout, `timeout of step '${step}'`);
  const key = keys.step(run.id, step);
  const node: StepNode = {
    def,
    needs: [],
    dependents: [],
    at: 0,
    open: false,
    listed: false,
    key,
    keyId: JSON.stringify(key),
    keyBytes: keySize(key),
    record,
    retry: resolveRetry(def.retry, pipeline.defaults.retry, `step '${step}'`),
    timeoutMs,
  };
  if (!def.fanOut) {
    if (target.item !== undefined) {
      throw new UsageError(`Step '${step}' is not a fan-out step: it takes no --item`);
    }
    return { store, run, pipeline, node, item: -1, inputs };
  }
  let values: unknown[];
  try {
    values = await callItems(node, inputs);
  } catch (error) {
    return {
      store,
      run,
      pipeline,
      node,
      item: target.item ?? 0,
      inputs,
      itemsError: toErrorInfo(error),
    };
  }
  if (record.items !== undefined && record.items !== values.length) {
    throw new UsageError(
      `items of step '${step}' now returns ${values.length} items, but run ${run.id} recorded ${record.items}: the item list changed`,
    );
  }
  const range = values.length === 0 ? "none" : `0 to ${values.length - 1}`;
  if (target.item === undefined) {
    throw new UsageError(
      `Step '${step}' is a fan-out of ${values.length} items in run ${run.id}: choose one with --item N (${range})`,
    );
  }
  if (target.item >= values.length) {
    throw new UsageError(
      `Unknown item ${target.item} of step '${step}' in run ${run.id}: its items are ${range}`,
    );
  }
  node.fan = newFan(values);
  const items = await store.getItems(run.id, step);
  node.record = items.get(target.item) ?? pendingTask(record.generation);
  return { store, run, pipeline, node, item: target.item, inputs };
}

/**
 * Runs a prepared trial: the step's body once, with the step's timeout, through the
 * attempt machinery the driver uses, writing nothing.
 *
 * @param trial what {@linkcode prepareTrial} made
 * @param signal aborts the body (Ctrl-C), as a cancel aborts a run's attempt
 * @returns the output or the error, the log lines, the duration
 */
export async function runTrial(trial: Trial, signal?: AbortSignal): Promise<TrialResult> {
  const { node, item, run } = trial;
  const attempts = new Attempts();
  const attempt = attempts.add(node, item, trialRecord(node.record));
  const artifacts = new TrialArtifacts(run.id);
  const context = stepContext(
    { run: () => run, store: trial.store, clock: systemClock, artifacts },
    attempt,
    trial.inputs,
  );
  const idempotencyKey = context.idempotencyKey + TRIAL_KEY_SUFFIX;
  const ctx = { ...context, idempotencyKey };
  const started = performance.now();
  const ended = (
    outcome: { ok: true; output: unknown; outputBytes: number } | { ok: false; error: ErrorInfo },
  ): TrialResult => ({
    ...outcome,
    logs: attempt.logs,
    durationMs: Math.round(performance.now() - started),
    idempotencyKey,
    artifacts: artifacts.list(),
  });
  if (trial.itemsError) return ended({ ok: false, error: trial.itemsError });
  const stop = () => abortAttempt(attempt, new Error("Trial interrupted"));
  signal?.addEventListener("abort", stop, { once: true });
  try {
    attempt.deadline = performance.now() + node.timeoutMs;
    attempts.armTimeout(attempt.deadline);
    const body = item < 0
      ? node.def.run(trial.inputs, ctx)
      : node.def.run(node.fan!.values[item], ctx);
    const output = checkOutput(node.def, await untilAborted(body, attempt));
    // what the checkpoint would store: a value KV cannot hold fails the attempt there too
    const outputBytes = v8.serialize(output).byteLength;
    return ended({ ok: true, output, outputBytes });
  } catch (error) {
    return ended({ ok: false, error: toErrorInfo(error) });
  } finally {
    signal?.removeEventListener("abort", stop);
    attempts.stop();
    attempts.delete(attempt);
  }
}

/** The wait steps' kinds in a user's words. */
const WAIT_WORDS = { sleep: "sleep", event: "waitFor", child: "invoke" } as const;

/**
 * The attempt a trial is: the number the next attempt of its task would have (a resume
 * or a rerun of an ended task starts again at 1).
 */
function trialRecord(record: TaskRecord): TaskRecord {
  const ended = record.status === "failed" || record.status === "skipped" ||
    record.status === "succeeded";
  return { ...record, status: "running", attempt: ended ? 1 : record.attempt + 1 };
}

/**
 * Refuses a step whose needs differ between the graph the run recorded and the
 * pipeline's code: the recorded outputs would not be the inputs the code expects.
 */
function checkInputsUnchanged(run: RunRecord, pipeline: Pipeline<unknown>, step: string): void {
  const recorded = run.graph;
  if (!recorded) {
    if (run.version === pipeline.version) return;
    throw new UsageError(
      `Pipeline '${pipeline.name}' changed since run ${run.id} started (its step graph was too large to record what changed): step '${step}' cannot be tried on it`,
    );
  }
  const now = pipeline.graph[step];
  const before = recorded[step];
  if (!before) {
    throw new UsageError(
      `Step '${step}' was added to pipeline '${pipeline.name}' after run ${run.id} started: the run recorded no inputs for it`,
    );
  }
  if (before.join() !== now.join()) {
    throw new UsageError(
      `Step '${step}' needed [${before.join(", ")}] when run ${run.id} started, now needs [${
        now.join(", ")
      }]: the run recorded other inputs than the code takes`,
    );
  }
}

/** A trial's artifacts: kept in memory with their size, so nothing reaches the run. */
class TrialArtifacts implements ArtifactStore {
  readonly #runId: string;
  readonly #stored = new Map<string, TrialArtifact>();

  constructor(runId: string) {
    this.#runId = runId;
  }

  store(
    _step: string,
    _item: number,
    name: string,
    data: Uint8Array | string,
    options?: ArtifactOptions,
  ): Promise<ArtifactRef> {
    let bytes: Uint8Array, contentType: string;
    try {
      ({ bytes, contentType } = artifactBytes(name, data, options));
    } catch (error) {
      return Promise.reject(error);
    }
    const artifact = { name, contentType, size: bytes.byteLength };
    this.#stored.set(name, artifact);
    return Promise.resolve({ artifact: true, runId: this.#runId, ...artifact });
  }

  list(): TrialArtifact[] {
    return [...this.#stored.values()];
  }
}
