/**
 * Defining pipelines: {@linkcode pipeline} checks the step graph when its module
 * loads, so a cycle or a typo fails at import, not at 3 AM.
 *
 * @module
 */
import type { Duration } from "./duration.ts";
import { DEFAULT_RETRY, type ResolvedRetry, resolveRetry, type RetryPolicy } from "./retry.ts";
import { resolveSchedule, type Schedule, type ScheduleOptions } from "./schedule.ts";
import { type AnyStep, checkName, type Schema, type Step, toTimeoutMs } from "./step.ts";
import { checkEventName } from "./wait.ts";
import { resolveRetention, type Retention, type RetentionOptions } from "./retention.ts";
import {
  checkPriority,
  type Debounce,
  type DebounceOptions,
  type Limit,
  type LimitOptions,
  resolveDebounce,
  resolveLimit,
  resolveThrottle,
  type Throttle,
  type ThrottleOptions,
} from "./flow.ts";

/** Pipeline-wide defaults for its steps. */
export interface PipelineDefaults {
  /** Default retry policy. */
  retry?: RetryPolicy;
  /** Default timeout per attempt. Default `"30m"`. */
  timeout?: Duration;
}

/** Options of {@linkcode pipeline}. */
export interface PipelineOptions<P, R = unknown> {
  /** Runs it on a cron schedule; the engine keeps the schedule's state in KV. */
  schedule?: ScheduleOptions;
  /** What the pipeline does, for people. */
  description?: string;
  /** Zod schema of the params; validated when a run is created. Default: no params. */
  params?: Schema<P>;
  /** Every step of the pipeline. Order does not matter; `needs` decides it. */
  steps: readonly AnyStep[];
  /**
   * The step whose output is the run's result: what a parent's {@linkcode invoke} step
   * receives when this pipeline runs as its child. Default: none (the result is null).
   */
  result?: Step<R>;
  /**
   * Events that start a run, each with a function from the event's payload to the run's
   * params (checked by `params`), or `{ params, priority }` to give the runs an event
   * starts their own priority (0 to 10; default the pipeline's). One run per event id
   * (with a `debounce`, one per burst); a payload that gives invalid params is refused
   * when it is sent.
   */
  // deno-lint-ignore no-explicit-any
  on?: Readonly<Record<string, ((data: any) => P) | EventTriggerOptions<P>>>;
  /** Defaults for the steps' retry policy and timeout. */
  defaults?: PipelineDefaults;
  /** Steps (or fan-out items) of one run running at once. Default 8. */
  concurrency?: number;
  /**
   * How long ended runs are kept, from their end, before workers prune them with all
   * they own. Default: succeeded and cancelled `"30d"`, failed `"90d"`.
   */
  retention?: RetentionOptions;
  /**
   * At most `max` runs active at once per key (from the params), across every worker:
   * the others stay `queued` and start, first come first served, as slots free up. A run
   * that sleeps or waits keeps its slot.
   */
  limit?: LimitOptions<P>;
  /** At most `max` runs started per period per key (from the params); the rest wait. */
  throttle?: ThrottleOptions<P>;
  /**
   * Debounces the runs that HTTP and events start: a burst with the same key gives one
   * run, with the last params, after a quiet period.
   */
  debounce?: DebounceOptions<P>;
  /**
   * The priority of its runs, 0 (the default) to 10, unless their trigger gives one: when
   * workers are saturated, higher priority is claimed first, and age lifts priority.
   */
  priority?: number;
}

/** A pipeline's flow control, checked. */
export interface PipelineFlow {
  /** The concurrency limit of its runs per key. */
  readonly limit: Limit | null;
  /** The throttle of its run starts per key. */
  readonly throttle: Throttle | null;
  /** The debounce of its HTTP- and event-started runs. */
  readonly debounce: Debounce | null;
  /** The default priority of its runs. */
  readonly priority: number;
  /** Its steps' limits and throttles, scopes filled in, by step name. */
  readonly steps: ReadonlyMap<string, { limit: Limit | null; throttle: Throttle | null }>;
}

/** An event trigger with options: `on: { "order.paid": { params, priority: 5 } }`. */
export interface EventTriggerOptions<P> {
  /** From the event's payload to the run's params. */
  // deno-lint-ignore no-explicit-any
  params: (data: any) => P;
  /** The priority of the runs the event starts, 0 to 10. Default: the pipeline's. */
  priority?: number;
}

/** A checked event trigger. */
export interface EventTrigger {
  /** From the event's payload to the run's params. */
  readonly params: (data: unknown) => unknown;
  /** The priority of the runs it starts, or undefined for the pipeline's. */
  readonly priority?: number;
}

/** A checked pipeline definition. */
export interface Pipeline<P = unknown, R = unknown> {
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
  /** The step whose output is the run's result, if any. */
  readonly result?: Step<R>;
  /** The events that start a run, each with its payload-to-params function and priority. */
  readonly on: ReadonlyMap<string, EventTrigger>;
  /** The pipelines its steps start as children (by {@linkcode invoke}). */
  readonly children: readonly Pipeline<unknown, unknown>[];
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
  /** How long its ended runs are kept, by status. */
  readonly retention: Retention;
  /** Limits, throttles, debounce and priority. */
  readonly flow: PipelineFlow;
}

