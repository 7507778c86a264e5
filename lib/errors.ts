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
  /**
   * Creates the error.
   *
   * @param message the one-line reason, naming what to fix
   * @param code a short machine-readable code
   */
  constructor(message: string, code = "usage") {
    super(message);
    this.name = "UsageError";
    this.code = code;
  }
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
      name: thrown.name,
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
