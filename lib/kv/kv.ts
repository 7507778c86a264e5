/**
 * The KV database as the rest of kvflow sees it: the types of Deno KV's API, named once.
 * Everything outside `kv/` and `platform/` writes `Kv`, `KvKey` and `AtomicOperation`,
 * never `Deno.*`, so the engine reads as plain TypeScript over this interface.
 *
 * This is a seam: a Node.js port of kvflow would point these names at the npm package
 * `@deno/kv`, whose `Kv` has the same methods, and open it in `open.ts`.
 *
 * @module
 */

/** An open KV database. */
export type Kv = Deno.Kv;
/** A key: a list of strings, numbers, booleans, bigints and byte arrays. */
export type KvKey = Deno.KvKey;
/** An entry read from KV. */
export type KvEntry<T> = Deno.KvEntry<T>;
/** An entry read from KV, or its absence (value and versionstamp null). */
export type KvEntryMaybe<T> = Deno.KvEntryMaybe<T>;
/** A set of checks and mutations committed together, all or nothing. */
export type AtomicOperation = Deno.AtomicOperation;
/** A check of an atomic operation: the key's versionstamp must be this (null: absent). */
export type KvCheck = Deno.AtomicCheck;
/** What a commit that passed its checks returns. */
export type KvCommitResult = Deno.KvCommitResult;
/** What a commit whose checks failed returns. */
export type KvCommitError = Deno.KvCommitError;
/** The iterator `list` returns. */
export type KvListIterator<T> = Deno.KvListIterator<T>;
/** A 64-bit unsigned counter that `sum` adds to atomically. */
export type KvU64 = Deno.KvU64;
