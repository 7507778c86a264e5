/**
 * Forgetting idle flow-control keys. Limits and throttles keep a little state per key, not
 * per run: a limit key's mark and last release (`keys.limitQueueMark`,
 * `keys.limitRelease`) and a throttle key's entries (`keys.throttleSlot`). With keys drawn
 * from params — one per customer, say — those add up over the years, and pruning runs
 * never touches them. {@linkcode pruneFlowKeys} deletes them once their key is idle:
 *
 * - A limit key with no slot held and no run queued loses its mark and its last release,
 *   in one commit checked against the mark as listed with the (empty) queue, before its
 *   slots were read. Every take of a scope with marks and every run joining a queue writes
 *   the mark, so one that came after those reads fails the check; one that came before
 *   shows in them. A claim that kept a view of the key checks the mark too: its view was
 *   read when the key held no more than now, so a mark it read as absent and finds absent
 *   again still tells the truth. A run whose hold was decided on a release read as absent
 *   may then see it absent again and wait until its backstop (10 s) instead of starting at
 *   once: late, never over the limit.
 * - A throttle entry that let its last start through more than {@linkcode FORGET_AFTER_MS}
 *   ago (a throttle's period is at most a day) goes, checked against its versionstamp: an
 *   absent entry lets a start through, as one that old does.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import { commitAtomic } from "../kv/commit.ts";
import type { Kv, KvEntry } from "../kv/kv.ts";

/** How old a throttle entry must be to be forgotten: twice the longest period, ms. */
export const FORGET_AFTER_MS = 2 * 86_400_000;

/** Throttle entries one commit deletes at most (each with its check). */
const THROTTLE_BATCH = 40;

/** What {@linkcode pruneFlowKeys} removed. */
export interface FlowPruneReport {
  /** Limit keys whose mark and last release went. */
  limitKeys: number;
  /** Throttle entries that went. */
  throttleEntries: number;
}

/**
 * Deletes the state of idle limit keys and old throttle entries (see the module).
 *
 * @param kv the KV
 * @param now the store clock's now (a throttle entry is old by this and by the wall clock)
 * @param options `dryRun`: counts, deletes nothing; `maxKeys`: stops after this many keys
 * @returns what it removed, or would remove
 */
export async function pruneFlowKeys(
  kv: Kv,
  now: number,
  options: { dryRun?: boolean; maxKeys?: number } = {},
): Promise<FlowPruneReport> {
  const report: FlowPruneReport = { limitKeys: 0, throttleEntries: 0 };
  const max = options.maxKeys ?? Infinity;
  for (const [scope, key] of await limitKeys(kv)) {
    if (report.limitKeys >= max) break;
    if (await forgetLimitKey(kv, scope, key, options.dryRun ?? false)) report.limitKeys++;
  }
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
  for await (const e of kv.list<number>({ prefix: keys.allThrottlePrefix() })) {
    if (report.throttleEntries + old.length >= max) break;
    if (typeof e.value === "number" && e.value < before) old.push(e);
    if (old.length >= THROTTLE_BATCH) await flush();
  }
  await flush();
  return report;
}

/**
 * Every (scope, key) with a last release: every key a run's end or a step's end in a scope
 * with marks freed a slot of. (A key's mark without a release — no slot of it ever freed
 * but by a heal or a cancel — stays; listing the marks would list every queued run too.)
 */
async function limitKeys(kv: Kv): Promise<[string, string][]> {
  const found: [string, string][] = [];
  for await (const e of kv.list({ prefix: keys.allLimitReleasePrefix() })) {
    const scope = e.key[2], key = e.key[3];
    if (typeof scope === "string" && typeof key === "string") found.push([scope, key]);
  }
  return found;
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