/**
 * Defines a pipeline and checks its step graph.
 *
 * @example
 * ```ts
 * import { z } from "zod";
 * import { pipeline } from "./pipeline.ts";
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
 * @throws {TypeError} on a duplicate step name, a step needing a step not listed, a cycle,
 * or a bad option (its own, or a step's limit or throttle), naming itself and the field
 */
export function pipeline<P = Record<string, never>, R = null>(
  name: string,
  options: PipelineOptions<P, R>,
): Pipeline<P, R> {
  checkName("pipeline", name);
  if (!options || !Array.isArray(options.steps) || options.steps.length === 0) {
    throw new TypeError(`Invalid pipeline '${name}': steps must be a non-empty list of steps`);
  }
  const byName = new Map<string, AnyStep>();
  for (const [index, s] of options.steps.entries()) {
    if (!s || s.kind !== "step") {
      throw new TypeError(`Invalid pipeline '${name}': steps[${index}] is not a step`);
    }
    if (s.invalid) {
      throw new TypeError(
        `Invalid pipeline '${name}': ${s.invalid.message.replace(/^Invalid /, "")}`,
      );
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
  if (options.result !== undefined && byName.get(options.result?.name) !== options.result) {
    throw new TypeError(
      `Invalid pipeline '${name}': result must be one of its steps`,
    );
  }
  const on = new Map<string, EventTrigger>();
  for (const [event, trigger] of Object.entries(options.on ?? {})) {
    checkEventName(event, `event name in pipeline '${name}'`);
    on.set(event, resolveEventTrigger(name, event, trigger));
  }
  const retention = resolveRetention(name, options.retention);
  const flow = resolveFlow(name, options as PipelineOptions<unknown, unknown>, steps);
  const children: Pipeline<unknown, unknown>[] = [];
  for (const s of steps) {
    if (s.wait?.kind === "child" && !children.includes(s.wait.pipeline)) {
      children.push(s.wait.pipeline);
    }
  }
  return Object.freeze({
    kind: "pipeline" as const,
    name,
    description: options.description,
    params: options.params,
    steps,
    result: options.result,
    on,
    children,
    byName,
    graph,
    version: graphVersion(graph, steps),
    concurrency,
    schedule: options.schedule ? resolveSchedule(name, options.schedule) : null,
    defaults: { retry, timeoutMs },
    retention,
    flow,
  });
}

function resolveFlow(
  name: string,
  options: PipelineOptions<unknown, unknown>,
  steps: readonly AnyStep[],
): PipelineFlow {
  const where = `pipeline '${name}'`;
  const stepFlow = new Map<string, { limit: Limit | null; throttle: Throttle | null }>();
  for (const s of steps) {
    if (!s.limit && !s.throttle) continue;
    const scope = `${name}/${s.name}`;
    stepFlow.set(s.name, {
      limit: s.limit ? { ...s.limit, scope: s.limit.scope || scope } : null,
      throttle: s.throttle ? { ...s.throttle, scope: s.throttle.scope || scope } : null,
    });
  }
  return Object.freeze({
    limit: resolveLimit(`${where}: limit`, options.limit as never, name),
    throttle: resolveThrottle(`${where}: throttle`, options.throttle as never, name),
    debounce: resolveDebounce(`${where}: debounce`, options.debounce as never),
    priority: options.priority === undefined ? 0 : checkPriority(where, options.priority),
    steps: stepFlow,
  });
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
    steps.map((s) =>
      s.wait
        ? [s.name, graph[s.name], s.fanOut ? 1 : 0, s.wait.kind]
        : [s.name, graph[s.name], s.fanOut ? 1 : 0]
    ).sort(),
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

/** The pipelines and every pipeline they invoke as children, each once. */
// deno-lint-ignore no-explicit-any
export function withChildren(pipelines: Pipeline<any>[]): Pipeline<unknown>[] {
  const all = new Map<string, Pipeline<unknown>>();
  const add = (p: Pipeline<unknown>) => {
    if (all.has(p.name)) return;
    all.set(p.name, p);
    for (const child of p.children) add(child);
  };
  for (const p of pipelines) add(p);
  return [...all.values()];
}

function resolveEventTrigger(pipelineName: string, event: string, trigger: unknown): EventTrigger {
  const where = `pipeline '${pipelineName}': on["${event}"]`;
  if (typeof trigger === "function") return { params: trigger as EventTrigger["params"] };
  const o = trigger as Record<string, unknown> | null;
  if (o === null || typeof o !== "object" || typeof o.params !== "function") {
    throw new TypeError(
      `Invalid ${where}: must be a function from the payload to params, or { params, priority }`,
    );
  }
  const unknownField = Object.keys(o).find((f) => f !== "params" && f !== "priority");
  if (unknownField !== undefined) {
    throw new TypeError(`Invalid ${where}.${unknownField}: not a field (use params, priority)`);
  }
  const params = o.params as EventTrigger["params"];
  if (o.priority === undefined) return { params };
  return { params, priority: checkPriority(where, o.priority) };
}
