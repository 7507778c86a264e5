/**
 * How a task (a step, or one item of a fan-out step) may change: every status change
 * is a function here, from one record to the next. The store and the driver only persist
 * and schedule what these functions decide.
 *
 * @module
 */
import type { ErrorInfo } from "./errors.ts";
import type { AttemptRecord, LogLine, Stored, TaskRecord } from "./records.ts";

/**
 * How many times in a row a task's worker may die under it before the run fails: a step
 * that takes its process down each time (out of memory, say) must not loop for ever.
 */
export const MAX_CRASHES = 10;

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
    ...(task.endedAt === null ? {} : { after: task.endedAt }),
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
  const { wait: _, ...rest } = task;
  return {
    ...rest,
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
export function releaseError(attempt: number, cause: "stop" | "pause" = "stop"): ErrorInfo {
  return {
    name: "Interrupted",
    message: cause === "pause"
      ? `The run was paused before attempt ${attempt} began; the step runs once it is unpaused`
      : `The worker running attempt ${attempt} stopped gracefully (shutdown or restart) before it finished; the step runs again`,
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

/** The idempotency key of a step or item: stable across attempts, new on each rerun. */
export function idempotencyKey(
  runId: string,
  step: string,
  item: number,
  generation: number,
): string {
  return `${runId}:${step}${item >= 0 ? `:${item}` : ""}${generation > 0 ? `:g${generation}` : ""}`;
}
