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
  const out = emptyCounts();
  for (const k of Object.keys(out) as (keyof KvCounts)[]) out[k] = b[k] - a[k];
  return out;
}

/**
 * Wraps a KV so every operation is counted.
 *
 * @param kv the database to wrap; it stays the caller's to close
 * @returns the wrapped database and its live counts
 */
export function countingKv(kv: Deno.Kv): { kv: Deno.Kv; counts: KvCounts } {
  const counts = emptyCounts();
  const wrapAtomic = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    // Counted once committed: an operation built and dropped (kvflow builds one to test
    // that a value serializes) writes nothing.
    const mine = { check: 0, set: 0, delete: 0, enqueue: 0 };
    const proxy: Deno.AtomicOperation = new Proxy(op, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          if (prop === "check") mine.check += args.length;
          else if (prop === "set") mine.set++;
          else if (prop === "delete") mine.delete++;
          else if (prop === "enqueue") mine.enqueue++;
          else if (prop === "commit") {
            counts.commit++;
            counts.check += mine.check;
            counts.set += mine.set;
            counts.delete += mine.delete;
            counts.enqueue += mine.enqueue;
            const t0 = performance.now();
            return (value.apply(target, args) as Promise<Deno.KvCommitResult | Deno.KvCommitError>)
              .then((result) => {
                counts.commitMs += performance.now() - t0;
                if (!result.ok) counts.commitFailed++;
                return result;
              });
          }
          const result = value.apply(target, args);
          return result === target ? proxy : result;
        };
      },
    });
    return proxy;
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
