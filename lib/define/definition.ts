/**
 * Defining pipelines: {@linkcode step} and {@linkcode pipeline}. A definition is checked
 * when its module loads, so a cycle or a typo fails at import, not at 3 AM.
 *
 * @module
 */
import { Cron } from "croner";
import { type Duration, toMs } from "./duration.ts";

/**
 * A schema that validates and types a value: a zod schema fits, as does anything with a
 * compatible `safeParse`.
 */
export interface Schema<T> {
  /** Checks a value; on success returns it (possibly transformed) as `data`. */
  safeParse(value: unknown):
    | { success: true; data: T }
    | {
      success: false;
      error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] };
    };
}

/** How a run was started. */
export type Trigger = "cli" | "http" | "schedule" | "backfill";

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

/** What a step knows about the run it belongs to. */
export interface RunInfo {
  /** The run id. */
  readonly id: string;
  /** The pipeline's name. */
  readonly pipeline: string;
  /** The validated params. */
  readonly params: Readonly<Record<string, unknown>>;
  /**
   * The logical date (`YYYY-MM-DD`) the run is about: the schedule tick for scheduled runs,
   * the `--date` given, or the day the run was created. "Yesterday" means the day before this.
   */
  readonly logicalDate: string;
  /** For a scheduled or backfilled run, its schedule tick as an ISO date-time; else null. */
  readonly tick: string | null;
  /** How the run was started. */
  readonly trigger: Trigger;
}

/** Structured logging; lines are stored with the attempt that wrote them. */
export interface Logger {
  /** Logs a debug line. */
  debug(message: string, fields?: Record<string, unknown>): void;
  /** Logs an info line. */
  info(message: string, fields?: Record<string, unknown>): void;
  /** Logs a warning. */
  warn(message: string, fields?: Record<string, unknown>): void;
  /** Logs an error line. */
  error(message: string, fields?: Record<string, unknown>): void;
}

/** A stored artifact, passed between steps and shown by reference. */
export interface ArtifactRef {
  /** Marks the value as an artifact reference. */
  readonly artifact: true;
  /** The run that stored it. */
  readonly runId: string;
  /** Its name, unique within the run. */
  readonly name: string;
  /** Its MIME type. */
  readonly contentType: string;
  /** Its size in bytes. */
  readonly size: number;
}

/** Options of {@linkcode StepContext.artifact}. */
export interface ArtifactOptions {
  /** MIME type; default `application/octet-stream` (`text/plain` for strings). */
  contentType?: string;
}

/** The second argument of every step function. */
export interface StepContext {
  /** The run this attempt belongs to. */
  readonly run: RunInfo;
  /** The step's name. */
  readonly step: string;
  /** This attempt's number, from 1. A retry or a crash recovery increments it. */
  readonly attempt: number;
  /**
   * Stable across attempts, resumes and crash recoveries of this step (or item); changes
   * only on an explicit rerun. Pass it to email and accounting APIs.
   */
  readonly idempotencyKey: string;
  /** Aborted when the step times out or the run is cancelled or interrupted. */
  readonly signal: AbortSignal;
  /** Structured logger whose lines are stored with this attempt. */
  readonly log: Logger;
  /**
   * Stores bytes as an artifact of the run and returns a reference to return or pass on.
   * Storing the same name again replaces it.
   */
  artifact(
    name: string,
    data: Uint8Array | string,
    options?: ArtifactOptions,
  ): Promise<ArtifactRef>;
  /** Reads an artifact of this run back, by reference or by name. */
  readArtifact(ref: ArtifactRef | string): Promise<Uint8Array>;
}

/** The context of one item of a fan-out step. */
export interface ItemContext<In> extends StepContext {
  /** The item's position in the list and the list's length. */
  readonly item: { readonly index: number; readonly total: number };
  /** The outputs of the steps this step needs. */
  readonly inputs: In;
}

