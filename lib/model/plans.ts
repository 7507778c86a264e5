/**
 * Resume and rerun as plans: which tasks go back to pending and which checkpoints are
 * kept, decided from the stored records before the store commits them.
 *
 * @module
 */
import { diffGraphs, type Pipeline } from "../define/pipeline.ts";
import { UsageError } from "./errors.ts";
import { type RunRecord, type TaskRecord, TERMINAL } from "./records.ts";
import { pendingTask, resetTask } from "./transitions.ts";

/**
 * Characters of step-graph JSON a run record keeps, so that resume can say what changed; a
 * larger graph is not recorded (its version still is), leaving the record room under the
 * value limit.
 */
const MAX_RECORDED_GRAPH_CHARS = 24_000;

/** The graph a run records: the pipeline's, unless it is too large for a KV value. */
export function recordedGraph(pipeline: Pipeline<unknown>): Record<string, string[]> | null {
  const graph = pipeline.graph as Record<string, string[]>;
  return JSON.stringify(graph).length <= MAX_RECORDED_GRAPH_CHARS ? graph : null;
}

/** The change resume or rerun makes to one step's record. */
export interface StepReset {
  /** Step name. */
  step: string;
  /** Its new record. */
  record: TaskRecord;
  /** Whether its fan-out items must be cleared too (failed ones only, or all). */
  items: "none" | "failed" | "all";
}

/**
 * What resuming changes: failed and skipped steps go back to pending with their attempts
 * reset; checkpointed steps are untouched. A graph that changed since the run was
 * created needs `force`.
 *
 * @throws {UsageError} when the run cannot be resumed as asked
 */
export function planResume(
  run: RunRecord,
  pipeline: Pipeline<unknown>,
  steps: ReadonlyMap<string, TaskRecord>,
  force: boolean,
): StepReset[] {
  if (run.status === "succeeded") {
    throw new UsageError(
      `Run ${run.id} already succeeded: nothing to resume (use rerun --from <step> to run steps again)`,
      "conflict",
    );
  }
  checkVersion(run, pipeline, force);
  const resets: StepReset[] = [];
  for (const s of pipeline.steps) {
    const reset = resumeReset(s.name, steps.get(s.name));
    if (reset) resets.push(reset);
  }
  return resets;
}

/**
 * What a rerun from step `from` changes: that step and every step that depends on it go
 * back to pending with a new generation (so new idempotency keys); failed and skipped
 * steps elsewhere are resumed as well.
 *
 * @throws {UsageError} on an unknown step or a run that is still active
 */
export function planRerun(
  run: RunRecord,
  pipeline: Pipeline<unknown>,
  steps: ReadonlyMap<string, TaskRecord>,
  from: string,
  force: boolean,
): StepReset[] {
  if (!TERMINAL.has(run.status)) {
    throw new UsageError(
      `Run ${run.id} is ${run.status}: cancel it or let it finish before a rerun`,
      "conflict",
    );
  }
  if (!pipeline.byName.has(from)) {
    throw new UsageError(
      `Unknown step '${from}' in pipeline '${pipeline.name}': steps are ${
        pipeline.steps.map((s) => s.name).join(", ")
      }`,
      "not_found",
    );
  }
  checkVersion(run, pipeline, force);
  const rerun = new Set([from]);
  for (const s of pipeline.steps) {
    if (Object.values(s.needs).some((n) => rerun.has(n.name))) rerun.add(s.name);
  }
  const resets: StepReset[] = [];
  for (const s of pipeline.steps) {
    const record = steps.get(s.name);
    if (rerun.has(s.name)) {
      resets.push({
        step: s.name,
        // attempt records go on numbering after the earlier ones instead of overwriting them
        record: {
          ...pendingTask((record?.generation ?? 0) + 1),
          base: (record?.base ?? 0) + (record?.attempt ?? 0),
          // a wait run again takes only events after its last try (see TaskRecord.after)
          ...(record?.endedAt ? { after: record.endedAt } : {}),
        },
        items: "all",
      });
    } else {
      const reset = resumeReset(s.name, record);
      if (reset) resets.push(reset);
    }
  }
  return resets;
}

/**
 * What resuming does to one step: a step never recorded starts pending, a step that did
 * not succeed goes back to pending with its failed items, a succeeded one is kept (null).
 */
function resumeReset(step: string, record: TaskRecord | undefined): StepReset | null {
  if (!record) return { step, record: pendingTask(), items: "none" };
  if (record.status !== "succeeded") return { step, record: resetTask(record), items: "failed" };
  return null;
}

/** Refuses to resume or rerun on a changed step graph, saying what changed, unless forced. */
function checkVersion(run: RunRecord, pipeline: Pipeline<unknown>, force: boolean): void {
  if (run.version === pipeline.version || force) return;
  const changes = run.graph
    ? diffGraphs(run.graph, pipeline.graph)
    : ["its step graph changed (too large to record what changed)"];
  if (changes.length === 0) changes.push("a step changed between a single step and a fan-out");
  throw new UsageError(
    `Pipeline '${pipeline.name}' changed since run ${run.id} started: ${
      changes.join("; ")
    }. Pass --force to continue on the new graph`,
    "version_changed",
  );
}
