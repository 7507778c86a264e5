/**
 * Run-level flow control, decided in the claim (`commands.ts`): whether a queued run may
 * start now under its limit and throttle, and what the claim's commit takes for it.
 *
 * - A **limit** lets at most `max` runs of a (scope, key) be active: a run that starts
 *   takes the lowest free slot (`store/slots.ts`) in the claim's commit and keeps it while
 *   running, waiting, paused and across takeovers; the commit that ends it frees the slot
 *   and writes a **gate** into the due-index (`kv/indexes.ts`). Whoever lists the gate
 *   ({@linkcode openGate}, from `dueRuns`) makes the first queued runs due now, so a
 *   release whose process died right after its commit still wakes the next run.
 * - Runs that find every slot taken wait in the key's queue (`keys.limitQueue`), ordered
 *   by creation time less their priority's credit: first come, first served. A run that
 *   finds a free slot while earlier ones wait for it queues behind them and opens the gate
 *   for them instead. A held run is also due again after {@linkcode BACKSTOP_MS}, so a
 *   lost wake-up only delays it.
 * - A **throttle** lets at most `max` runs of a key start per period: the claim's commit
 *   takes a throttle entry; when none is free the run stays queued, held until the
 *   earliest entry frees up.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import { addGate, type GateDue, moveDue, queueRank } from "../kv/indexes.ts";
import { commitAtomic } from "../kv/commit.ts";
import { getAll } from "../kv/reads.ts";
import { readQueue } from "./limit_view.ts";
import { formatMs } from "../define/duration.ts";
import { type HeldState, type RunRecord, type SlotHolder, TERMINAL } from "../model/records.ts";
import type { AtomicOperation, Kv, KvEntry, KvEntryMaybe, KvKey } from "../kv/kv.ts";
import {
  freeSlot,
  healSlots,
  pickThrottle,
  readSlots,
  readThrottle,
  releaseTake,
  reserveTake,
  takenNow,
  takeThrottle,
} from "./slots.ts";

/** How long a run held by a limit waits at most before it looks again by itself. */
export const BACKSTOP_MS = 10_000;

/** Queued runs a gate makes due per commit; a gate with more to wake stays listed. */
const GATE_BATCH = 10;

/** What the claim of a queued run does about its flow control. */
export type Admission =
  | {
    /** It starts: `slot` is the limit slot it takes (null without a limit). */
    start: true;
    slot: number | null;
    /** Adds the taking of its slot and throttle entry, with their checks, to the claim. */
    apply: (op: AtomicOperation) => void;
    /** How many checks `apply` adds (a grouped claim counts them against KV's limit). */
    checks: number;
    /** Call once the claim's commit is done: other claims here may pick them again. */
    done: () => void;
  }
  | {
    /** It waits: recorded queued with `held`, due again at `dueAt`. */
    start: false;
    held: HeldState;
    dueAt: number;
    /** Adds its queue entry (and a gate for runs ahead of it) to the hold's commit. */
    apply: (op: AtomicOperation) => void;
    /** How many checks `apply` adds. */
    checks: number;
  };

/**
 * Whether a claim of `run` goes through flow control: a queued run that needs a limit slot,
 * or a throttled run that never started.
 */
export function needsAdmission(run: RunRecord): boolean {
  if (run.status !== "queued") return false;
  if (run.flow?.limit && run.slot == null) return true;
  // a throttle counts a run's first start: not its going on after a pause or a resume
  return Boolean(run.flow?.throttle) && run.startedAt === null;
}

/** Whether a due-index value is a gate (see `kv/indexes.ts`). */
export function isGate(value: unknown): value is GateDue {
  return typeof value === "object" && value !== null && "gate" in value;
}

/**
 * Decides whether a queued run starts now under its limit and throttle, reading its
 * key's slots, queue and throttle entries; the claim's commit applies the decision with
 * checks, so two claims never take one slot or one throttle entry.
 */
export async function admit(kv: Kv, run: RunRecord, now: number): Promise<Admission> {
  // what this claim picked, reserved in the same turn (see `reserveTake`)
  const reserved: ["slot" | "throttle", string, string, number][] = [];
  try {
    return await decideAdmission(kv, run, now, reserved);
  } catch (error) {
    // a read failed after a pick: nothing is taken
    for (const r of reserved.splice(0)) releaseTake(...r);
    throw error;
  }
}

