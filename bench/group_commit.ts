/**
 * An EXPERIMENT, used by the benchmarks only: a `Deno.Kv` wrapper that groups concurrent
 * atomic commits of different callers into one KV commit ("group commit"), to measure
 * how much of kvflow's concurrent throughput is lost to one fsync per checkpoint.
 *
 * Each atomic operation keeps its own checks: a group is committed as one atomic
 * operation holding every member's checks and mutations, so each member is still
 * all-or-nothing and still fenced by its own checks. Members of a group touch disjoint
 * keys (no member checks or writes a key another member writes), so committing them
 * together equals committing them one after the other. When a group's commit fails
 * (a check of one member failed) or throws (a limit), every member is committed on its
 * own and gets its own result, exactly as without the wrapper. With nothing in flight, an
 * operation is committed on its own at once: a lone caller pays nothing.
 *
 * @module
 */

/** What the wrapper did. */
export interface GroupStats {
  /** Operations committed through the wrapper. */
  ops: number;
  /** KV commits made (groups, singles and fallbacks). */
  commits: number;
  /** Groups of more than one operation. */
  groups: number;
  /** Groups whose commit failed or threw, and were committed member by member. */
  fallbacks: number;
}

type Apply = (op: Deno.AtomicOperation) => void;

interface Pending {
  solo: Deno.AtomicOperation;
  applies: Apply[];
  checks: string[];
  writes: string[];
  mutations: number;
  resolve: (r: Deno.KvCommitResult | Deno.KvCommitError) => void;
  reject: (e: unknown) => void;
}

const MAX_GROUP_OPS = 64;
const MAX_GROUP_CHECKS = 100;
const MAX_GROUP_MUTATIONS = 500;

function keyId(key: Deno.KvKey): string {
  return key.map((p) => `${typeof p}:${String(p)}`).join("\u0000");
}

/**
 * Wraps a KV so that concurrent commits share KV commits.
 *
 * @param kv the database; it stays the caller's to close
 * @returns the wrapped database and its stats
 */
export function groupCommitKv(kv: Deno.Kv): { kv: Deno.Kv; stats: GroupStats } {
  const stats: GroupStats = { ops: 0, commits: 0, groups: 0, fallbacks: 0 };
  const queue: Pending[] = [];
  let inFlight = false;

  const commitOne = async (p: Pending) => {
    stats.commits++;
    try {
      p.resolve(await p.solo.commit());
    } catch (error) {
      p.reject(error);
    }
  };

  const commitGroup = async (group: Pending[]) => {
    if (group.length === 1) return await commitOne(group[0]);
    stats.groups++;
    stats.commits++;
    const op = kv.atomic();
    let result: Deno.KvCommitResult | Deno.KvCommitError | undefined;
    try {
      for (const p of group) for (const apply of p.applies) apply(op);
      result = await op.commit();
    } catch {
      result = undefined;
    }
    if (result?.ok) {
      for (const p of group) p.resolve(result);
      return;
    }
    stats.fallbacks++;
    await Promise.all(group.map(commitOne));
  };

  const take = (): Pending[] => {
    const group: Pending[] = [];
    const left: Pending[] = [];
    const written = new Set<string>();
    const touched = new Set<string>();
    const blocked = new Set<string>();
    let checks = 0;
    let mutations = 0;
    for (const p of queue) {
      const conflict = p.writes.some((k) => touched.has(k) || blocked.has(k)) ||
        p.checks.some((k) => written.has(k) || blocked.has(k));
      const fits = group.length === 0 ||
        (group.length < MAX_GROUP_OPS && checks + p.checks.length <= MAX_GROUP_CHECKS &&
          mutations + p.mutations <= MAX_GROUP_MUTATIONS);
      if (conflict || !fits) {
        left.push(p);
        for (const k of p.writes) blocked.add(k);
        for (const k of p.checks) blocked.add(k);
        continue;
      }
      group.push(p);
      checks += p.checks.length;
      mutations += p.mutations;
      for (const k of p.writes) {
        written.add(k);
        touched.add(k);
      }
      for (const k of p.checks) touched.add(k);
    }
    queue.length = 0;
    queue.push(...left);
    return group;
  };

  const pump = () => {
    if (inFlight || queue.length === 0) return;
    inFlight = true;
    commitGroup(take()).finally(() => {
      inFlight = false;
      pump();
    });
  };

  const atomic = (): Deno.AtomicOperation => {
    const solo = kv.atomic();
    const p = {
      solo,
      applies: [] as Apply[],
      checks: [] as string[],
      writes: [] as string[],
      mutations: 0,
    };
    const record = (apply: Apply, writes: Deno.KvKey[] = []) => {
      apply(solo); // throws now on an unserializable value, as KV does
      p.applies.push(apply);
      for (const k of writes) p.writes.push(keyId(k));
      p.mutations++;
    };
    const op: Deno.AtomicOperation = {
      check(...checks: Deno.AtomicCheck[]) {
        solo.check(...checks);
        p.applies.push((o) => o.check(...checks));
        for (const c of checks) p.checks.push(keyId(c.key));
        return op;
      },
      mutate(...ms: Deno.KvMutation[]) {
        record((o) => o.mutate(...ms), ms.map((m) => m.key));
        return op;
      },
      sum(key: Deno.KvKey, n: bigint) {
        record((o) => o.sum(key, n), [key]);
        return op;
      },
      min(key: Deno.KvKey, n: bigint) {
        record((o) => o.min(key, n), [key]);
        return op;
      },
      max(key: Deno.KvKey, n: bigint) {
        record((o) => o.max(key, n), [key]);
        return op;
      },
      set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }) {
        record((o) => o.set(key, value, options), [key]);
        return op;
      },
      delete(key: Deno.KvKey) {
        record((o) => o.delete(key), [key]);
        return op;
      },
      enqueue(value: unknown, options?: Parameters<Deno.AtomicOperation["enqueue"]>[1]) {
        record((o) => o.enqueue(value, options));
        return op;
      },
      commit() {
        stats.ops++;
        return new Promise((resolve, reject) => {
          queue.push({ ...p, resolve, reject });
          pump();
        });
      },
    } as Deno.AtomicOperation;
    return op;
  };

  const wrapped = new Proxy(kv, {
    get(target, prop) {
      if (prop === "atomic") return atomic;
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { kv: wrapped, stats };
}
