/**
 * Retry policies: how a failed attempt is retried, resolved against the pipeline's
 * defaults, and the delay before each retry.
 *
 * @module
 */
import { type Duration, toMs } from "./duration.ts";

/** How a failed step is retried. Every field is optional; defaults come from the pipeline. */
export interface RetryPolicy {
  /** Attempts in all, the first included. `1` means no retry. Default 3. */
  attempts?: number;
  /** Delay before the first retry. Default `"1s"`. */
  delay?: Duration;
  /** `"exponential"` doubles the delay each retry; `"fixed"` keeps it. Default exponential. */
  backoff?: "exponential" | "fixed";
  /** Upper bound of one delay. Default `"5m"`. */
  maxDelay?: Duration;
  /** Fraction of each delay taken off at random, 0 to 1, so retries spread. Default 0.2. */
  jitter?: number;
}

/** A retry policy with every field resolved to a number. */
export interface ResolvedRetry {
  /** Attempts in all. */
  attempts: number;
  /** First delay, ms. */
  delayMs: number;
  /** Backoff kind. */
  backoff: "exponential" | "fixed";
  /** Cap of one delay, ms. */
  maxDelayMs: number;
  /** Jitter fraction. */
  jitter: number;
}

export const DEFAULT_RETRY: ResolvedRetry = {
  attempts: 3,
  delayMs: 1000,
  backoff: "exponential",
  maxDelayMs: 300_000,
  jitter: 0.2,
};

/**
 * Merges a retry policy over a resolved base and checks every field.
 *
 * @param policy the policy given, possibly partial
 * @param base the defaults to fill in from
 * @param where names the owner in error messages
 * @returns the resolved policy
 * @throws {RangeError} on a field out of range
 */
export function resolveRetry(
  policy: RetryPolicy | undefined,
  base: ResolvedRetry = DEFAULT_RETRY,
  where = "retry policy",
): ResolvedRetry {
  const attempts = policy?.attempts ?? base.attempts;
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 1000) {
    throw new RangeError(
      `Invalid retry of ${where}: attempts must be an integer from 1 to 1000, got ${attempts}`,
    );
  }
  const backoff = policy?.backoff ?? base.backoff;
  if (backoff !== "exponential" && backoff !== "fixed") {
    throw new RangeError(
      `Invalid retry of ${where}: backoff must be "exponential" or "fixed", got ${
        JSON.stringify(backoff)
      }`,
    );
  }
  const jitter = policy?.jitter ?? base.jitter;
  if (typeof jitter !== "number" || !(jitter >= 0 && jitter <= 1)) {
    throw new RangeError(`Invalid retry of ${where}: jitter must be from 0 to 1, got ${jitter}`);
  }
  return {
    attempts,
    backoff,
    jitter,
    delayMs: policy?.delay === undefined
      ? base.delayMs
      : toMs(policy.delay, `retry delay of ${where}`),
    maxDelayMs: policy?.maxDelay === undefined
      ? base.maxDelayMs
      : toMs(policy.maxDelay, `retry maxDelay of ${where}`),
  };
}

/**
 * The delay before the retry that follows failed attempt `attempt` (1-based).
 *
 * @param retry the resolved policy
 * @param attempt the attempt that just failed
 * @param random a number in [0, 1) for the jitter
 * @returns milliseconds to wait
 */
export function retryDelay(retry: ResolvedRetry, attempt: number, random = Math.random()): number {
  const factor = retry.backoff === "exponential" ? 2 ** Math.min(attempt - 1, 40) : 1;
  const capped = Math.min(retry.maxDelayMs, retry.delayMs * factor);
  return Math.round(capped * (1 - retry.jitter * random));
}
