/**
 * Running attempts: the attempts of a run whose body runs now, their step timeouts (one
 * timer for all of them), the wait for a body that an abort cuts short, and the check of
 * a body's output against the step's schema.
 *
 * @module
 */
import type { AnyStep } from "../../define/step.ts";
import { MAX_TIMEOUT_MS } from "../../define/step.ts";
import { NonRetryableError } from "../../model/errors.ts";
import type { LogLine, TaskRecord } from "../../model/records.ts";
import type { StepNode } from "./graph.ts";

/** A running attempt of a step or fan-out item. */
export interface Attempt {
  node: StepNode;
  /** Fan-out item index, or -1. */
  index: number;
  /** Its key in {@linkcode Attempts.running}. */
  key: string;
  /** Its task's record as the attempt started. */
  record: TaskRecord;
  /** The lines its body logged. */
  logs: LogLine[];
  controller: AbortController;
  /** Rejects the wait for the body once the attempt is aborted (set while its body runs). */
  onAbort: ((reason: unknown) => void) | undefined;
  /** When its timeout fires (`performance.now()` ms): Infinity until its body starts. */
  deadline: number;
}

/** The attempts of a run that run now, and the one timer for their timeouts. */
export class Attempts {
  /** The running attempts, by task key. */
  readonly running = new Map<string, Attempt>();
  /** One timer for the step timeouts, due at the earliest deadline it was armed for. */
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;

  /** How many run now. */
  get size(): number {
    return this.running.size;
  }

  /** Adds the attempt of `node` (item `index`, or -1) that starts now as `record`. */
  add(node: StepNode, index: number, record: TaskRecord): Attempt {
    const attempt: Attempt = {
      node,
      index,
      key: taskKey(node.def.name, index),
      record,
      logs: [],
      controller: new AbortController(),
      onAbort: undefined,
      deadline: Infinity,
    };
    this.running.set(attempt.key, attempt);
    return attempt;
  }

  /** Whether `attempt` still runs here: not ended, nor aborted by a stop. */
  owns(attempt: Attempt): boolean {
    return this.running.get(attempt.key) === attempt;
  }

  /** Forgets an attempt whose body ended. */
  delete(attempt: Attempt): void {
    this.running.delete(attempt.key);
  }

  /**
   * Aborts every running body; their late results are ignored.
   *
   * @returns how many there were
   */
  abortAll(reason: string): number {
    const n = this.running.size;
    for (const attempt of this.running.values()) abortAttempt(attempt, new Error(reason));
    this.running.clear();
    return n;
  }

  /**
   * Arms the timeout timer for a body due to time out at `deadline` (ms on
   * `performance.now()`). One timer serves every running body: it is moved only when a
   * deadline comes before the one it is armed for, so a chain of steps with the same
   * timeout sets it once per timeout period, not once per step.
   */
  armTimeout(deadline: number): void {
    if (deadline >= this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timerAt = deadline;
    const delay = Math.min(Math.max(0, deadline - performance.now()), MAX_TIMEOUT_MS);
    this.#timer = setTimeout(() => this.#timeoutsDue(), delay);
  }

  /** Clears the timeout timer. */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Aborts the bodies whose timeout has passed and arms the timer for the next one. */
  #timeoutsDue(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const attempt of this.running.values()) {
      if (attempt.deadline <= now) {
        attempt.deadline = Infinity;
        const { def, timeoutMs } = attempt.node;
        const error = new Error(`Step '${def.name}' timed out after ${timeoutMs} ms`);
        error.name = "TimeoutError";
        abortAttempt(attempt, error);
      } else if (attempt.deadline < next) {
        next = attempt.deadline;
      }
    }
    if (next !== Infinity) this.armTimeout(next);
  }
}

/** A task's key: its step and item. */
export function taskKey(step: string, item: number): string {
  return `${step}\u0000${item}`;
}

/** Aborts an attempt's signal and the wait for its body, with the signal's (first) reason. */
export function abortAttempt(attempt: Attempt, reason: unknown): void {
  attempt.controller.abort(reason);
  attempt.onAbort?.(attempt.controller.signal.reason);
}

/**
 * Resolves as `promise` does, or rejects with the attempt's abort reason once it is
 * aborted (by {@linkcode abortAttempt}: no listener on the signal, no timer per body).
 */
export function untilAborted<T>(promise: Promise<T>, attempt: Attempt): Promise<T> {
  const signal = attempt.controller.signal;
  if (signal.aborted) {
    promise.catch(noop);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    attempt.onAbort = reject;
    promise.then(resolve, reject);
  });
}

/**
 * A body's output as its step's schema parses it.
 *
 * @throws {NonRetryableError} when it does not match
 */
export function checkOutput(def: AnyStep, value: unknown): unknown {
  if (!def.output) return value;
  const parsed = def.output.safeParse(value);
  if (parsed.success) return parsed.data;
  throw new NonRetryableError(
    `Output of step '${def.name}' does not match its schema: ${
      parsed.error.issues.map((i) => `${i.path.join(".") || "(output)"}: ${i.message}`)
        .join("; ")
    }`,
  );
}

/** `promise`, or a TimeoutError with `message` once `ms` have passed. */
export async function withinTimeout<T>(
  promise: Promise<T>,
  ms: number,
  message: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new Error(message);
      error.name = "TimeoutError";
      reject(error);
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function noop(): void {}
