/**
 * Steps that wait instead of running a body: {@linkcode sleep} (until a time),
 * {@linkcode waitFor} (until one of several events arrives, or a timeout) and
 * {@linkcode invoke} (a run of another pipeline, whose result is the step's output).
 * While a step waits, its run holds no lease, no worker slot and no memory: it is parked
 * with a due entry at the time or timeout, and an event or a child's end makes it due now.
 *
 * @module
 */
import { type Duration, toMs } from "./duration.ts";
import type { RunInfo } from "./context.ts";
import type { Pipeline } from "./pipeline.ts";
import {
  type AnyStep,
  checkName,
  type Inputs,
  type Needs,
  type NoNeeds,
  type Schema,
  type Step,
} from "./step.ts";

/** The longest a sleep, an event wait or a child may take: 365 days. */
export const MAX_WAIT_MS = 365 * 86_400_000;

/** An event as a wait step receives it. `N` is its name, `D` its payload. */
export interface ArrivedEvent<N extends string = string, D = unknown> {
  /** Which of the awaited events arrived. */
  readonly event: N;
  /** Its payload (checked by the event's schema, when the wait gave one). */
  readonly data: D;
  /** Its id. */
  readonly id: string;
  /** When it was sent, ms since the epoch. */
  readonly at: number;
}

/**
 * What a wait step outputs when no event came: it timed out with `onTimeout: { value }`
 * (`data` is that value), or its `when` said the wait was not needed (`data` is null).
 */
export interface NoEvent<T> {
  /** No event. */
  readonly event: null;
  /** The timeout's value, or null. */
  readonly data: T;
  /** No event id. */
  readonly id: null;
  /** When the wait ended, ms since the epoch. */
  readonly at: number;
  /** Why no event: the timeout passed, or the wait was not needed. */
  readonly reason: "timeout" | "not-needed";
}

/** The events a wait takes, by name, each with a payload schema or `null` for any payload. */
export type EventSchemas = Readonly<Record<string, Schema<unknown> | null>>;

/** The event a wait on `E` outputs: one of its names, with that event's payload type. */
export type Arrival<E extends EventSchemas> = {
  [K in keyof E & string]: ArrivedEvent<K, E[K] extends Schema<infer D> ? D : unknown>;
}[keyof E & string];

/** What a wait does when its timeout passes first. */
export type OnTimeout<T> = "fail" | "skip" | { value: T };

/** Options of {@linkcode waitFor}. */
export interface WaitOptions<N extends Needs, E extends EventSchemas, T> {
  /** Steps whose outputs the correlation and `when` may use. */
  needs?: N;
  /** The events that end the wait, each with a payload schema or null; the first wins. */
  events: E;
  /**
   * Which events are this run's: those whose payload field `field` equals the value
   * computed from the inputs and the run (an order id, the logical date). Without it, any
   * event of the names matches.
   */
  match?: {
    field: string;
    equals: (inputs: Inputs<N>, run: RunInfo) => string | number | boolean;
  };
  /** How long to wait at most (up to 365 days). */
  timeout: Duration;
  /**
   * What the timeout does: fail the step (default), skip it and what depends on it (the
   * run can still succeed), or continue with `{ value }`.
   */
  onTimeout?: OnTimeout<T>;
  /**
   * Events sent this long before the wait starts still count. Default: any event since
   * the run was created (as long as events are kept).
   */
  window?: Duration;
  /** When it returns false, the step succeeds at once with no event (reason `not-needed`). */
  when?: (inputs: Inputs<N>, run: RunInfo) => boolean;
}

/** Options of {@linkcode sleep}: wait a duration, or until a time computed from the inputs. */
export type SleepOptions<N extends Needs> =
  | { needs?: N; for: Duration; until?: undefined }
  | {
    needs?: N;
    for?: undefined;
    /** The time to wake: a Date, ms since the epoch, or an ISO date-time. */
    until: (inputs: Inputs<N>, run: RunInfo) => Date | number | string;
  };

/** Options of {@linkcode invoke} for one child run. */
export interface InvokeOptions<N extends Needs, P> {
  /** Steps whose outputs the child's params are computed from. */
  needs?: N;
  /** The params of the child run, from the inputs and the parent run. */
  params: (inputs: Inputs<N>, run: RunInfo) => P;
  /** How long the child may take before the step fails; default 365 days. */
  timeout?: Duration;
  /** Not a fan-out: see {@linkcode InvokeEachOptions}. */
  items?: undefined;
}