async function decideAdmission(
  kv: Kv,
  run: RunRecord,
  now: number,
  reserved: ["slot" | "throttle", string, string, number][],
): Promise<Admission> {
  const limit = run.flow?.limit;
  const throttle = run.startedAt === null ? run.flow?.throttle : undefined;
  const throttled = throttle ? readThrottle(kv, throttle.scope, throttle.key) : null;
  throttled?.catch(() => {}); // awaited below, unless the limit holds the run first
  const applies: ((op: AtomicOperation) => void)[] = [];
  const done = () => {
    for (const r of reserved.splice(0)) releaseTake(...r);
  };
  let slot: number | null = null;
  const since = (by: HeldState["by"]) => run.held?.by === by ? run.held.since : now;
  if (limit) {
    const { scope, key, max } = limit;
    const mine = keys.limitQueue(scope, key, queueRank(run), run.id);
    // what other takes of this process (claims, step starts) are taking counts as taken
    const busy = takenNow("slot", scope, key);
    // A slot whose holder is gone without freeing it (its run was deleted, say) is rare:
    // looked for once a run waited out its backstop, not at every claim of a full key.
    const waitedLong = run.held?.by === "limit" && now - run.held.since >= BACKSTOP_MS;
    const decide = async (release: KvEntryMaybe<unknown> | null) => {
      // read together: KV is busiest exactly when runs queue up under a limit
      const [slots, head] = await Promise.all([
        readSlots(kv, scope, key),
        readQueue(kv, scope, key, max + 1),
      ]);
      const queue = head.entries;
      let held = slots;
      if (freeSlot(held, max) < 0 && waitedLong) held = await healSlots(kv, held, now);
      const index = freeSlot(held, max, busy);
      let inFlight = 0;
      for (let i = 0; i < max; i++) if (busy(i)) inFlight++;
      const free = max - held.length - inFlight;
      // reserved in the turn it was picked: no other take of this process picks it meanwhile
      if (index >= 0 && reserveTake("slot", scope, key, index)) {
        reserved.push(["slot", scope, key, index]);
      }
      const ahead = index < 0 ? 0 : await waitingAhead(kv, queue, mine);
      return { release, held, queue, index, free, ahead, hold: index < 0 || ahead >= free };
    };
    let d = await decide(null);
    if (d.hold) {
      done();
      // A hold is committed checked against the key's last release, read before the slots
      // it decides on: a slot freed after that read fails the hold, and the run looks again.
      // (A run that starts needs no such read: its slot's own check decides.)
      d = await decide(await kv.get(keys.limitRelease(scope, key)));
    }
    const { held, queue, index, free, ahead } = d;
    if (d.hold) {
      done();
      const release = d.release!;
      const reason = index < 0
        ? `${held.length} of ${max} slots of key '${key}' taken`
        : `${ahead} earlier run(s) of key '${key}' waiting for ${free} free slot(s)`;
      return {
        start: false,
        held: { by: "limit", key, since: since("limit"), until: null, reason },
        dueAt: now + BACKSTOP_MS,
        checks: 1,
        apply: (op) => {
          // a slot freed since it was read: the hold fails and the run looks again
          op.check(release).set(mine, run.id);
          // a run queued: claims checked against the key's mark as it was see they are late
          op.set(keys.limitQueueMark(scope, key), now);
          // the free slots belong to the runs ahead: wake them
          if (free > 0) addGate(op, now, limit);
        },
      };
    }
    slot = index;
    const slotKey = keys.slot(scope, key, index);
    const holder: SlotHolder = { run: run.id, step: null, item: -1, attempt: 0, at: now };
    const others = queue.some((e) => e.value !== run.id);
    // a run enters its key's queue only in a commit that records it held, and leaves it
    // when claimed or ended: one never held has no entry to delete
    const wasQueued = run.held != null;
    applies.push((op) => {
      op.check({ key: slotKey, versionstamp: null }).set(slotKey, holder);
      // a slot taken: claims checked against the key's mark as it was see they are late
      op.set(keys.limitQueueMark(scope, key), now);
      if (wasQueued) op.delete(mine);
      // more slots free and more runs waiting: the next one starts too
      if (free > 1 && others) addGate(op, now, limit);
    });
  }
  if (throttle) {
    const { scope, key, max, perMs } = throttle;
    const pick = pickThrottle(
      await throttled!,
      max,
      perMs,
      now,
      takenNow("throttle", scope, key),
    );
    if ("until" in pick) {
      done();
      const reason = `${max} start(s) of key '${key}' in the last ${formatMs(perMs)}`;
      return {
        start: false,
        held: { by: "throttle", key, since: since("throttle"), until: pick.until, reason },
        dueAt: pick.until,
        checks: 0,
        apply: (op) => {
          if (limit) {
            op.delete(keys.limitQueue(limit.scope, limit.key, queueRank(run), run.id));
          }
        },
      };
    }
    // picked in this turn, among entries no take here is taking: the reservation holds
    if (reserveTake("throttle", scope, key, pick.index)) {
      reserved.push(["throttle", scope, key, pick.index]);
    }
    applies.push((op) => takeThrottle(op, scope, key, pick, now));
  }
  return {
    start: true,
    slot,
    apply: (op) => applies.forEach((apply) => apply(op)),
    // one check each: the slot is still free, the throttle entry still unused
    checks: applies.length,
    done,
  };
}

