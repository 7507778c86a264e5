/**
 * A counting wrapper around a `Deno.Kv`, for the benchmarks only: it counts the reads,
 * commits and mutations kvflow really makes, without changing what they do.
 *
 * @module
 */

/** What a {@linkcode countingKv} has seen so far. */
export interface KvCounts {
  /** `kv.get` calls. */
  get: number;
  /** `kv.getMany` calls. */
  getMany: number;
  /** `kv.list` calls (each may read several batches). */
  list: number;
  /** `kv.atomic()` calls, committed or not. */
  atomic: number;
  /** `commit()` calls. */
  commit: number;
  /** Commits that returned `ok: false`. */
  commitFailed: number;
  /** Checks in committed atomic operations (likewise sets, deletes, enqueues). */
  check: number;
  /** Sets. */
  set: number;
  /** Deletes. */
  delete: number;
  /** Enqueues, in committed atomic operations or on their own. */
  enqueue: number;
  /** Total ms spent awaiting commits (overlapping commits count each). */
  commitMs: number;
}

/** Zeroed counts. */
export function emptyCounts(): KvCounts {
  return {
    get: 0,
    getMany: 0,
    list: 0,
    atomic: 0,
    commit: 0,
    commitFailed: 0,
    check: 0,
    set: 0,
    delete: 0,
    enqueue: 0,
    commitMs: 0,
  };
}

/** `b - a`, field by field. */
export function diffCounts(a: KvCounts, b: KvCounts): KvCounts {
  return diffFields(a, b);
}

/** `b - a` for every numeric field of a counts record. */
export function diffFields<T extends { [K in keyof T]: number }>(a: T, b: T): T {
  const out = { ...b };
  for (const k of Object.keys(b) as (keyof T)[]) out[k] = (b[k] - a[k]) as T[keyof T];
  return out;
}

/** What one committed atomic operation held: the kind (second key part) of each check. */
export interface CommitShape {
  checkKinds: string[];
  sets: number;
  deletes: number;
}

/**
 * Wraps a KV so every operation is counted.
 *
 * @param kv the database to wrap; it stays the caller's to close
 * @param onCommit told of each commit's shape as it is made (committed or failed)
 * @returns the wrapped database and its live counts
 */
export function countingKv(
  kv: Deno.Kv,
  onCommit?: (shape: CommitShape) => void,
): { kv: Deno.Kv; counts: KvCounts } {
  const counts = emptyCounts();
  const wrapAtomic = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    // Counted once committed: an operation built and dropped (kvflow builds one to test
    // that a value serializes) writes nothing.
    const mine = { check: 0, set: 0, delete: 0, enqueue: 0 };
    const checkKinds: string[] = [];
    return watchAtomic(op, (prop, args) => {
      if (prop === "check") {
        mine.check += args.length;
        if (onCommit) {
          for (const c of args as Deno.AtomicCheck[]) checkKinds.push(String(c.key[1]));
        }
      } else if (prop === "set") mine.set++;
      else if (prop === "delete") mine.delete++;
      else if (prop === "enqueue") mine.enqueue++;
    }, (commit) => {
      counts.commit++;
      onCommit?.({ checkKinds, sets: mine.set, deletes: mine.delete });
      counts.check += mine.check;
      counts.set += mine.set;
      counts.delete += mine.delete;
      counts.enqueue += mine.enqueue;
      const t0 = performance.now();
      return commit().then((result) => {
        counts.commitMs += performance.now() - t0;
        if (!result.ok) counts.commitFailed++;
        return result;
      });
    });
  };
  const wrapped = new Proxy(kv, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        switch (prop) {
          case "get":
            counts.get++;
            break;
          case "getMany":
            counts.getMany++;
            break;
          case "list":
            counts.list++;
            break;
          case "enqueue":
            counts.enqueue++;
            break;
          case "atomic":
            counts.atomic++;
            return wrapAtomic(value.apply(target, args));
        }
        return value.apply(target, args);
      };
    },
  });
  return { kv: wrapped, counts };
}

/**
 * Wraps an atomic operation for a benchmark's KV wrapper: `onCall` sees every call but
 * `commit` (with its arguments) as it is made, and `commit` decides how the commit goes;
 * the chained calls return the wrapper, so the operation reads as before.
 *
 * @param op the operation to wrap
 * @param onCall told of each call but `commit`
 * @param commit given the real commit to run; returns its result (or a refusal)
 */
export function watchAtomic(
  op: Deno.AtomicOperation,
  onCall: (prop: string | symbol, args: unknown[]) => void,
  commit: (
    run: () => Promise<Deno.KvCommitResult | Deno.KvCommitError>,
  ) => Promise<Deno.KvCommitResult | Deno.KvCommitError>,
): Deno.AtomicOperation {
  const proxy: Deno.AtomicOperation = new Proxy(op, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if (prop === "commit") {
          return commit(() =>
            value.apply(target, args) as Promise<Deno.KvCommitResult | Deno.KvCommitError>
          );
        }
        onCall(prop, args);
        const result = value.apply(target, args);
        return result === target ? proxy : result;
      };
    },
  });
  return proxy;
}
