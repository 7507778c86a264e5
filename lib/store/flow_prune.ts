/**
 * Forgetting idle flow-control keys. Limits and throttles keep a little state per key, not
 * per run: a limit key's mark and last release (`keys.limitQueueMark`,
 * `keys.limitRelease`) and a throttle key's entries (`keys.throttleSlot`). With keys drawn
 * from params — one per customer, say — those add up over the years, and pruning runs
 * never touches them. {@linkcode pruneFlowKeys} deletes them once their key is idle:
 *
 * - A limit key (one with a last release: every key a run's end, or a step's end in a
 *   scope with marks, freed a slot of) with no slot held and no run queued loses its mark
 *   and its last release, in one commit checked against the mark as listed with the
 *   (empty) queue, before its slots were read. Every take of a scope with marks and every
 *   run joining a queue writes the mark, so one that came after those reads fails the
 *   check; one that came before shows in them. A claim that kept a view of the key checks
 *   the mark too: its view was read when the key held no more than now, so a mark it read
 *   as absent and finds absent again still tells the truth. A run whose hold was decided
 *   on a release read as absent may then see it absent again and wait until its backstop
 *   (10 s) instead of starting at once: late, never over the limit.
 * - A throttle entry that let its last start through more than {@linkcode FORGET_AFTER_MS}
 *   ago (a throttle's period is at most a day) goes, checked against its versionstamp: an
 *   absent entry lets a start through, as one that old does.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import { commitAtomic } from "../kv/commit.ts";
import { REMOTE_KV_COMMIT_CHECKS } from "../kv/limits.ts";
import type { Kv, KvEntry, KvKey } from "../kv/kv.ts";
import { listAfter } from "../kv/reads.ts";

/** How old a throttle entry must be to be forgotten: twice the longest period, ms. */
export const FORGET_AFTER_MS = 2 * 86_400_000;

/**
 * Throttle entries one commit deletes at most: each has its check, and a remote KV takes
 * 10 checks a commit.
 */
const THROTTLE_BATCH = REMOTE_KV_COMMIT_CHECKS;

/** What {@linkcode pruneFlowKeys} removed. */
export interface FlowPruneReport {
  /** Limit keys whose mark and last release went. */
  limitKeys: number;
  /** Throttle entries that went. */
  throttleEntries: number;
}

/**
 * Where a {@linkcode pruneFlowKeys} that stopped at its budget left off: the next one
 * goes on from there, and starts over once it reached the end.
 */
export interface FlowPruneCursor {
  /** The last limit key's release it looked at. */
  limit?: KvKey;
  /** The last throttle entry it looked at. */
  throttle?: KvKey;
}

/** What {@linkcode pruneFlowKeys} does. */
export interface FlowPruneOptions {
  /** Counts what would go, deletes nothing. */
  dryRun?: boolean;
  /**
   * Limit keys and throttle entries it looks at, of each (a worker's background prune looks
   * at a few at a time, going on where the last one stopped: see `cursor`). Default: all.
   */
  budget?: number;
  /** Where to go on from; moved to where it stopped. */
  cursor?: FlowPruneCursor;
}

/**
 * Deletes the state of idle limit keys and old throttle entries (see the module).
 *
 * @param kv the KV
 * @param now the store clock's now (a throttle entry is old by this and by the wall clock)
 * @param options dry or not, how much, from where
 * @returns what it removed, or would remove
 */
export async function pruneFlowKeys(
  kv: Kv,
  now: number,
  options: FlowPruneOptions = {},
): Promise<FlowPruneReport> {
  const report: FlowPruneReport = { limitKeys: 0, throttleEntries: 0 };
  const budget = options.budget ?? Infinity;
  const cursor = options.cursor ?? {};
  let looked = 0;
  cursor.limit = await listAfter(kv, keys.allLimitReleasePrefix(), cursor.limit, async (e) => {
    const scope = e.key[2], key = e.key[3];
    if (typeof scope === "string" && typeof key === "string") {
      if (await forgetLimitKey(kv, scope, key, options.dryRun ?? false)) report.limitKeys++;
    }
    return ++looked < budget;
  });
  const before = Math.min(now, Date.now()) - FORGET_AFTER_MS;
  let old: KvEntry<number>[] = [];
  const flush = async () => {
    if (old.length === 0) return;
    if (!options.dryRun) {
      const op = kv.atomic();
      for (const e of old) op.check(e).delete(e.key);
      // one of them used meanwhile: the others wait for the next prune
      if (!(await commitAtomic(op)).ok) old = [];
    }
    report.throttleEntries += old.length;
    old = [];
  };
  looked = 0;
  cursor.throttle = await listAfter(kv, keys.allThrottlePrefix(), cursor.throttle, async (e) => {
    if (typeof e.value === "number" && e.value < before) old.push(e as KvEntry<number>);
    if (old.length >= THROTTLE_BATCH) await flush();
    return ++looked < budget;
  });
  await flush();
  return report;
}

/** Deletes a limit key's mark and last release if it is idle; whether it did. */
async function forgetLimitKey(
  kv: Kv,
  scope: string,
  key: string,
  dryRun: boolean,
): Promise<boolean> {
  // the mark with the queue's head in one list: read before the slots
  let mark: KvEntry<unknown> | null = null;
  let queued = false;
  for await (
    const e of kv.list({ prefix: keys.limitQueuePrefix(scope, key) }, { limit: 2 })
  ) {
    if (keys.isLimitQueueMark(e.key)) mark = e;
    else queued = true;
  }
  if (queued) return false;
  for await (const _ of kv.list({ prefix: keys.slotPrefix(scope, key) }, { limit: 1 })) {
    return false;
  }
  if (dryRun) return true;
  const markKey = keys.limitQueueMark(scope, key);
  const op = kv.atomic()
    .check({ key: markKey, versionstamp: mark?.versionstamp ?? null })
    .delete(markKey)
    .delete(keys.limitRelease(scope, key));
  return (await commitAtomic(op)).ok;
}
