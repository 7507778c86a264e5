/**
 * Error types a caller may catch, and the one way kvflow turns any thrown value into a
 * record it can store and show.
 *
 * @module
 */

/**
 * Thrown by a step to fail it at once, without spending the remaining retry attempts.
 *
 * @example Fail fast on a client error
 * ```ts
 * import { NonRetryableError } from "./errors.ts";
 * const status: number = 404;
 * if (status >= 400 && status < 500) {
 *   // a retry would get the same answer
 *   const error = new NonRetryableError(`Accounting API refused the entry: HTTP ${status}`);
 *   console.log(error.name);
 * }
 * ```
 */
export class NonRetryableError extends Error {
  /**
   * Creates the error.
   *
   * @param message what failed and why
   * @param options the underlying cause, if any
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NonRetryableError";
  }
}

/**
 * A user's mistake that kvflow reports as one clear line: bad params, an unknown run id,
 * a pipeline definition that cannot work. The CLI exits 2 with the message and no stack.
 *
 * @example
 * ```ts
 * import { UsageError } from "./errors.ts";
 * const error = new UsageError("Unknown run: 'nope'");
 * console.log(error.message);
 * ```
 */
export class UsageError extends Error {
  /** A short machine-readable code, such as `not_found` or `conflict`. */
  readonly code: string;
  /** For bad input, what is wrong with it field by field (the HTTP API shows them). */
  readonly issues?: readonly { path: readonly PropertyKey[]; message: string }[];
  /**
   * Creates the error.
   *
   * @param message the one-line reason, naming what to fix
   * @param code a short machine-readable code
   * @param issues for bad input, each problem with where it is
   */
  constructor(
    message: string,
    code = "usage",
    issues?: readonly { path: readonly PropertyKey[]; message: string }[],
  ) {
    super(message);
    this.name = "UsageError";
    this.code = code;
    if (issues) this.issues = issues;
  }
}

/** Why the KV database cannot be used. */
export type KvProblem = "full" | "read-only" | "io" | "cannot-open" | "unreachable";

/**
 * The KV database cannot take a write, or cannot be opened: its disk is full, it is
 * read-only, or a remote database cannot be reached. A KV commit is all-or-nothing, so
 * the write that failed wrote nothing; a run it stopped keeps its checkpoints and goes on
 * from them once KV is back (resume it, or let a worker take it over). The CLI prints the
 * message as one line and exits 1; the HTTP API answers 503.
 *
 * @example Tell a full disk from other failures
 * ```ts
 * import { KvUnavailableError, kvUnavailable } from "./errors.ts";
 * const error = kvUnavailable(new TypeError("database or disk is full"));
 * console.log(error instanceof KvUnavailableError, error?.problem); // true "full"
 * ```
 */
export class KvUnavailableError extends Error {
  /** The machine-readable code the HTTP API answers with. */
  readonly code = "kv_unavailable";
  /** What is wrong with the database. */
  readonly problem: KvProblem;
  /**
   * Creates the error.
   *
   * @param message what failed and why, in one line
   * @param problem what is wrong with the database
   * @param options the KV error it stands for
   */
  constructor(message: string, problem: KvProblem, options?: ErrorOptions) {
    super(message, options);
    this.name = "KvUnavailableError";
    this.problem = problem;
  }
}

const KV_PROBLEMS: [KvProblem, RegExp, string][] = [
  ["full", /database or disk is full|no space left on device|os error 28\b/i, "its disk is full"],
  ["read-only", /read-?only (database|file ?system)|os error 30\b/i, "it is read-only"],
  ["io", /disk I\/O error/i, "its disk failed to write"],
  ["cannot-open", /unable to open database file/i, "its file cannot be opened"],
  [
    "unreachable",
    /failed to connect|connection (refused|reset)|error sending request/i,
    "the server cannot be reached",
  ],
];

/**
 * The {@linkcode KvUnavailableError} that an error thrown by a KV operation stands for, or
 * undefined when the error means something else (a bug, a limit).
 *
 * @param error what a KV operation threw
 * @returns the error to report, naming the problem
 */
export function kvUnavailable(error: unknown): KvUnavailableError | undefined {
  if (error instanceof KvUnavailableError) return error;
  const text = error instanceof Error ? error.message : String(error);
  for (const [problem, pattern, why] of KV_PROBLEMS) {
    if (pattern.test(text)) {
      const detail = text.split("\n")[0].slice(0, 300);
      return new KvUnavailableError(
        `Cannot write to the KV database: ${why} (${detail})`,
        problem,
        { cause: error },
      );
    }
  }
  return undefined;
}

const KV_LIMITS =
  /(value|key) too large[^\n]*|too many (mutations|checks)[^\n]*|total (mutation|key) size too large[^\n]*/i;

/**
 * The limit an error thrown by a KV commit names, when KV refused the commit for breaking
 * one of its limits (a value over 64 KiB, a key over 2 KiB, too many mutations, too many
 * bytes in one commit): the same commit is refused the same way every time. Undefined for
 * any other error.
 *
 * @param error what a KV commit threw
 * @returns KV's words for the limit, such as `Value too large (max 65536 bytes)`
 */
export function kvLimit(error: unknown): string | undefined {
  const text = error instanceof Error ? error.message : String(error);
  return text.match(KV_LIMITS)?.[0].slice(0, 300);
}

/** What kvflow stores about an error: enough to show it, never the value itself. */
export interface ErrorInfo {
  /** The error's class name, or the type of a thrown non-Error value. */
  name: string;
  /** The message, or a readable rendering of a thrown non-Error value. */
  message: string;
  /** The stack trace, when the thrown value had one. */
  stack?: string;
  /** False when retrying cannot help (a `NonRetryableError`, a timeout is still retryable). */
  retryable: boolean;
}

const MAX_MESSAGE = 4000;
const MAX_STACK = 8000;

/**
 * Turns any thrown value into an {@linkcode ErrorInfo}.
 *
 * @param thrown whatever was thrown
 * @returns a plain record, safe to store in KV
 */
export function toErrorInfo(thrown: unknown): ErrorInfo {
  if (thrown instanceof Error) {
    return {
      name: clip(String(thrown.name), 200),
      message: clip(thrown.message || "(no message)", MAX_MESSAGE),
      stack: thrown.stack ? clip(thrown.stack, MAX_STACK) : undefined,
      retryable: !(thrown instanceof NonRetryableError),
    };
  }
  return {
    name: thrown === null ? "null" : typeof thrown,
    message: clip(`Non-Error value thrown: ${render(thrown)}`, MAX_MESSAGE),
    retryable: true,
  };
}

function render(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  try {
    const json = JSON.stringify(value);
    if (json !== undefined) return json;
  } catch {
    // a cycle or a BigInt: fall back to String()
  }
  try {
    return String(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length - max} more chars)`;
}
