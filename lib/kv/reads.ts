/**
 * Reading many keys at once within KV's limit on one `getMany`, and walking a prefix a
 * part at a time.
 *
 * @module
 */
import { KV_GET_MANY_KEYS } from "./limits.ts";
import type { Kv, KvEntry, KvEntryMaybe, KvKey } from "./kv.ts";

/**
 * The entries of any number of keys, in their order: one `getMany` per
 * {@linkcode KV_GET_MANY_KEYS} keys, the batches read in parallel. Each batch is a
 * consistent read; the whole is not one snapshot when there is more than one batch.
 */
export async function getAll<T>(kv: Kv, list: readonly KvKey[]): Promise<KvEntryMaybe<T>[]> {
  if (list.length <= KV_GET_MANY_KEYS) return await kv.getMany<T[]>(list);
  const batches: Promise<KvEntryMaybe<T>[]>[] = [];
  for (let i = 0; i < list.length; i += KV_GET_MANY_KEYS) {
    batches.push(kv.getMany<T[]>(list.slice(i, i + KV_GET_MANY_KEYS)));
  }
  return (await Promise.all(batches)).flat();
}

/**
 * Calls `each` on the entries under `prefix` after the key `from` (all, without it) until
 * it says to stop, for a walk done a part at a time (a background prune's). Returns the
 * key it stopped at, or undefined when it reached the end.
 */
export async function listAfter<T>(
  kv: Kv,
  prefix: KvKey,
  from: KvKey | undefined,
  each: (e: KvEntry<T>) => Promise<boolean>,
): Promise<KvKey | undefined> {
  for await (const e of kv.list<T>(from ? { prefix, start: from } : { prefix })) {
    // the start is where the last one stopped: it was looked at then
    if (from && sameKey(e.key, from)) continue;
    if (!(await each(e))) return e.key;
  }
  return undefined;
}

function sameKey(a: KvKey, b: KvKey): boolean {
  return a.length === b.length && a.every((part, i) => part === b[i]);
}
