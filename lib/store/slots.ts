/**
 * The KV side of flow control's two counters, shared by run limits (taken in the claim,
 * `store/flow.ts`) and step limits (taken with an attempt's start, by the driver):
 *
 * - A **limit** of `max` per key is `max` numbered slots (`keys.slot`). A holder takes the
 *   lowest free slot with a check that it is still free, so two holders never share one
 *   and a key never has more than `max`. A slot whose holder is gone — its run ended or
 *   vanished, its attempt is no longer running — is stale and may be freed by anyone, in
 *   a commit checked against what made it stale.
 * - A **throttle** of `max` per period per key is `max` entries (`keys.throttleSlot`),
 *   each the time it last let a start through. A start takes an entry unused for a period
 *   with a check on its versionstamp; each entry lets at most one start through per
 *   period, so any period holds at most `max`.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import { commitAtomic, type KvWrite } from "../kv/commit.ts";
import { gate } from "../kv/indexes.ts";
import { type RunRecord, type SlotHolder, type TaskRecord, TERMINAL } from "../model/records.ts";
import type { AtomicOperation, Kv, KvEntry, KvEntryMaybe, KvKey } from "../kv/kv.ts";

/**
 * Whether takes of a scope's slots write its keys' marks: every take of a scope without a
 * `/` does (a run limit's, and a step limit's named so).
 */
export function marked(scope: string): boolean {
  return !scope.includes("/");
}

/**
 * What goes with a step slot's free other than by its attempt's end — a cancel, the
 * takeover of a dead holder, a heal — in a scope a run limit may share: the key's last
 * release (a run's hold decided on the slot as held decides again, `store/flow.ts`) and a
 * gate due now, so that the next sweep of any worker makes the runs queued for the key
 * due (no worker is told of such a free at once). Nothing in a scope of steps alone.
 */
export function slotFreedWrites(
  scope: string,
  key: string,
  index: number,
  now: number,
): KvWrite[] {
  if (!marked(scope)) return [];
  // one gate per slot: a commit that frees two goes in its order, each gate after its free
  return [[keys.limitRelease(scope, key), now], gate(now, { scope, key, max: 0 }, `${index}`)];
}

/** The held slots of a limit key, by index. */
export async function readSlots(
  kv: Kv,
  scope: string,
  key: string,
): Promise<KvEntry<SlotHolder>[]> {
  const out: KvEntry<SlotHolder>[] = [];
  for await (const e of kv.list<SlotHolder>({ prefix: keys.slotPrefix(scope, key) })) out.push(e);
  return out;
}

/**
 * The lowest slot index below `max` that no entry holds (nor `busy` says is being taken),
 * or -1 when there is none.
 */
export function freeSlot(
  held: readonly KvEntry<SlotHolder>[],
  max: number,
  busy?: (index: number) => boolean,
): number {
  const taken = new Set(held.map((e) => e.key[e.key.length - 1] as number));
  for (let i = 0; i < max; i++) if (!taken.has(i) && !busy?.(i)) return i;
  return -1;
}

/**
 * Frees the slots among `held` whose holders are gone: a run holder whose run ended,
 * vanished or no longer names this slot; a step holder whose run ended or vanished, or
 * whose task no longer runs that attempt. Each free is a commit checked against the slot
 * and what made it stale, so a holder that moved on meanwhile keeps its slot; in a scope
 * a run limit may share, it also writes {@linkcode slotFreedWrites} (at `now`).
 *
 * @returns the slots still held after it
 */
export async function healSlots(
  kv: Kv,
  held: readonly KvEntry<SlotHolder>[],
  now: number,
): Promise<KvEntry<SlotHolder>[]> {
  const kept: KvEntry<SlotHolder>[] = [];
  for (const entry of held) {
    const holder = entry.value;
    const index = entry.key[entry.key.length - 1] as number;
    const reads: KvKey[] = [keys.run(holder.run)];
    if (holder.step !== null) {
      reads.push(
        holder.item < 0 ? keys.step(holder.run, holder.step) : keys.item(
          holder.run,
          holder.step,
          holder.item,
        ),
      );
    }
    const got = await kv.getMany<[RunRecord, TaskRecord]>(reads as [KvKey, KvKey]);
    if (!isStale(holder, index, got[0], got[1])) {
      kept.push(entry);
      continue;
    }
    const op = kv.atomic().check(entry, ...got).delete(entry.key);
    const [, , scope, key] = entry.key as [string, string, string, string, number];
    for (const [k, v] of slotFreedWrites(scope, key, index, now)) op.set(k, v);
    if (!(await commitAtomic(op)).ok) kept.push(entry);
  }
  return kept;
}