/** A step, as {@linkcode step} returns it. `O` is its output type. */
export interface Step<O> {
  /** Marks the value as a step. */
  readonly kind: "step";
  /** Its name, unique in its pipeline. */
  readonly name: string;
  /** The steps it needs, by the input name its function receives them under. */
  readonly needs: Readonly<Record<string, AnyStep>>;
  /** Zod schema its output is checked against at the checkpoint. */
  readonly output?: Schema<O>;
  /** Its own retry policy, merged over the pipeline's defaults. */
  readonly retry?: RetryPolicy;
  /** Its own timeout per attempt. */
  readonly timeout?: Duration;
  /** Present when the step maps over a list of items. */
  readonly fanOut?: FanOut;
  /** The function, as the engine calls it. */
  readonly run: (input: unknown, ctx: StepContext) => Promise<unknown>;
  /** Carries the output type; never set. */
  readonly __output?: O;
}

/** How a fan-out step gets and runs its items. */
export interface FanOut {
  /** Computes the items from the step's inputs; must depend on nothing else. */
  readonly items: (inputs: Record<string, unknown>) => unknown[] | Promise<unknown[]>;
  /** Items running at once within one run. */
  readonly concurrency: number;
}

/** Any step, whatever its output. */
// deno-lint-ignore no-explicit-any
export type AnyStep = Step<any>;

/** The steps a step needs, keyed by the name its function receives each output under. */
export type Needs = Record<string, AnyStep>;

/** The output type of a step. */
export type OutputOf<S> = S extends Step<infer O> ? O : never;

/** The input object of a step that needs `N`. */
export type Inputs<N extends Needs> = { [K in keyof N]: OutputOf<N[K]> };

/** Options shared by every step. */
export interface StepOptions<N extends Needs, O> {
  /** Steps whose outputs this step receives. */
  needs?: N;
  /** Zod schema the output must satisfy; checked before the checkpoint. */
  output?: Schema<O>;
  /** Retry policy; fields not given come from the pipeline's defaults. */
  retry?: RetryPolicy;
  /** Time limit of one attempt; on expiry `ctx.signal` aborts and the attempt fails. */
  timeout?: Duration;
}

/**
 * Most items a fan-out step may have. The worker holding a run keeps every item's record
 * and output in memory and hands the steps that need the fan-out all outputs as one list;
 * a resume or rerun reads and rewrites every item record. A run whose `items` returns more
 * fails that step at once, before any item is stored.
 */
export const MAX_ITEMS = 100_000;

/** Options of a fan-out step: it runs its function once per item, each checkpointed. */
export interface FanOutOptions<N extends Needs, I, O> extends StepOptions<N, O> {
  /** Computes the list of items from the inputs: at most {@linkcode MAX_ITEMS}. */
  items: (inputs: Inputs<N>) => I[] | Promise<I[]>;
  /** Items running at once. Default 4. */
  concurrency?: number;
}

/** The inputs of a step that needs nothing. */
export type NoNeeds = Record<never, never>;

/**
 * Most characters of a step or pipeline name. Names are ASCII, a byte each in a KV key:
 * with a run id of the longest kind, the longest key kvflow builds from them (an item's
 * attempt) stays far below KV's 2 KiB, as `tests/limits_test.ts` checks.
 */
export const MAX_NAME_LENGTH = 100;

