/**
 * Retention: how long a pipeline's ended runs are kept, by how they ended. Past it, a
 * run and everything it owns are pruned (`store/prune.ts`).
 *
 * @module
 */
import { type Duration, toMs } from "./duration.ts";

/** How long ended runs are kept, by status, counted from when they ended. */
export interface RetentionOptions {
  /** Runs that succeeded. Default `"30d"`. */
  succeeded?: Duration;
  /** Runs that failed: kept longer, someone may still look into them. Default `"90d"`. */
  failed?: Duration;
  /** Runs that were cancelled. Default `"30d"`. */
  cancelled?: Duration;
}

/** A checked retention: milliseconds per ended status. */
export interface Retention {
  /** Runs that succeeded, ms. */
  readonly succeeded: number;
  /** Runs that failed, ms. */
  readonly failed: number;
  /** Runs that cancelled, ms. */
  readonly cancelled: number;
}

/**
 * The retention of a pipeline that sets none: a nightly job keeps a month of history, and
 * three months of failures.
 */
export const DEFAULT_RETENTION: Retention = Object.freeze({
  succeeded: 30 * 86_400_000,
  failed: 90 * 86_400_000,
  cancelled: 30 * 86_400_000,
});

/**
 * Checks a pipeline's retention option.
 *
 * @param pipelineName names the pipeline in the error
 * @param options what the pipeline set
 * @returns the retention, with defaults for what it did not set
 * @throws {TypeError} naming the pipeline and the field when a duration is invalid
 */
export function resolveRetention(pipelineName: string, options?: RetentionOptions): Retention {
  if (options === undefined) return DEFAULT_RETENTION;
  if (options === null || typeof options !== "object") {
    throw new TypeError(
      `Invalid pipeline '${pipelineName}': retention must be an object such as { failed: "90d" }`,
    );
  }
  const fields = ["succeeded", "failed", "cancelled"] as const;
  for (const key of Object.keys(options)) {
    if (!(fields as readonly string[]).includes(key)) {
      throw new TypeError(
        `Invalid pipeline '${pipelineName}': retention.${key} is not a field (use ${
          fields.join(", ")
        })`,
      );
    }
  }
  const resolved = { ...DEFAULT_RETENTION };
  for (const field of fields) {
    const value = options[field];
    if (value === undefined) continue;
    let ms: number;
    try {
      ms = toMs(value, `retention.${field}`);
    } catch {
      throw new TypeError(
        `Invalid pipeline '${pipelineName}': retention.${field} ${
          JSON.stringify(value)
        } is not a duration (use a string like "30d" or "12h")`,
      );
    }
    resolved[field] = ms;
  }
  return Object.freeze(resolved);
}

/**
 * Formats a retention for people: `"30d"`, `"36h"`, `"90m"`.
 *
 * @param ms milliseconds
 * @returns the largest whole unit that expresses it
 */
export function formatRetention(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]]) {
    if (ms >= (size as number) && ms % (size as number) === 0) {
      return `${ms / (size as number)}${unit}`;
    }
  }
  return `${ms}ms`;
}

/**
 * A retention as the API and `pipelines --json` show it: a duration string per status.
 *
 * @param retention the retention
 * @returns `{ succeeded: "30d", failed: "90d", cancelled: "30d" }` for the default
 */
export function retentionJson(
  retention: Retention,
): { succeeded: string; failed: string; cancelled: string } {
  return {
    succeeded: formatRetention(retention.succeeded),
    failed: formatRetention(retention.failed),
    cancelled: formatRetention(retention.cancelled),
  };
}
