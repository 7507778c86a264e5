/**
 * What kvflow stores about runs, steps, items and attempts, and how each of them may
 * change. Every status change of a run or a step is a function of this module; the
 * store and the driver only persist and schedule what these functions decide.
 *
 * @module
 */
import type { Trigger } from "../define/context.ts";
import { diffGraphs, type Pipeline } from "../define/pipeline.ts";
import type { ErrorInfo } from "./errors.ts";
import { UsageError } from "./errors.ts";

/** A run's status. */
export type RunStatus = "queued" | "running" | "waiting" | "succeeded" | "failed" | "cancelled";

/** A step's (or fan-out item's) status. */
export type StepStatus = "pending" | "running" | "retrying" | "succeeded" | "failed" | "skipped";

/** Run statuses after which nothing happens until a person resumes or reruns. */
export const TERMINAL: ReadonlySet<RunStatus> = new Set(["succeeded", "failed", "cancelled"]);

/** Every run status, in the order a run usually passes them. */
export const RUN_STATUSES: readonly RunStatus[] = [
  "queued",
  "running",
  "waiting",
  "succeeded",
  "failed",
  "cancelled",
];

/** The stored record of a run. */
export interface RunRecord {
  /** Sortable by creation time. */
  id: string;
  /** Pipeline name. */
  pipeline: string;
  /** Hash of the pipeline's step graph when the run was created (or last forced). */
  version: string;
  /**
   * The step graph the version hashes, to explain a change; null when it is too large
   * to keep in the run record (thousands of steps).
   */
  graph: Record<string, string[]> | null;
  /** Validated params. */
  params: Record<string, unknown>;
  /** `YYYY-MM-DD`. */
  logicalDate: string;
  /** For a scheduled or backfilled run: its schedule tick, ms since the epoch. */
  tick?: number | null;
  /** How it was started. */
  trigger: Trigger;
  /** The module the pipeline was loaded from, when it is not in the registry. */
  module?: string;
  /** Status. */
  status: RunStatus;
  /** Creation time, ms since epoch. */
  createdAt: number;
  /** First time a worker started it. */
  startedAt: number | null;
  /** When it last reached a terminal status. */
  endedAt: number | null;
  /** The time of this run's entry in the due-index, or null when it has none. */
  dueAt: number | null;
  /** Why it failed or was cancelled. */
  error: { step: string | null; message: string } | null;
  /** How many times it has failed; numbers its alerts. */
  failures: number;
  /** How many times a worker took it over from an expired lease. */
  takeovers: number;
}

/** Who may write a run's checkpoints, and until when. */
export interface Lease {
  /** The worker's id. */
  owner: string;
  /** Host of the worker, to detect a dead local holder early. */
  host: string;
  /** Process id of the worker. */
  pid: number;
  /** Ms since epoch after which any worker may take the run over. */
  deadline: number;
}

/** A reference to bytes stored in chunks. */
export interface BlobRef {
  /** Unique within the run. */
  id: string;
  /** Total bytes. */
  size: number;
  /** Number of chunks. */
  chunks: number;
}

/** A value as stored: inline when small, else serialized into a blob. */
export type Stored = { inline: unknown } | { blob: BlobRef };

/** The stored state of one step (or of one fan-out item). */
export interface TaskRecord {
  /** Status. */
  status: StepStatus;
  /** Attempts started so far. */
  attempt: number;
  /** Bumped by each rerun; part of the idempotency key. */
  generation: number;
  /**
   * Attempts made before the last resume or rerun reset `attempt`; attempt records are
   * numbered from here, so a resume adds to the history instead of overwriting it.
   */
  base?: number;
  /** When the current or last attempt started. */
  startedAt: number | null;
  /** When it reached its last status. */
  endedAt: number | null;
  /** When a retry is due. */
  nextAt: number | null;
  /** The last error. */
  error: ErrorInfo | null;
  /** The output, once succeeded (absent for fan-out steps: their items hold it). */
  output?: Stored;
  /** For a fan-out step: how many items its list had. */
  items?: number;
  /**
   * Attempts that ended because their worker died (crash, kill or lost lease) since the
   * last resume or rerun. They do not spend the retry policy's attempts: a step whose
   * worker died runs again even with `attempts: 1`, up to {@link MAX_CRASHES} times.
   */
  crashes?: number;
  /**
   * Attempts that a gracefully stopping worker aborted and handed back (see
   * {@linkcode releaseTask}) since the last resume or rerun. Like crashes they do not spend
   * the retry policy's attempts; unlike crashes they have no cap: a rolling restart is
   * not the step's fault.
   */
  released?: number;
}

