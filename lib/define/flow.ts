/**
 * Flow control, as a pipeline or a step declares it: a concurrency limit per key, a
 * throttle per key, a debounce of triggers (runs only) and a priority (runs only). The
 * engine enforces them across every worker on the KV (`store/flow.ts`); this module
 * checks them when the pipeline's module loads.
 *
 * @module
 */
import { type Duration, toMs } from "./duration.ts";

/** At most `max` runs (or step attempts) at once per key, across every worker. */
export interface LimitOptions<I> {
  /**
   * The key the limit counts per, from the run's params (a run limit) or the step's
   * inputs (a step limit): one customer, one mail server. Default: one key for all.
   */
  key?: (input: I) => string;
  /** How many at once per key: 1 to 1000. */
  max: number;
  /**
   * Limits with the same scope share their slots, across steps and pipelines (every
   * step that calls the accounting API, say). Default: the pipeline's name for a run
   * limit, `<pipeline>/<step>` for a step limit.
   */
  scope?: string;
}

/** At most `max` starts of runs (or step attempts) per period per key; the rest wait. */
export interface ThrottleOptions<I> {
  /** The key the throttle counts per. Default: one key for all. */
  key?: (input: I) => string;
  /** How many starts per period per key: 1 to 1000. */
  max: number;
  /** The period, such as `"1s"` or `"1m"`: 1 ms to 1 day. */
  per: Duration;
  /** Throttles with the same scope share their budget. Default: as for a limit. */
  scope?: string;
}

/**
 * Debounces the runs that HTTP and events start: a burst of triggers with the same key
 * gives one run, with the last trigger's params, once `quiet` has passed without another
 * (and no later than `maxWait` after the first).
 */
export interface DebounceOptions<P> {
  /** The key bursts are grouped by, from the params. Default: one key for all. */
  key?: (params: P) => string;
  /** How long without another trigger before the run starts: 1 ms to 1 day. */
  quiet: Duration;
  /** The longest a burst can hold its run back, from its first trigger. Default 10 × `quiet`. */
  maxWait?: Duration;
}

/** A checked limit. */
export interface Limit {
  /** Whose slots it counts in. */
  readonly scope: string;
  /** The key function (`() => "*"` when none was given). */
  readonly key: (input: unknown) => string;
  /** At once per key. */
  readonly max: number;
}

/** A checked throttle. */
export interface Throttle {
  /** Whose budget it counts in. */
  readonly scope: string;
  /** The key function. */
  readonly key: (input: unknown) => string;
  /** Starts per period per key. */
  readonly max: number;
  /** The period, ms. */
  readonly perMs: number;
}

/** A checked debounce. */
export interface Debounce {
  /** The key function. */
  readonly key: (params: unknown) => string;
  /** Quiet period, ms. */
  readonly quietMs: number;
  /** Longest hold from the first trigger, ms. */
  readonly maxWaitMs: number;
}

/** The key of a limit or throttle that gave none: everything counts together. */
export const ALL_KEY = "*";

/** Most characters of a flow key or scope (they are parts of KV keys). */
export const MAX_FLOW_KEY_LENGTH = 200;

/** Most slots of a limit, or starts per period of a throttle. */
export const MAX_FLOW_MAX = 1000;

/** Priorities run from 0 (the default) to this. */
export const MAX_PRIORITY = 10;

/**
 * What one level of priority is worth in waiting time: a run of priority `p` is claimed
 * before a run of priority `q < p` that became due less than `(p - q)` minutes earlier.
 * Age lifts a run's rank by as much as a priority level per minute, so nothing starves.
 */
export const PRIORITY_STEP_MS = 60_000;

/** The longest throttle period or debounce wait. */
const MAX_FLOW_PERIOD_MS = 86_400_000;

const allKey = () => ALL_KEY;

/**
 * Checks a limit option.
 *
 * @param where names the pipeline (and step) and the field in an error, such as
 * `pipeline 'nightly': limit`
 * @param defaultScope the scope when none is given
 * @throws {TypeError} naming `where` and the field
 */
export function resolveLimit(
  where: string,
  options: LimitOptions<never> | undefined,
  defaultScope: string,
): Limit | null {
  if (options === undefined) return null;
  const o = checkObject(
    where,
    options,
    ["key", "max", "scope"],
    "{ key: (p) => p.customer, max: 2 }",
  );
  return Object.freeze({
    scope: checkScope(where, o.scope, defaultScope),
    key: checkKeyFn(where, o.key),
    max: checkMax(where, o.max),
  });
}

/**
 * Checks a throttle option.
 *
 * @throws {TypeError} naming `where` and the field
 */
export function resolveThrottle(
  where: string,
  options: ThrottleOptions<never> | undefined,
  defaultScope: string,
): Throttle | null {
  if (options === undefined) return null;
  const o = checkObject(
    where,
    options,
    ["key", "max", "per", "scope"],
    '{ max: 10, per: "1s" }',
  );
  return Object.freeze({
    scope: checkScope(where, o.scope, defaultScope),
    key: checkKeyFn(where, o.key),
    max: checkMax(where, o.max),
    perMs: checkPeriod(where, "per", o.per),
  });
}