function isStale(
  holder: SlotHolder,
  index: number,
  run: KvEntryMaybe<RunRecord>,
  task: KvEntryMaybe<TaskRecord> | undefined,
): boolean {
  const r = run.value;
  if (!r || TERMINAL.has(r.status)) return true;
  if (holder.step === null) return r.slot !== index;
  const t = task?.value;
  return !t || t.status !== "running" || t.attempt !== holder.attempt;
}

/** A throttle entry that lets a start through now, or when the next one will. */
export type ThrottlePick =
  | { index: number; entry: KvEntryMaybe<number> }
  | { until: number };

/** The throttle entries of a key. */
export async function readThrottle(
  kv: Kv,
  scope: string,
  key: string,
): Promise<KvEntry<number>[]> {
  const out: KvEntry<number>[] = [];
  for await (const e of kv.list<number>({ prefix: keys.throttlePrefix(scope, key) })) {
    out.push(e);
  }
  return out;
}

/**
 * Picks the throttle entry a start at `now` may take: an index never used, else the one
 * used longest ago if that was a period or more before `now`. Otherwise says when the
 * earliest entry frees up.
 */
export function pickThrottle(
  entries: readonly KvEntry<number>[],
  max: number,
  perMs: number,
  now: number,
  skip?: (index: number) => boolean,
): ThrottlePick {
  const byIndex = new Map(entries.map((e) => [e.key[e.key.length - 1] as number, e]));
  let oldest: KvEntry<number> | undefined;
  let oldestIndex = -1;
  // an entry being taken by a commit of this process in flight is as good as used now
  let next = Infinity;
  for (let i = 0; i < max; i++) {
    if (skip?.(i)) {
      next = Math.min(next, now + perMs);
      continue;
    }
    const e = byIndex.get(i);
    if (!e) return { index: i, entry: { key: [], value: null, versionstamp: null } };
    if (!oldest || e.value < oldest.value) {
      oldest = e;
      oldestIndex = i;
    }
  }
  if (oldest && oldest.value + perMs <= now) return { index: oldestIndex, entry: oldest };
  return { until: Math.min(next, oldest ? oldest.value + perMs : Infinity) };
}

/** Adds to `op` the taking of a throttle entry picked by {@linkcode pickThrottle}. */
export function takeThrottle(
  op: AtomicOperation,
  scope: string,
  key: string,
  pick: { index: number; entry: KvEntryMaybe<number> },
  now: number,
): void {
  const k = keys.throttleSlot(scope, key, pick.index);
  op.check({ key: k, versionstamp: pick.entry.versionstamp }).set(k, now);
}

/**
 * Slots and throttle entries that commits of this process in flight are taking, by kind
 * (`slot`, `throttle`), scope and key. A run's claim and a step's start may share one
 * grouped commit, where two checks that one slot is free would both pass; so every take
 * in this process — a claim under a run limit or a step's start under a step limit, whose
 * limits may share a scope — reserves here what it picked, in the same turn as the pick,
 * and picks nothing reserved.
 */
const takingNow = new Map<string, Set<number>>();

/** The id of a (kind, scope, key) among the takes of this process. */
export function takeId(kind: "slot" | "throttle", scope: string, key: string): string {
  return `${kind}\u0000${scope}\u0000${key}`;
}

/** Reserves `index` of (scope, key) for a commit in flight; false when another has it. */
export function reserveTake(
  kind: "slot" | "throttle",
  scope: string,
  key: string,
  index: number,
): boolean {
  return reserveTakeOf(takeId(kind, scope, key), index);
}

/** {@linkcode reserveTake} by the {@linkcode takeId}. */
export function reserveTakeOf(id: string, index: number): boolean {
  let set = takingNow.get(id);
  if (!set) takingNow.set(id, set = new Set());
  if (set.has(index)) return false;
  set.add(index);
  return true;
}

/** Ends a {@linkcode reserveTake}: its commit is done, or it was not made. */
export function releaseTake(
  kind: "slot" | "throttle",
  scope: string,
  key: string,
  index: number,
): void {
  releaseTakeOf(takeId(kind, scope, key), index);
}

/** {@linkcode releaseTake} by the {@linkcode takeId}. */
export function releaseTakeOf(id: string, index: number): void {
  const set = takingNow.get(id);
  if (!set) return;
  set.delete(index);
  if (set.size === 0) takingNow.delete(id);
}

/** Whether a commit of this process in flight is taking an index of (scope, key): a live view. */
export function takenNow(
  kind: "slot" | "throttle",
  scope: string,
  key: string,
): (index: number) => boolean {
  const id = takeId(kind, scope, key);
  return (index) => takingNow.get(id)?.has(index) ?? false;
}

/** The indexes of a {@linkcode takeId} that commits of this process in flight are taking. */
export function takesOf(id: string): ReadonlySet<number> | undefined {
  return takingNow.get(id);
}
