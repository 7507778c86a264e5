/**
 * A remote KV, simulated over a local one, for the benchmarks and the remote-rules test:
 * KV Connect and Deno Deploy cannot be reached from here. The wrapper keeps the rules a
 * remote KV server has that local KV does not (at most 10 checks in one atomic commit; no
 * queues: `enqueue` and `listenQueue` throw; `watch` is kept, as the remote has it) and makes
 * every call that would cross the network take a round trip: `get`, `getMany`, each page of
 * a `list`, each `commit`. Half the round trip passes before the local call and half after,
 * so a commit lands in the middle of its round trip as it would on a server. It counts the
 * round trips by kind, and the commits that broke a rule.
 *
 * It wraps `Deno.Kv` itself, not any part of kvflow.
 *
 * @module
 */
import { REMOTE_KV_COMMIT_CHECKS } from "../lib/kv/limits.ts";
import { diffFields, watchAtomic } from "./kv_count.ts";

/** How the simulated remote behaves. */
export interface RemoteKvOptions {
  /** One round trip, ms (0: none, only counted). */
  rttMs: number;
  /**
   * Enforce the remote rules (checks per commit, no queues). False: a local KV with its
   * queues, only delayed and counted, to count what a step costs at home.
   */
  rules?: boolean;
}

/** Round trips a {@linkcode remoteKv} has made, by kind. */
export interface RemoteCounts {
  /** All of them. */
  trips: number;
  get: number;
  getMany: number;
  /** Pages read by `list` (one call reads one or more). */
  listPage: number;
  commit: number;
  /** Commits that returned `ok: false` (a check failed). */
  commitFailed: number;
  /** Enqueues outside a commit (only without the rules). */
  enqueue: number;
  /** The most checks seen in one commit. */
  maxChecks: number;
  /** Calls refused for a remote rule (too many checks, a queue). */
  refused: number;
}

/** Zeroed counts. */
export function emptyRemoteCounts(): RemoteCounts {
  return {
    trips: 0,
    get: 0,
    getMany: 0,
    listPage: 0,
    commit: 0,
    commitFailed: 0,
    enqueue: 0,
    maxChecks: 0,
    refused: 0,
  };
}

/** `b - a`, field by field (`maxChecks` is `b`'s). */
export function diffRemoteCounts(a: RemoteCounts, b: RemoteCounts): RemoteCounts {
  return { ...diffFields(a, b), maxChecks: b.maxChecks };
}

const pause = (ms: number) =>
  ms > 0 ? new Promise<void>((resolve) => setTimeout(resolve, ms)) : Promise.resolve();

/** The page size Deno KV's `list` reads with: `batchSize`, else `limit`, else 100; at most 500. */
function pageSize(options?: Deno.KvListOptions): number {
  return Math.min(500, Math.max(1, options?.batchSize ?? options?.limit ?? 100));
}

/**
 * Wraps a KV so it behaves like a remote KV server at `rttMs`.
 *
 * @param kv the local database; it stays the caller's to close
 * @returns the wrapped database and its live counts
 */
export function remoteKv(
  kv: Deno.Kv,
  options: RemoteKvOptions,
): { kv: Deno.Kv; counts: RemoteCounts; byKey: Map<string, number> } {
  const rules = options.rules ?? true;
  const half = options.rttMs / 2;
  const counts = emptyRemoteCounts();
  // round trips by kind and the second part of the keys they touch ("get run", "commit
  // lease,run"): where a benchmark's round trips go
  const byKey = new Map<string, number>();
  const trip = async <T>(
    kind: "get" | "getMany" | "listPage" | "commit",
    call: () => Promise<T>,
    what: string,
  ) => {
    counts.trips++;
    counts[kind]++;
    const label = `${kind} ${what}`;
    byKey.set(label, (byKey.get(label) ?? 0) + 1);
    await pause(half);
    const result = await call();
    await pause(half);
    return result;
  };
  const refused = (what: string): TypeError => {
    counts.refused++;
    return new TypeError(`remote KV: ${what}`);
  };
  const refuse = (what: string): never => {
    throw refused(what);
  };

  const part = (key: unknown) => String((key as Deno.KvKey)?.[1] ?? "");
  const parts = (keys: Iterable<unknown>) => [...new Set([...keys].map(part))].sort().join(",");

  const slowList = <T>(
    selector: Deno.KvListSelector,
    listOptions?: Deno.KvListOptions,
  ): Deno.KvListIterator<T> => {
    const inner = kv.list<T>(selector, listOptions);
    const page = pageSize(listOptions);
    let left = 0;
    const iterator = {
      get cursor() {
        return inner.cursor;
      },
      async next(): Promise<IteratorResult<Deno.KvEntry<T>, undefined>> {
        if (left === 0) {
          left = page;
          const prefix = "prefix" in selector ? selector.prefix : selector.start;
          return await trip("listPage", () => inner.next(), part(prefix)).finally(() => left--);
        }
        left--;
        return await inner.next();
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator as unknown as Deno.KvListIterator<T>;
  };

  const wrapAtomic = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    let checks = 0;
    const touched: unknown[] = [];
    return watchAtomic(op, (prop, args) => {
      if (prop === "check") {
        checks += args.length;
        for (const c of args) touched.push((c as Deno.AtomicCheck).key);
      } else if (prop === "set" || prop === "delete") touched.push(args[0]);
      else if (prop === "enqueue" && rules) refuse("no queues (atomic enqueue)");
    }, (commit) => {
      counts.maxChecks = Math.max(counts.maxChecks, checks);
      if (rules && checks > REMOTE_KV_COMMIT_CHECKS) {
        return Promise.reject(
          refused(`too many checks (${checks}, max ${REMOTE_KV_COMMIT_CHECKS})`),
        );
      }
      return trip("commit", commit, parts(touched)).catch((error) => {
        const label = `threw ${parts(touched)}`;
        byKey.set(label, (byKey.get(label) ?? 0) + 1);
        throw error;
      }).then((result) => {
        if (!result.ok) {
          counts.commitFailed++;
          const label = `failed ${parts(touched)}`;
          byKey.set(label, (byKey.get(label) ?? 0) + 1);
        }
        return result;
      });
    });
  };

  const wrapped = new Proxy(kv, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      switch (prop) {
        case "get":
          return (...args: unknown[]) =>
            trip("get", () => value.apply(target, args), part(args[0]));
        case "getMany":
          return (...args: unknown[]) =>
            trip("getMany", () => value.apply(target, args), parts(args[0] as unknown[]));
        case "list":
          return (selector: Deno.KvListSelector, o?: Deno.KvListOptions) => slowList(selector, o);
        case "atomic":
          return () => wrapAtomic(target.atomic());
        case "enqueue":
          return (...args: unknown[]) => {
            if (rules) return Promise.reject(refused("no queues (enqueue)"));
            counts.enqueue++;
            counts.trips++;
            return pause(options.rttMs).then(() => value.apply(target, args));
          };
        case "listenQueue":
          return (...args: unknown[]) => {
            if (rules) return Promise.reject(refused("no queues (listenQueue)"));
            return value.apply(target, args);
          };
        default:
          return value.bind(target);
      }
    },
  });
  return { kv: wrapped, counts, byKey };
}
