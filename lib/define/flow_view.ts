/**
 * Flow control as people and clients see it: a pipeline's limits, throttles, debounce and
 * priority as plain JSON (the API, `pipelines --json`, the dashboard), and why a queued
 * run is held, as one line (`status`, `runs`, the dashboard).
 *
 * @module
 */
import type { HeldState } from "../model/records.ts";
import { isKeyed, type Limit, type Throttle } from "./flow.ts";
import type { PipelineFlow } from "./pipeline.ts";
import { formatRetention } from "./retention.ts";

/** A limit as shown: its scope, slots per key, and whether it counts per key. */
export interface LimitJson {
  /** Limits of the same scope share their slots. */
  scope: string;
  /** Slots per key. */
  max: number;
  /** Whether it counts per key (false: one key for all). */
  keyed: boolean;
}

/** A throttle as shown: starts per period (`per` for people, `perMs` exact) per key. */
export interface ThrottleJson {
  /** Throttles of the same scope share their budget. */
  scope: string;
  /** Starts per period per key. */
  max: number;
  /** The period, such as `1s`. */
  per: string;
  /** The period, ms. */
  perMs: number;
  /** Whether it counts per key (false: one key for all). */
  keyed: boolean;
}

/** A pipeline's flow control as shown. */
export interface FlowJson {
  /** The limit of its runs. */
  limit: LimitJson | null;
  /** The throttle of its run starts. */
  throttle: ThrottleJson | null;
  /** The debounce of its HTTP- and event-started runs: quiet period, longest hold. */
  debounce: {
    quiet: string;
    quietMs: number;
    maxWait: string;
    maxWaitMs: number;
    keyed: boolean;
  } | null;
  /** The default priority of its runs. */
  priority: number;
  /** The steps with a limit or a throttle, in the pipeline's step order. */
  steps: { step: string; limit: LimitJson | null; throttle: ThrottleJson | null }[];
}

/**
 * A pipeline's flow control as plain JSON.
 *
 * @param flow the checked flow control (`pipeline.flow`)
 * @returns its JSON shape; steps without a limit or throttle are left out
 */
export function flowJson(flow: PipelineFlow): FlowJson {
  return {
    limit: limitJson(flow.limit),
    throttle: throttleJson(flow.throttle),
    debounce: flow.debounce
      ? {
        quiet: formatRetention(flow.debounce.quietMs),
        quietMs: flow.debounce.quietMs,
        maxWait: formatRetention(flow.debounce.maxWaitMs),
        maxWaitMs: flow.debounce.maxWaitMs,
        keyed: isKeyed(flow.debounce.key),
      }
      : null,
    priority: flow.priority,
    steps: [...flow.steps]
      .filter(([, s]) => s.limit || s.throttle)
      .map(([step, s]) => ({
        step,
        limit: limitJson(s.limit),
        throttle: throttleJson(s.throttle),
      })),
  };
}

function limitJson(limit: Limit | null): LimitJson | null {
  return limit ? { scope: limit.scope, max: limit.max, keyed: isKeyed(limit.key) } : null;
}

function throttleJson(throttle: Throttle | null): ThrottleJson | null {
  return throttle
    ? {
      scope: throttle.scope,
      max: throttle.max,
      per: formatRetention(throttle.perMs),
      perMs: throttle.perMs,
      keyed: isKeyed(throttle.key),
    }
    : null;
}

/**
 * One line per flow control setting, for `pipelines` and the dashboard: `limit 2 at once
 * per key (scope nightly)`, `step send: throttle 10 per 1s`. Empty when there is none.
 *
 * @param flow the flow control as JSON
 */
export function flowLines(flow: FlowJson): string[] {
  const lines: string[] = [];
  if (flow.limit) lines.push(`limit ${limitText(flow.limit)}`);
  if (flow.throttle) lines.push(`throttle ${throttleText(flow.throttle)}`);
  if (flow.debounce) {
    lines.push(
      `debounce quiet ${flow.debounce.quiet}, at most ${flow.debounce.maxWait}` +
        (flow.debounce.keyed ? " per key" : ""),
    );
  }
  if (flow.priority !== 0) lines.push(`priority ${flow.priority}`);
  for (const s of flow.steps) {
    if (s.limit) lines.push(`step ${s.step}: limit ${limitText(s.limit)}`);
    if (s.throttle) lines.push(`step ${s.step}: throttle ${throttleText(s.throttle)}`);
  }
  return lines;
}

function limitText(limit: LimitJson): string {
  return `${limit.max} at once${limit.keyed ? " per key" : ""} (scope ${limit.scope})`;
}

function throttleText(throttle: ThrottleJson): string {
  return `${throttle.max} per ${throttle.per}${throttle.keyed ? " per key" : ""} ` +
    `(scope ${throttle.scope})`;
}

/**
 * Why a queued run is held, for people: `held: limit — 2 of 2 slots of key 'acme' taken`,
 * `held: throttle until 12:00:03` (UTC; a full date when it is a day or more away).
 *
 * @param held the run's hold
 * @param now the time `until` is compared with
 */
export function heldText(held: HeldState, now = Date.now()): string {
  if (held.until === null) return `held: ${held.by} — ${held.reason}`;
  const iso = new Date(held.until).toISOString();
  const when = Math.abs(held.until - now) < 86_400_000 ? iso.slice(11, 19) : iso;
  return `held: ${held.by} until ${when}`;
}
