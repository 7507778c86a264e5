/**
 * Reading many keys at once within KV's limit on one `getMany`.
 *
 * @module
 */
import { KV_GET_MANY_KEYS } from "./limits.ts";
import type { Kv, KvEntryMaybe, KvKey } from "./kv.ts";

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