/**
 * How many times in a row a task's worker may die under it before the run fails: a step
 * that takes its process down each time (out of memory, say) must not loop for ever.
 */
export const MAX_CRASHES = 10;

/** One line logged by a step. */
export interface LogLine {
  /** Ms since epoch. */
  at: number;
  /** Level. */
  level: "debug" | "info" | "warn" | "error";
  /** Message. */
  message: string;
  /** Structured fields. */
  fields?: Record<string, unknown>;
}

/** The stored record of one attempt. */
export interface AttemptRecord {
  /** Step name. */
  step: string;
  /** Fan-out item index, or -1. */
  item: number;
  /** Position in the task's whole history, from 1: resumes and reruns continue it. */
  n: number;
  /** The attempt number `ctx.attempt` had: from 1 after each resume or rerun. */
  attempt: number;
  /** How it ended. */
  status: "succeeded" | "failed" | "crashed" | "interrupted";
  /** Start, ms since epoch. */
  startedAt: number;
  /** End, ms since epoch (for a crash: when the crash was found). */
  endedAt: number;
  /** Error, unless it succeeded. */
  error: ErrorInfo | null;
  /** Log lines. */
  logs: LogLine[];
}

const MAX_RECORDED_GRAPH = 24_000;

/** The graph a run records: the pipeline's, unless it is too large for a KV value. */
export function recordedGraph(pipeline: Pipeline<unknown>): Record<string, string[]> | null {
  const graph = pipeline.graph as Record<string, string[]>;
  return JSON.stringify(graph).length <= MAX_RECORDED_GRAPH ? graph : null;
}

/** A fresh task record. */
export function pendingTask(generation = 0): TaskRecord {
  return {
    status: "pending",
    attempt: 0,
    generation,
    startedAt: null,
    endedAt: null,
    nextAt: null,
    error: null,
  };
}

/** A task back at pending after a resume or rerun, keeping its attempt history's count. */
export function resetTask(task: TaskRecord, generation = task.generation): TaskRecord {
  return {
    ...pendingTask(generation),
    base: (task.base ?? 0) + task.attempt,
    ...(task.items === undefined ? {} : { items: task.items }),
  };
}

/** The record of how an attempt of `task` (its current one) ended. */
export function attemptRecord(
  step: string,
  item: number,
  task: TaskRecord,
  status: AttemptRecord["status"],
  error: ErrorInfo | null,
  logs: LogLine[],
  now: number,
): AttemptRecord {
  return {
    step,
    item,
    n: (task.base ?? 0) + task.attempt,
    attempt: task.attempt,
    status,
    startedAt: task.startedAt ?? now,
    endedAt: now,
    error,
    logs,
  };
}

/** The record of a task whose attempt starts now. */
export function startAttempt(task: TaskRecord, now: number): TaskRecord {
  return {
    ...task,
    status: "running",
    attempt: task.attempt + 1,
    startedAt: now,
    endedAt: null,
    nextAt: null,
  };
}

/** The record of a task whose attempt succeeded. */
export function succeedTask(task: TaskRecord, now: number, output?: Stored): TaskRecord {
  const done: TaskRecord = {
    ...task,
    status: "succeeded",
    endedAt: now,
    nextAt: null,
    error: null,
  };
  if (output !== undefined) done.output = output;
  return done;
}

/**
 * The record of a task whose attempt failed: `retrying` with its next time when the
 * policy allows another attempt and the error is retryable, else `failed`.
 */
export function failAttempt(
  task: TaskRecord,
  now: number,
  error: ErrorInfo,
  attemptsAllowed: number,
  delayMs: number,
): TaskRecord {
  if (error.retryable && spentAttempts(task) < attemptsAllowed) {
    return { ...task, status: "retrying", endedAt: now, nextAt: now + delayMs, error };
  }
  return { ...task, status: "failed", endedAt: now, nextAt: null, error };
}