/**
 * Checks a debounce option.
 *
 * @throws {TypeError} naming `where` and the field
 */
export function resolveDebounce(
  where: string,
  options: DebounceOptions<never> | undefined,
): Debounce | null {
  if (options === undefined) return null;
  const o = checkObject(where, options, ["key", "quiet", "maxWait"], '{ quiet: "30s" }');
  const quietMs = checkPeriod(where, "quiet", o.quiet);
  const maxWaitMs = o.maxWait === undefined
    ? Math.min(10 * quietMs, MAX_FLOW_PERIOD_MS)
    : checkPeriod(where, "maxWait", o.maxWait);
  if (maxWaitMs < quietMs) {
    throw new TypeError(`Invalid ${where}.maxWait: it must be at least quiet`);
  }
  return Object.freeze({ key: checkKeyFn(where, o.key), quietMs, maxWaitMs });
}

/**
 * Checks a priority: an integer from 0 to {@linkcode MAX_PRIORITY}.
 *
 * @throws {TypeError} naming `where`
 */
export function checkPriority(where: string, value: unknown): number {
  if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > MAX_PRIORITY) {
    throw new TypeError(
      `Invalid ${where}: priority must be an integer from 0 to ${MAX_PRIORITY}, got ${
        JSON.stringify(value)
      }`,
    );
  }
  return value as number;
}

/**
 * A flow key as computed by a key function: a non-empty string of at most
 * {@linkcode MAX_FLOW_KEY_LENGTH} characters.
 *
 * @param what names the limit in the error, such as `limit key of pipeline 'refunds'`
 * @throws {TypeError} when the function threw or returned something else
 */
export function flowKey(what: string, fn: (input: unknown) => string, input: unknown): string {
  let key: unknown;
  try {
    key = fn(input);
  } catch (error) {
    throw new TypeError(
      `The ${what} could not be computed: ${error instanceof Error ? error.message : error}`,
    );
  }
  if (typeof key === "number" && Number.isFinite(key)) key = String(key);
  if (typeof key !== "string" || key.length === 0 || key.length > MAX_FLOW_KEY_LENGTH) {
    const shown = typeof key === "string" && key.length > 60
      ? `a string of ${key.length} characters`
      : JSON.stringify(key) ?? String(key);
    throw new TypeError(
      `The ${what} must be a string of 1 to ${MAX_FLOW_KEY_LENGTH} characters, got ${shown}`,
    );
  }
  return key;
}

function checkObject(
  where: string,
  options: unknown,
  fields: readonly string[],
  example: string,
  // deno-lint-ignore no-explicit-any
): Record<string, any> {
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(`Invalid ${where}: must be an object such as ${example}`);
  }
  for (const field of Object.keys(options)) {
    if (!fields.includes(field)) {
      throw new TypeError(
        `Invalid ${where}.${field}: not a field (use ${fields.join(", ")})`,
      );
    }
  }
  return options as Record<string, unknown>;
}

function checkKeyFn(where: string, key: unknown): (input: unknown) => string {
  if (key === undefined) return allKey;
  if (typeof key !== "function") {
    throw new TypeError(`Invalid ${where}.key: must be a function returning a string`);
  }
  return key as (input: unknown) => string;
}

function checkMax(where: string, max: unknown): number {
  if (!Number.isInteger(max) || (max as number) < 1 || (max as number) > MAX_FLOW_MAX) {
    throw new TypeError(
      `Invalid ${where}.max: must be an integer from 1 to ${MAX_FLOW_MAX}, got ${
        JSON.stringify(max)
      }`,
    );
  }
  return max as number;
}

function checkScope(where: string, scope: unknown, fallback: string): string {
  if (scope === undefined) return fallback;
  if (typeof scope !== "string" || !/^[A-Za-z0-9][A-Za-z0-9_./:-]{0,99}$/.test(scope)) {
    throw new TypeError(
      `Invalid ${where}.scope ${
        JSON.stringify(scope)
      }: use 1 to 100 letters, digits, '-', '_', '.', '/' or ':'`,
    );
  }
  return scope;
}

function checkPeriod(where: string, field: string, value: unknown): number {
  let ms: number;
  try {
    ms = toMs(value as Duration, `${where}.${field}`);
  } catch {
    throw new TypeError(
      `Invalid ${where}.${field} ${
        JSON.stringify(value)
      }: not a duration (use a string like "1s" or "5m")`,
    );
  }
  if (!(ms >= 1 && ms <= MAX_FLOW_PERIOD_MS)) {
    throw new TypeError(`Invalid ${where}.${field}: must be from 1 ms to 1 day, got ${ms} ms`);
  }
  return ms;
}

/**
 * Whether a limit or throttle counts per key: false when it was given no key function,
 * so every run (or attempt) counts under {@linkcode ALL_KEY}.
 *
 * @param fn the resolved key function of a {@linkcode Limit} or {@linkcode Throttle}
 */
export function isKeyed(fn: (input: unknown) => string): boolean {
  return fn !== allKey;
}