/** Options of {@linkcode invoke} for one child run per item. */
export interface InvokeEachOptions<N extends Needs, I, P> {
  /** Steps whose outputs the items and params are computed from. */
  needs?: N;
  /** The items, one child run each. */
  items: (inputs: Inputs<N>) => I[] | Promise<I[]>;
  /** The params of one item's child run. */
  params: (item: I, inputs: Inputs<N>, run: RunInfo) => P;
  /** Items whose child is being started at once. Default 16. */
  concurrency?: number;
  /** How long a child may take before its item fails; default 365 days. */
  timeout?: Duration;
}

/** How a waiting step waits, as the driver reads it (made by `sleep`, `waitFor`, `invoke`). */
export type WaitSpec =
  | {
    readonly kind: "sleep";
    readonly until: (inputs: Record<string, unknown>, run: RunInfo, now: number) => number;
  }
  | {
    readonly kind: "event";
    readonly events: EventSchemas;
    readonly field: string;
    readonly equals?: (inputs: Record<string, unknown>, run: RunInfo) => unknown;
    readonly timeoutMs: number;
    readonly onTimeout: OnTimeout<unknown>;
    readonly windowMs: number | null;
    readonly when?: (inputs: Record<string, unknown>, run: RunInfo) => boolean;
  }
  | {
    readonly kind: "child";
    readonly pipeline: Pipeline<unknown, unknown>;
    readonly params: (
      inputs: Record<string, unknown>,
      run: RunInfo,
      item: unknown,
    ) => unknown;
    readonly timeoutMs: number;
  };

/** Most characters of an event name. */
export const MAX_EVENT_NAME_LENGTH = 100;
const EVENT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$/;

/** Whether `name` is a valid event name (as {@linkcode checkEventName} requires). */
export function isEventName(name: unknown): name is string {
  return typeof name === "string" && EVENT_NAME.test(name);
}

/**
 * Checks an event name: 1 to 100 letters, digits, '-', '_', '.', ':' or '/', starting with
 * a letter or digit.
 *
 * @throws {TypeError} when it is not
 */
export function checkEventName(name: unknown, what = "event name"): string {
  if (isEventName(name)) return name;
  throw new TypeError(
    `Invalid ${what} ${
      JSON.stringify(typeof name === "string" ? name.slice(0, 120) : name)
    }: use 1 to ${MAX_EVENT_NAME_LENGTH} letters, digits, '-', '_', '.', ':' or '/', starting with a letter or digit`,
  );
}

/** A wait's time limit in ms, refused at definition time beyond 365 days. */
export function waitMs(value: Duration, what: string): number {
  const ms = toMs(value, what);
  if (ms > MAX_WAIT_MS) {
    throw new TypeError(
      `Cannot use ${what}: ${JSON.stringify(value)} is longer than 365 days, the longest wait`,
    );
  }
  return ms;
}

function checkNeeds(name: string, needs: Needs): Needs {
  for (const [input, need] of Object.entries(needs)) {
    if (!need || (need as AnyStep).kind !== "step") {
      throw new TypeError(
        `Invalid step '${name}': needs.${input} is not a step (did an import fail or come in a cycle?)`,
      );
    }
  }
  return Object.freeze({ ...needs });
}

function waitStep(
  name: string,
  needs: Needs,
  wait: WaitSpec,
  fanOut?: AnyStep["fanOut"],
): AnyStep {
  return Object.freeze({
    kind: "step" as const,
    name,
    needs: checkNeeds(name, needs),
    wait,
    fanOut,
    run: () => Promise.reject(new Error(`Step '${name}' waits; it has no body to run`)),
  });
}

/** A time from what an `until` function returned. */
function toTime(value: Date | number | string, name: string): number {
  const at = value instanceof Date
    ? value.getTime()
    : typeof value === "string"
    ? Date.parse(value)
    : value;
  if (typeof at !== "number" || !Number.isFinite(at)) {
    throw new TypeError(
      `Step '${name}': until returned ${JSON.stringify(value)}, not a time`,
    );
  }
  return at;
}

/**
 * Defines a step that completes at a time: a duration after the steps it needs end, or a
 * time computed from their outputs and the run. The run holds nothing while it sleeps
 * (it is parked with a due entry) and wakes on time after restarts. Its output is the
 * time it woke, as `{ until }` (ms since the epoch).
 *
 * @example Wait until 06:00 the next morning in Berlin
 * ```ts
 * import { sleep, zonedTime } from "./wait.ts";
 * export const morning = sleep("morning", {
 *   until: (_inputs, run) => zonedTime(run.logicalDate, "06:00", "Europe/Berlin", 1),
 * });
 * ```
 *
 * @param name unique within the pipeline
 * @param options `for` a duration (up to 365 days), or `until` a computed time
 * @returns the step
 * @throws {TypeError} on an invalid name, a duration over 365 days, or neither option
 */
