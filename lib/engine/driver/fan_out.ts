/**
 * What the driver knows about a fan-out step's items: counters, a cursor and a heap keep
 * the work per finished item O(log n), since a step may have `MAX_ITEMS` items. Pure: no
 * KV, no timers.
 *
 * @module
 */
import type { StepStatus, TaskRecord } from "../../model/records.ts";
import { MinHeap } from "./min_heap.ts";

/** The items of one fan-out step, as this driver knows them. */
export interface FanState {
  values: unknown[];
  records: Map<number, TaskRecord>;
  outputs: Map<number, unknown>;
  /** Indices not started yet, in order; those before `freshAt` have been taken. */
  fresh: number[];
  freshAt: number;
  /** Items by status, as `records` holds them. */
  counts: Record<StepStatus, number>;
  /** Retrying items by due time; an entry is stale once its item's record moved on. */
  retries: MinHeap<{ at: number; index: number }>;
  /** Items whose attempt runs now. */
  running: number;
}

/** The fan-out state of a step whose `items` returned `values`, before any item is known. */
export function newFan(values: unknown[]): FanState {
  return {
    values,
    records: new Map(),
    outputs: new Map(),
    fresh: [],
    freshAt: 0,
    counts: {
      pending: 0,
      running: 0,
      retrying: 0,
      waiting: 0,
      succeeded: 0,
      failed: 0,
      skipped: 0,
    },
    retries: new MinHeap((a, b) => a.at < b.at || (a.at === b.at && a.index < b.index)),
    running: 0,
  };
}

/** Records an item's new state in the fan-out's counters and retry heap. */
export function trackItem(fan: FanState, index: number, record: TaskRecord): void {
  const before = fan.records.get(index);
  fan.records.set(index, record);
  if (before) fan.counts[before.status]--;
  fan.counts[record.status]++;
  if (record.status === "retrying" || record.status === "waiting") {
    fan.retries.push({ at: record.nextAt ?? 0, index });
  }
}

/**
 * When the fan-out's earliest retry is due, or Infinity when no item is retrying. Drops
 * stale heap entries on the way: each entry is dropped once, so this is O(log n) amortized.
 */
export function nextRetry(fan: FanState): number {
  for (let top = fan.retries.peek(); top; top = fan.retries.peek()) {
    const record = fan.records.get(top.index);
    if (
      (record?.status === "retrying" || record?.status === "waiting") &&
      (record.nextAt ?? 0) === top.at
    ) return top.at;
    fan.retries.pop();
  }
  return Infinity;
}

/** The item to start next at `now` — a retry that is due first, then one not started yet — or -1. */
export function nextItem(fan: FanState, now: number): number {
  if (nextRetry(fan) <= now) return fan.retries.peek()!.index;
  return fan.freshAt < fan.fresh.length ? fan.fresh[fan.freshAt] : -1;
}

/** Takes the item {@linkcode nextItem} named at `now`, once it is to start. */
export function takeItem(fan: FanState, now: number): void {
  if (nextRetry(fan) <= now) fan.retries.pop();
  else fan.freshAt++;
}

/** Whether an item of the fan-out may still run: one runs, waits to start, or retries. */
export function fanOpen(fan: FanState): boolean {
  return fan.running > 0 || fan.freshAt < fan.fresh.length || fan.counts.retrying > 0 ||
    fan.counts.waiting > 0;
}

/** The outputs of every item, in order (when all succeeded). */
export function fanOutputs(fan: FanState): unknown[] {
  return Array.from({ length: fan.values.length }, (_, i) => fan.outputs.get(i));
}

/** The first failed item the fan-out records, or undefined. */
export function firstFailedItem(fan: FanState): [number, TaskRecord] | undefined {
  for (const entry of fan.records) if (entry[1].status === "failed") return entry;
  return undefined;
}

/** The most attempts any item took. */
export function mostAttempts(fan: FanState): number {
  let most = 0;
  for (const record of fan.records.values()) most = Math.max(most, record.attempt);
  return most;
}