const NAME = new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,${MAX_NAME_LENGTH - 1}}$`);

function checkName(kind: string, name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name)) {
    const long = typeof name === "string" && name.length > MAX_NAME_LENGTH;
    const shown = long && name.length > 200
      ? `${JSON.stringify(name.slice(0, 200))}…`
      : JSON.stringify(name);
    throw new TypeError(
      `Invalid ${kind} name ${shown}${
        long ? ` (${name.length} characters, at most ${MAX_NAME_LENGTH})` : ""
      }: use 1 to ${MAX_NAME_LENGTH} letters, digits, '-', '_' or '.', starting with a letter or digit`,
    );
  }
  return name;
}

/**
 * Defines a step.
 *
 * @example A step with no inputs
 * ```ts
 * import { step } from "./definition.ts";
 * export const hello = step("hello", () => "world");
 * ```
 *
 * @example A step that needs another, with a retry policy
 * ```ts
 * import { step } from "./definition.ts";
 * const load = step("load", () => [1, 2, 3]);
 * export const total = step("total", {
 *   needs: { numbers: load },
 *   retry: { attempts: 5, delay: "2s" },
 * }, ({ numbers }) => numbers.reduce((a, b) => a + b, 0));
 * ```
 *
 * @example A fan-out step: one checkpoint per item
 * ```ts
 * import { step } from "./definition.ts";
 * const managers = step("managers", () => ["ada", "bo"]);
 * export const greet = step("greet", {
 *   needs: { managers },
 *   items: ({ managers }) => managers,
 *   concurrency: 2,
 * }, (manager, ctx) => `hello ${manager} (${ctx.item.index + 1}/${ctx.item.total})`);
 * ```
 *
 * @param name unique within the pipeline
 * @param options needs, output schema, retry, timeout, and for fan-out the items
 * @param fn the step's body
 * @returns the step, to export and list in a pipeline
 * @throws {TypeError} on an invalid name or option
 */
export function step<O>(
  name: string,
  fn: (inputs: NoNeeds, ctx: StepContext) => O | Promise<O>,
): Step<Awaited<O>>;
/**
 * Defines a fan-out step: its function runs once per item of the list `items` returns,
 * each item checkpointed on its own.
 *
 * @param name unique within the pipeline
 * @param options needs, items, concurrency, output schema, retry, timeout
 * @param fn the body, called with one item and its context
 * @returns the step, whose output is the list of item outputs
 */
export function step<N extends Needs, I, O>(
  name: string,
  options: FanOutOptions<N, I, O>,
  fn: (item: I, ctx: ItemContext<Inputs<N>>) => O | Promise<O>,
): Step<Awaited<O>[]>;
/**
 * Defines a step with options: the steps it needs, an output schema, retry and timeout.
 *
 * @param name unique within the pipeline
 * @param options needs, output schema, retry, timeout
 * @param fn the body, called with the outputs of the steps it needs
 * @returns the step
 */
export function step<O, N extends Needs = NoNeeds>(
  name: string,
  options: StepOptions<N, O> & { items?: undefined },
  fn: (inputs: Inputs<N>, ctx: StepContext) => O | Promise<O>,
): Step<Awaited<O>>;
export function step(
  name: string,
  optionsOrFn: unknown,
  maybeFn?: unknown,
): AnyStep {
  checkName("step", name);
  const fn = (typeof optionsOrFn === "function" ? optionsOrFn : maybeFn) as (
    input: unknown,
    ctx: StepContext,
  ) => unknown;
  const options = (typeof optionsOrFn === "function" ? {} : optionsOrFn ?? {}) as FanOutOptions<
    Needs,
    unknown,
    unknown
  >;
  if (typeof fn !== "function") {
    throw new TypeError(`Invalid step '${name}': its last argument must be the step function`);
  }
  const needs = options.needs ?? {};
  for (const [input, need] of Object.entries(needs)) {
    if (!need || (need as AnyStep).kind !== "step") {
      throw new TypeError(
        `Invalid step '${name}': needs.${input} is not a step (did an import fail or come in a cycle?)`,
      );
    }
  }
  if (options.retry) resolveRetry(options.retry, undefined, `step '${name}'`);
  if (options.timeout !== undefined) toTimeoutMs(options.timeout, `timeout of step '${name}'`);
  let fanOut: FanOut | undefined;
  if (options.items !== undefined) {
    if (typeof options.items !== "function") {
      throw new TypeError(`Invalid step '${name}': items must be a function of the inputs`);
    }
    const concurrency = options.concurrency ?? 4;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new RangeError(
        `Invalid step '${name}': concurrency must be a positive integer, got ${concurrency}`,
      );
    }
    fanOut = {
      items: options.items as FanOut["items"],
      concurrency,
    };
  }
  return Object.freeze({
    kind: "step" as const,
    name,
    needs: Object.freeze({ ...needs }),
    output: options.output,
    retry: options.retry,
    timeout: options.timeout,
    fanOut,
    // as `async (input, ctx) => await fn(input, ctx)` (a throw becomes a rejection), without
    // an async function's promise and ticks per call
    run: (input: unknown, ctx: StepContext): Promise<unknown> => {
      try {
        return Promise.resolve(fn(input, ctx));
      } catch (error) {
        return Promise.reject(error);
      }
    },
  });
}

/** Pipeline-wide defaults for its steps. */
export interface PipelineDefaults {
  /** Default retry policy. */
  retry?: RetryPolicy;
  /** Default timeout per attempt. Default `"30m"`. */
  timeout?: Duration;
}

/** When a pipeline runs on its own. */
export interface ScheduleOptions {
  /** Cron expression: five fields, or six with seconds first (`"0 3 * * *"`). */
  cron: string;
  /** IANA time zone the expression is read in, DST included. Default `"UTC"`. */
  timezone?: string;
  /**
   * Ticks missed while nothing ran: `"none"` skips them, `"latest"` runs the most recent
   * one, `"all"` runs each (at most `catchupLimit`, the most recent). Default `"latest"`.
   */
  catchup?: "none" | "latest" | "all";
  /** Most missed ticks `catchup: "all"` runs. Default 10. */
  catchupLimit?: number;
  /**
   * A tick while `maxActive` runs of the pipeline are still active: `"skip"` drops it,
   * `"queue"` starts it once one ends, `"allow"` starts it anyway. Default `"skip"`.
   */
  overlap?: "skip" | "queue" | "allow";
  /** Active runs allowed before `overlap` applies. Default 1. */
  maxActive?: number;
}

/** A schedule with every field resolved. */
export interface Schedule {
  /** Cron expression. */
  readonly cron: string;
  /** IANA time zone. */
  readonly timezone: string;
  /** Catch-up policy. */
  readonly catchup: "none" | "latest" | "all";
  /** Most missed ticks run by `all`. */
  readonly catchupLimit: number;
  /** Overlap policy. */
  readonly overlap: "skip" | "queue" | "allow";
  /** Active runs allowed. */
  readonly maxActive: number;
}

/** Options of {@linkcode pipeline}. */
export interface PipelineOptions<P> {
  /** Runs it on a cron schedule; the engine keeps the schedule's state in KV. */
  schedule?: ScheduleOptions;
  /** What the pipeline does, for people. */
  description?: string;
  /** Zod schema of the params; validated when a run is created. Default: no params. */
  params?: Schema<P>;
  /** Every step of the pipeline. Order does not matter; `needs` decides it. */
  steps: readonly AnyStep[];
  /** Defaults for the steps' retry policy and timeout. */
  defaults?: PipelineDefaults;
  /** Steps (or fan-out items) of one run running at once. Default 8. */
  concurrency?: number;
}

/** A checked pipeline definition. */
export interface Pipeline<P = unknown> {
  /** Marks the value as a pipeline. */
  readonly kind: "pipeline";
  /** Its name. */
  readonly name: string;
  /** What it does. */
  readonly description?: string;
  /** The params schema, if any. */
  readonly params?: Schema<P>;
  /** Steps in an order where every step comes after the steps it needs. */
  readonly steps: readonly AnyStep[];
  /** Steps by name. */
  readonly byName: ReadonlyMap<string, AnyStep>;
  /** The step graph: each step's name with the names of the steps it needs. */
  readonly graph: Readonly<Record<string, readonly string[]>>;
  /** A hash of the step graph; runs record it, resume compares it. */
  readonly version: string;
  /** Steps running at once per run. */
  readonly concurrency: number;
  /** The schedule, if the pipeline has one. */
  readonly schedule: Schedule | null;
  /** Resolved defaults. */
  readonly defaults: { readonly retry: ResolvedRetry; readonly timeoutMs: number };
}

const DEFAULT_RETRY: ResolvedRetry = {
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

/**
 * Defines a pipeline and checks its step graph.
 *
 * @example
 * ```ts
 * import { z } from "zod";
 * import { pipeline, step } from "./definition.ts";
 * const a = step("a", () => 1);
 * const b = step("b", { needs: { a } }, ({ a }) => a + 1);
 * export default pipeline("demo", {
 *   params: z.object({ region: z.string().optional() }),
 *   steps: [a, b],
 * });
 * ```
 *
 * @param name the pipeline's name
 * @param options params schema, steps, defaults, concurrency
 * @returns the checked pipeline
 * @throws {TypeError} on a duplicate step name, a step needing a step not listed, or a cycle
 */
export function pipeline<P = Record<string, never>>(
  name: string,
  options: PipelineOptions<P>,
): Pipeline<P> {
  checkName("pipeline", name);
  if (!options || !Array.isArray(options.steps) || options.steps.length === 0) {
    throw new TypeError(`Invalid pipeline '${name}': steps must be a non-empty list of steps`);
  }
  const byName = new Map<string, AnyStep>();
  for (const [index, s] of options.steps.entries()) {
    if (!s || s.kind !== "step") {
      throw new TypeError(`Invalid pipeline '${name}': steps[${index}] is not a step`);
    }
    const seen = byName.get(s.name);
    if (seen) {
      throw new TypeError(
        `Invalid pipeline '${name}': two steps are named '${s.name}'${
          seen === s ? " (the same step is listed twice)" : ""
        }`,
      );
    }
    byName.set(s.name, s);
  }
  for (const s of byName.values()) {
    for (const need of Object.values(s.needs)) {
      if (byName.get(need.name) !== need) {
        throw new TypeError(
          `Invalid pipeline '${name}': step '${s.name}' needs '${need.name}', which is not in its steps list`,
        );
      }
    }
  }
  const steps = topologicalOrder(name, byName);
  const retry = resolveRetry(options.defaults?.retry, DEFAULT_RETRY, `pipeline '${name}'`);
  const timeoutMs = options.defaults?.timeout === undefined
    ? 30 * 60_000
    : toTimeoutMs(options.defaults.timeout, `default timeout of pipeline '${name}'`);
  const concurrency = options.concurrency ?? 8;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new RangeError(
      `Invalid pipeline '${name}': concurrency must be a positive integer, got ${concurrency}`,
    );
  }
  const graph: Record<string, string[]> = {};
  for (const s of steps) graph[s.name] = Object.values(s.needs).map((n) => n.name).sort();
  return Object.freeze({
    kind: "pipeline" as const,
    name,
    description: options.description,
    params: options.params,
    steps,
    byName,
    graph,
    version: graphVersion(graph, steps),
    concurrency,
    schedule: options.schedule ? resolveSchedule(name, options.schedule) : null,
    defaults: { retry, timeoutMs },
  });
}

function resolveSchedule(pipelineName: string, options: ScheduleOptions): Schedule {
  const where = `Invalid schedule of pipeline '${pipelineName}'`;
  const timezone = options.timezone ?? "UTC";
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: timezone });
  } catch {
    throw new RangeError(
      `${where}: unknown time zone ${
        JSON.stringify(timezone)
      } (use an IANA name like "Europe/Berlin")`,
    );
  }
  try {
    new Cron(options.cron, { timezone, paused: true });
  } catch (error) {
    throw new TypeError(
      `${where}: cron ${JSON.stringify(options.cron)} is not valid: ${
        error instanceof Error ? error.message : error
      }`,
    );
  }
  const catchup = options.catchup ?? "latest";
  if (!["none", "latest", "all"].includes(catchup)) {
    throw new RangeError(
      `${where}: catchup must be "none", "latest" or "all", got ${JSON.stringify(catchup)}`,
    );
  }
  const overlap = options.overlap ?? "skip";
  if (!["skip", "queue", "allow"].includes(overlap)) {
    throw new RangeError(
      `${where}: overlap must be "skip", "queue" or "allow", got ${JSON.stringify(overlap)}`,
    );
  }
  const catchupLimit = options.catchupLimit ?? 10;
  const maxActive = options.maxActive ?? 1;
  for (
    const [field, value] of [["catchupLimit", catchupLimit], ["maxActive", maxActive]] as const
  ) {
    if (!Number.isInteger(value) || value < 1 || value > 1000) {
      throw new RangeError(`${where}: ${field} must be an integer from 1 to 1000, got ${value}`);
    }
  }
  return { cron: options.cron, timezone, catchup, catchupLimit, overlap, maxActive };
}

function topologicalOrder(pipelineName: string, byName: Map<string, AnyStep>): AnyStep[] {
  const order: AnyStep[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (s: AnyStep, path: string[]) => {
    const mark = state.get(s.name);
    if (mark === "done") return;
    if (mark === "visiting") {
      const cycle = [...path.slice(path.indexOf(s.name)), s.name].join(" -> ");
      throw new TypeError(`Invalid pipeline '${pipelineName}': steps form a cycle: ${cycle}`);
    }
    state.set(s.name, "visiting");
    for (const need of Object.values(s.needs)) visit(need, [...path, s.name]);
    state.set(s.name, "done");
    order.push(s);
  };
  for (const s of byName.values()) visit(s, []);
  return order;
}

function graphVersion(graph: Record<string, string[]>, steps: AnyStep[]): string {
  const canonical = JSON.stringify(
    steps.map((s) => [s.name, graph[s.name], s.fanOut ? 1 : 0]).sort(),
  );
  let h1 = 0x811c9dc5, h2 = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < canonical.length; i++) {
    const c = canonical.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0x01000193);
    h2 = Math.imul(h2 ^ c, 0x5bd1e995);
  }
  return (h1 >>> 0).toString(16).padStart(8, "0") + (h2 >>> 0).toString(16).padStart(8, "0");
}

/**
 * Explains how a pipeline's step graph differs from the one a run recorded.
 *
 * @param recorded the graph the run was created with
 * @param current the pipeline's graph now
 * @returns one line per difference; empty when the graphs are equal
 */
export function diffGraphs(
  recorded: Readonly<Record<string, readonly string[]>>,
  current: Readonly<Record<string, readonly string[]>>,
): string[] {
  const lines: string[] = [];
  for (const name of Object.keys(current)) {
    if (!(name in recorded)) lines.push(`step '${name}' was added`);
  }
  for (const name of Object.keys(recorded)) {
    if (!(name in current)) lines.push(`step '${name}' was removed`);
    else if (recorded[name].join() !== current[name].join()) {
      lines.push(
        `step '${name}' needed [${recorded[name].join(", ")}], now needs [${
          current[name].join(", ")
        }]`,
      );
    }
  }
  return lines;
}

/** The longest timeout a timer can wait for: 2^31 − 1 ms, about 24.8 days. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** A timeout in ms, refused at definition time when no timer could wait that long. */
export function toTimeoutMs(value: Duration, what: string): number {
  const ms = toMs(value, what);
  if (ms > MAX_TIMEOUT_MS) {
    throw new TypeError(
      `Cannot use ${what}: ${JSON.stringify(value)} is longer than the 24 days a timer can wait`,
    );
  }
  return ms;
}