export function sleep<N extends Needs = NoNeeds>(
  name: string,
  options: SleepOptions<N>,
): Step<{ until: number }> {
  checkName("step", name);
  const o = options as { needs?: Needs; for?: Duration; until?: unknown };
  let until: (inputs: Record<string, unknown>, run: RunInfo, now: number) => number;
  if (o?.for !== undefined) {
    const ms = waitMs(o.for, `the sleep of step '${name}'`);
    until = (_inputs, _run, now) => now + ms;
  } else if (typeof o?.until === "function") {
    const fn = o.until as (inputs: Record<string, unknown>, run: RunInfo) => Date | number | string;
    until = (inputs, run) => toTime(fn(inputs, run), name);
  } else {
    throw new TypeError(
      `Invalid step '${name}': a sleep needs \`for\` (a duration) or \`until\` (a function of the inputs)`,
    );
  }
  return waitStep(name, o.needs ?? {}, { kind: "sleep", until }) as Step<{ until: number }>;
}

/**
 * Defines a step that waits for one of several events, matched to the run by a payload
 * field, up to a timeout. Events are stored when sent, so an event sent before the wait
 * starts still counts (since the run was created, or within `window`); the first event
 * to arrive wins; an event whose payload fails its schema is recorded as not matching
 * and the wait goes on.
 *
 * @example Wait for finance's decision on the logical date
 * ```ts
 * import { waitFor } from "./wait.ts";
 * export const approval = waitFor("approval", {
 *   events: { "nightly.approved": null, "nightly.rejected": null },
 *   match: { field: "date", equals: (_inputs, run) => run.logicalDate },
 *   timeout: "2d",
 * });
 * ```
 *
 * @param name unique within the pipeline
 * @param options the events, how they match, the timeout and what it does
 * @returns the step, whose output is the event that arrived (or the timeout's value)
 * @throws {TypeError} on an invalid name, event name, field or a timeout over 365 days
 */
export function waitFor<
  E extends EventSchemas,
  N extends Needs = NoNeeds,
  T = never,
>(
  name: string,
  options: WaitOptions<N, E, T>,
): Step<Arrival<E> | NoEvent<T | null>> {
  checkName("step", name);
  const names = Object.keys(options?.events ?? {});
  if (names.length === 0) {
    throw new TypeError(`Invalid step '${name}': events must name at least one event`);
  }
  for (const event of names) {
    checkEventName(event, `event name in step '${name}'`);
    const schema = options.events[event];
    if (schema !== null && typeof schema?.safeParse !== "function") {
      throw new TypeError(
        `Invalid step '${name}': events["${event}"] must be a schema (with safeParse) or null`,
      );
    }
  }
  const match = options.match;
  if (match !== undefined) {
    if (
      typeof match.field !== "string" || !/^[A-Za-z_$][A-Za-z0-9_$]{0,63}$/.test(match.field)
    ) {
      throw new TypeError(
        `Invalid step '${name}': match.field must name a top-level payload field, got ${
          JSON.stringify(match.field)
        }`,
      );
    }
    if (typeof match.equals !== "function") {
      throw new TypeError(
        `Invalid step '${name}': match.equals must be a function of the inputs and the run`,
      );
    }
  }
  if (options.timeout === undefined) {
    throw new TypeError(`Invalid step '${name}': a wait needs a timeout (up to 365 days)`);
  }
  const timeoutMs = waitMs(options.timeout, `the timeout of step '${name}'`);
  const onTimeout = options.onTimeout ?? "fail";
  if (
    onTimeout !== "fail" && onTimeout !== "skip" &&
    !(typeof onTimeout === "object" && onTimeout !== null && "value" in onTimeout)
  ) {
    throw new TypeError(
      `Invalid step '${name}': onTimeout must be "fail", "skip" or { value }`,
    );
  }
  const windowMs = options.window === undefined
    ? null
    : waitMs(options.window, `the window of step '${name}'`);
  return waitStep(name, options.needs ?? {}, {
    kind: "event",
    events: Object.freeze({ ...options.events }),
    field: match?.field ?? "",
    equals: match?.equals as ((i: Record<string, unknown>, r: RunInfo) => unknown) | undefined,
    timeoutMs,
    onTimeout: onTimeout as OnTimeout<unknown>,
    windowMs,
    when: options.when as ((i: Record<string, unknown>, r: RunInfo) => boolean) | undefined,
  }) as Step<Arrival<E> | NoEvent<T | null>>;
}