/**
 * The attempts of a task that spent its retry policy: those that ended in an error, not
 * in a crash or a graceful hand-back of its worker. The count of the attempt now ending
 * while it runs; retry backoff grows with it.
 */
export function spentAttempts(task: TaskRecord): number {
  return task.attempt - (task.crashes ?? 0) - (task.released ?? 0);
}

/** Whether a task may start now. */
export function isReady(task: TaskRecord, now: number): boolean {
  return task.status === "pending" || (task.status === "retrying" && (task.nextAt ?? 0) <= now);
}

/** The record of a step that cannot run because a step it needs failed or was skipped. */
export function skipTask(task: TaskRecord, now: number, because: string): TaskRecord {
  return {
    ...task,
    status: "skipped",
    endedAt: now,
    nextAt: null,
    error: { name: "Skipped", message: `Skipped: '${because}' did not succeed`, retryable: true },
  };
}

/**
 * The record of a running or retrying task whose run was cancelled: failed, with a
 * retryable error, so a resume runs it again.
 */
export function cancelTask(task: TaskRecord, now: number, reason: string): TaskRecord {
  return {
    ...task,
    status: "failed",
    endedAt: now,
    nextAt: null,
    error: { name: "Cancelled", message: reason, retryable: true },
  };
}

/** The error stored for an attempt that was running when its worker died. */
export function crashError(attempt: number): ErrorInfo {
  return {
    name: "WorkerLost",
    message:
      `The worker running attempt ${attempt} stopped before it finished (crash, kill or lost lease)`,
    retryable: true,
  };
}

/**
 * The record of a task whose attempt was running when its worker died: due again at once,
 * without spending a retry attempt, unless its workers died {@link MAX_CRASHES} times.
 */
export function crashTask(task: TaskRecord, now: number): TaskRecord {
  const crashes = (task.crashes ?? 0) + 1;
  if (crashes > MAX_CRASHES) {
    const error: ErrorInfo = {
      name: "WorkerLost",
      message:
        `The worker running this step stopped ${crashes} times before it finished (crash, kill or lost lease); kvflow stopped trying. Fix what takes the worker down, then resume the run`,
      retryable: false,
    };
    return { ...task, status: "failed", endedAt: now, nextAt: null, error, crashes };
  }
  return {
    ...task,
    status: "retrying",
    endedAt: now,
    nextAt: now,
    error: crashError(task.attempt),
    crashes,
  };
}

/** The error stored for an attempt that a gracefully stopping worker aborted. */
export function releaseError(attempt: number): ErrorInfo {
  return {
    name: "Interrupted",
    message:
      `The worker running attempt ${attempt} stopped gracefully (shutdown or restart) before it finished; the step runs again`,
    retryable: true,
  };
}

/**
 * The record of a task whose attempt a gracefully stopping worker aborted after its grace
 * period and handed back: due again at once, without counting as a crash (the worker did
 * not die: rolling restarts during a long step must not use up {@linkcode MAX_CRASHES})
 * and without spending a retry attempt.
 */
export function releaseTask(task: TaskRecord, now: number): TaskRecord {
  return {
    ...task,
    status: "retrying",
    endedAt: now,
    nextAt: now,
    error: releaseError(task.attempt),
    released: (task.released ?? 0) + 1,
  };
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
    const record = steps.get(s.name);
    if (!record) {
      resets.push({ step: s.name, record: pendingTask(), items: "none" });
    } else if (record.status !== "succeeded") {
      resets.push({
        step: s.name,
        record: resetTask(record),
        items: "failed",
      });
    }
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
        },
        items: "all",
      });
    } else if (!record) {
      resets.push({ step: s.name, record: pendingTask(), items: "none" });
    } else if (record.status !== "succeeded") {
      resets.push({
        step: s.name,
        record: resetTask(record),
        items: "failed",
      });
    }
  }
  return resets;
}

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

/** The idempotency key of a step or item: stable across attempts, new on each rerun. */
export function idempotencyKey(
  runId: string,
  step: string,
  item: number,
  generation: number,
): string {
  return `${runId}:${step}${item >= 0 ? `:${item}` : ""}${generation > 0 ? `:g${generation}` : ""}`;
}
