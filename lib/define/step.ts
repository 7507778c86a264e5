/**
 * Defining steps: {@linkcode step}, with what it needs, its output schema, retry policy,
 * timeout and fan-out. A step is checked when its module loads.
 *
 * @module
 */
import { type Duration, toMs } from "./duration.ts";
import type { ItemContext, StepContext } from "./context.ts";
import { resolveRetry, type RetryPolicy } from "./retry.ts";
import type { WaitSpec } from "./wait.ts";
import {
  type Limit,
  type LimitOptions,
  resolveLimit,
  resolveThrottle,
  type Throttle,
  type ThrottleOptions,
} from "./flow.ts";

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
  /** Present when the step waits (sleep, event, child run) instead of running a body. */
  readonly wait?: WaitSpec;
  /**
   * Its concurrency limit per key, across every worker (scope `""`: the pipeline gives
   * it `<pipeline>/<step>`).
   */
  readonly limit?: Limit;
  /** Its throttle per key, across every worker (scope `""` as for `limit`). */
  readonly throttle?: Throttle;
  /**
   * Why its `limit` or `throttle` option is refused: {@linkcode pipeline} throws it when
   * it lists the step, naming the pipeline, the step and the field.
   */
  readonly invalid?: TypeError;
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
  /**
   * At most `max` attempts of this step at once per key, across every worker: the key
   * comes from the step's inputs (from the item, for a fan-out step).
   */
  limit?: LimitOptions<Inputs<N>>;
  /** At most `max` attempts started per period per key, across every worker. */
  throttle?: ThrottleOptions<Inputs<N>>;
}

/**
 * Most items a fan-out step may have. The worker holding a run keeps every item's record
 * and output in memory and hands the steps that need the fan-out all outputs as one list;
 * a resume or rerun reads and rewrites every item record. A run whose `items` returns more
 * fails that step at once, before any item is stored.
 */
export const MAX_ITEMS = 100_000;

/** Options of a fan-out step: it runs its function once per item, each checkpointed. */
export interface FanOutOptions<N extends Needs, I, O>
  extends Omit<StepOptions<N, O>, "limit" | "throttle"> {
  /** At most `max` items at once per key (from the item), across every worker. */
  limit?: LimitOptions<I>;
  /** At most `max` items started per period per key (from the item), across workers. */
  throttle?: ThrottleOptions<I>;
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

export function checkName(kind: string, name: unknown): string {
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
 * import { step } from "./step.ts";
 * export const hello = step("hello", () => "world");
 * ```
 *
 * @example A step that needs another, with a retry policy
 * ```ts
 * import { step } from "./step.ts";
 * const load = step("load", () => [1, 2, 3]);
 * export const total = step("total", {
 *   needs: { numbers: load },
 *   retry: { attempts: 5, delay: "2s" },
 * }, ({ numbers }) => numbers.reduce((a, b) => a + b, 0));
 * ```
 *
 * @example A fan-out step: one checkpoint per item
 * ```ts
 * import { step } from "./step.ts";
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
  let limit: Limit | null = null;
  let throttle: Throttle | null = null;
  let invalid: TypeError | undefined;
  try {
    limit = resolveLimit(`step '${name}': limit`, options.limit as never, "");
    throttle = resolveThrottle(`step '${name}': throttle`, options.throttle as never, "");
  } catch (error) {
    // refused by the pipeline that lists the step, which names itself in the error
    if (!(error instanceof TypeError)) throw error;
    invalid = error;
  }
  return Object.freeze({
    kind: "step" as const,
    name,
    needs: Object.freeze({ ...needs }),
    ...(limit ? { limit } : {}),
    ...(throttle ? { throttle } : {}),
    ...(invalid ? { invalid } : {}),
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