/**
 * Defines a step that starts a run of another pipeline (a child) and succeeds with the
 * child's result (see `result` in the pipeline's options). With `items`, one child runs
 * per item and the output is the list of their results. A child's id derives from the
 * parent run, the step and the item, so a crash while starting it never starts two; a
 * failed child fails the step with its id and error, and resuming the parent resumes the
 * child. The child pipeline must be registered with the engine.
 *
 * @example One region report per region
 * ```ts
 * import { pipeline } from "./pipeline.ts";
 * import { step } from "./step.ts";
 * import { invoke } from "./wait.ts";
 * const total = step("total", () => 42);
 * const region = pipeline("region", { steps: [total], result: total });
 * const regions = step("regions", () => ["north", "south"]);
 * export const reports = invoke("reports", {
 *   needs: { regions },
 *   items: ({ regions }) => regions,
 *   pipeline: region,
 *   params: (region) => ({ region }),
 * });
 * ```
 *
 * @param name unique within the pipeline
 * @param child the pipeline to run as a child
 * @param options how to compute the child's params (per item with `items`)
 * @returns the step
 */
export function invoke<P, R, N extends Needs = NoNeeds>(
  name: string,
  options: InvokeOptions<N, P> & { pipeline: Pipeline<P, R> },
): Step<R>;
/**
 * Defines a step that starts one child run per item; its output is the list of results.
 *
 * @param name unique within the pipeline
 * @param options the child pipeline, the items and the params per item
 * @returns the step
 */
export function invoke<P, R, I, N extends Needs = NoNeeds>(
  name: string,
  options: InvokeEachOptions<N, I, P> & { pipeline: Pipeline<P, R> },
): Step<R[]>;
export function invoke(
  name: string,
  options: (InvokeOptions<Needs, unknown> | InvokeEachOptions<Needs, unknown, unknown>) & {
    pipeline: Pipeline<unknown, unknown>;
  },
): AnyStep {
  checkName("step", name);
  const child = options?.pipeline;
  if (!child || child.kind !== "pipeline") {
    throw new TypeError(
      `Invalid step '${name}': pipeline must be a pipeline (did an import fail or come in a cycle?)`,
    );
  }
  if (typeof options.params !== "function") {
    throw new TypeError(`Invalid step '${name}': params must be a function`);
  }
  const timeoutMs = options.timeout === undefined
    ? MAX_WAIT_MS
    : waitMs(options.timeout, `the timeout of step '${name}'`);
  let fanOut: AnyStep["fanOut"];
  let params: (inputs: Record<string, unknown>, run: RunInfo, item: unknown) => unknown;
  if (options.items !== undefined) {
    if (typeof options.items !== "function") {
      throw new TypeError(`Invalid step '${name}': items must be a function of the inputs`);
    }
    const concurrency = (options as InvokeEachOptions<Needs, unknown, unknown>).concurrency ?? 16;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new RangeError(
        `Invalid step '${name}': concurrency must be a positive integer, got ${concurrency}`,
      );
    }
    fanOut = { items: options.items as NonNullable<AnyStep["fanOut"]>["items"], concurrency };
    const fn = options.params as (item: unknown, inputs: unknown, run: RunInfo) => unknown;
    params = (inputs, run, item) => fn(item, inputs, run);
  } else {
    const fn = options.params as (inputs: unknown, run: RunInfo) => unknown;
    params = (inputs, run) => fn(inputs, run);
  }
  return waitStep(name, options.needs ?? {}, {
    kind: "child",
    pipeline: child,
    params,
    timeoutMs,
  }, fanOut);
}

/**
 * The time of a wall-clock moment in an IANA time zone: `time` ("HH:MM") on `date`
 * ("YYYY-MM-DD") plus `days`, as that zone sees it (DST included).
 *
 * @example 06:00 the morning after the logical date, in Berlin
 * ```ts
 * import { zonedTime } from "./wait.ts";
 * const at = zonedTime("2026-11-01", "06:00", "Europe/Berlin", 1);
 * ```
 *
 * @returns ms since the epoch
 * @throws {TypeError} on a malformed date, time or zone
 */
export function zonedTime(date: string, time: string, timeZone: string, days = 0): number {
  const d = /^(\d{4})-(\d{2})-(\d{2})$/.exec(date);
  const t = /^(\d{2}):(\d{2})$/.exec(time);
  if (!d || !t) {
    throw new TypeError(`zonedTime: use a date YYYY-MM-DD and a time HH:MM, got ${date} ${time}`);
  }
  const wall = Date.UTC(+d[1], +d[2] - 1, +d[3] + days, +t[1], +t[2]);
  let format: Intl.DateTimeFormat;
  try {
    format = new Intl.DateTimeFormat("en-US", {
      timeZone,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    });
  } catch {
    throw new TypeError(`zonedTime: unknown time zone ${JSON.stringify(timeZone)}`);
  }
  const offsetAt = (at: number) => {
    const p = Object.fromEntries(format.formatToParts(at).map((x) => [x.type, x.value]));
    return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) - at;
  };
  // the zone's offset at the wall time, then again at the result (across a DST change)
  let at = wall - offsetAt(wall);
  at = wall - offsetAt(at);
  return at;
}