/**
 * Opens a gate listed in the due-index: {@linkcode wakeQueued} in one commit with the
 * gate's deletion, checked against the gate (left listed when more runs may follow).
 *
 * @returns the runs made due, or none when the commit lost a race (the gate stays)
 */
export async function openGate(
  kv: Kv,
  gate: KvEntry<GateDue>,
  now: number,
): Promise<string[]> {
  const [scope, key, max] = gate.value.gate;
  return await wakeQueued(kv, { scope, key, max }, now, gate);
}

/**
 * Makes up to as many queued runs of a limit key due now as it has free slots, in queue
 * order, in one commit checked against those runs; queue entries of runs that ended,
 * vanished or started meanwhile are dropped with it. The worker whose run freed a slot
 * calls it at once; the gate that the freeing commit wrote does the same for any worker.
 *
 * The commit is KV's own, never part of a grouped commit (`kv/commit.ts`): it rewrites
 * queued runs' records, checked against the versions it read, and a claim of one of those
 * runs by this process may be in flight with the same check. In one grouped commit both
 * checks would pass and the last write win: a claimed run recorded queued again, whose
 * slot a heal then frees while it runs (a SIGKILL storm of a shared scope saw three
 * bodies of a key with a limit of two). Alone, one of the two commits fails its check.
 *
 * @returns the runs made due, or none when the commit lost a race
 */
export async function wakeQueued(
  kv: Kv,
  limit: { scope: string; key: string; max?: number },
  now: number,
  gate?: KvEntry<GateDue>,
): Promise<string[]> {
  const { scope, key, max } = limit;
  // most keys have nobody queued: one read says so, and else reads as much of the queue
  // as one commit wakes or drops
  const { entries: head } = await readQueue(kv, scope, key, 2 * GATE_BATCH);
  if (head.length === 0 && !gate) return [];
  // the slots and the queued runs in one round: a freed slot's hand-over is on the path
  // from one run's end to the next one's start
  const [held, headRuns] = await Promise.all([
    readSlots(kv, scope, key),
    head.length > 0 ? getAll<RunRecord>(kv, head.map((e) => keys.run(e.value))) : [],
  ]);
  // The queued runs wait under their run limit: its `max` counts, also when the caller
  // knows none or another (a step's end freed a slot of a scope they share).
  const queuedMax = headRuns.find((e) => e.value?.flow?.limit)?.value?.flow?.limit?.max ??
    max ?? 0;
  const free = Math.min(queuedMax - held.length, GATE_BATCH);
  const entries = free > 0 ? head.slice(0, free + GATE_BATCH) : [];
  const runs = headRuns.slice(0, entries.length);
  const changes: ((op: AtomicOperation) => void)[] = [];
  const woken: string[] = [];
  let more = false;
  entries.forEach((entry, i) => {
    const run = runs[i].value;
    if (!run || TERMINAL.has(run.status) || run.slot != null || run.held?.by === "throttle") {
      changes.push((op) => op.delete(entry.key));
      return;
    }
    // a paused run keeps its place and is looked at again once unpaused
    if (run.status !== "queued") return;
    if (woken.length >= free) {
      more = true;
      return;
    }
    woken.push(run.id);
    const next = { ...run, dueAt: now };
    changes.push((op) => {
      op.check(runs[i]).set(keys.run(run.id), next);
      moveDue(op, run, next);
    });
  });
  if (gate) {
    const drop = !(more && free === GATE_BATCH);
    changes.push((op) => {
      op.check(gate);
      if (drop) op.delete(gate.key);
    });
  } else if (entries.length === 0) return [];
  const op = kv.atomic();
  for (const change of changes) change(op);
  return (await commitAtomic(op)).ok ? woken : [];
}

/**
 * How many of the `queue` entries before `mine` are runs still waiting for a slot: an
 * entry of a paused, ended or started run does not hold the others back.
 */
async function waitingAhead(
  kv: Kv,
  queue: readonly KvEntry<string>[],
  mine: KvKey,
): Promise<number> {
  const ahead = queue.filter((e) => compareKeys(e.key, mine) < 0);
  if (ahead.length === 0) return 0;
  const runs = await getAll<RunRecord>(kv, ahead.map((e) => keys.run(e.value)));
  return runs.filter(({ value: run }) =>
    run !== null && run.status === "queued" && run.slot == null
  ).length;
}

/** Orders two queue keys of one limit key: by rank, then run id. */
function compareKeys(a: KvKey, b: KvKey): number {
  const [ra, ia] = [a[a.length - 2] as number, a[a.length - 1] as string];
  const [rb, ib] = [b[b.length - 2] as number, b[b.length - 1] as string];
  return ra !== rb ? ra - rb : ia < ib ? -1 : ia > ib ? 1 : 0;
}
