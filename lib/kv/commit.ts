/**
 * Committing atomic operations when several KV handles share one SQLite file.
 *
 * @module
 */
import v8 from "node:v8";
import { kvUnavailable } from "../model/errors.ts";
import { keySize } from "./keys.ts";
import { BATCH_BYTES, BATCH_KEY_BYTES, BATCH_MUTATIONS, KV_COMMIT_CHECKS } from "./limits.ts";
import type { AtomicOperation, Kv, KvCheck, KvCommitError, KvCommitResult, KvKey } from "./kv.ts";

/** A key to set to a value, or to delete when the value is null. */
export type KvWrite = readonly [key: KvKey, value: unknown];

/**
 * Splits groups of writes (task records, markers) into batches that each fit one KV
 * commit, with room left for a few more mutations such as a run record (up to 64 KiB) and
 * its index moves: at most 900 writes, 60,000 bytes of keys and 600,000 bytes of keys and
 * values a batch. A group (writes that must land together) is never split; groups keep
 * their order.
 *
 * @param groups the writes, in groups
 * @returns the batches, at least one (empty when there is nothing to write)
 */
export function splitWrites(groups: Iterable<readonly KvWrite[]>): KvWrite[][] {
  const batches: KvWrite[][] = [[]];
  let keyBytes = 0;
  let bytes = 0;
  for (const group of groups) {
    let groupKeys = 0;
    let groupBytes = 0;
    for (const [key, value] of group) {
      const k = keySize(key);
      groupKeys += k;
      groupBytes += k + (value === null ? 0 : v8.serialize(value).byteLength);
    }
    const batch = batches[batches.length - 1];
    if (
      batch.length > 0 &&
      (batch.length + group.length > BATCH_MUTATIONS || keyBytes + groupKeys > BATCH_KEY_BYTES ||
        bytes + groupBytes > BATCH_BYTES)
    ) {
      batches.push([...group]);
      keyBytes = groupKeys;
      bytes = groupBytes;
    } else {
      batch.push(...group);
      keyBytes += groupKeys;
      bytes += groupBytes;
    }
  }
  return batches;
}

/** Adds writes to an atomic operation: a set, or a delete for a null value. */
export function addWrites(op: AtomicOperation, writes: readonly KvWrite[]): void {
  for (const [key, value] of writes) {
    if (value === null) op.delete(key);
    else op.set(key, value);
  }
}

/** How long {@linkcode commitAtomic} retries a commit while the database is locked. */
export const LOCKED_RETRY_MS = 5000;

/**
 * Commits an atomic operation, retrying while SQLite answers "database is locked". With
 * several KV handles on one file (several workers, or engines in one process), a commit
 * whose checks read a snapshot that another handle wrote to meanwhile throws that error
 * instead of committing or failing its checks. The write was rolled back, and each retry
 * is a new transaction that evaluates the checks afresh. Several busy processes can keep
 * the file locked for a few hundred ms in a row (seen: 330 ms with three writers and a
 * fourth SIGKILLed in a loop), so retries go on for up to {@linkcode LOCKED_RETRY_MS}.
 *
 * @throws {KvUnavailableError} when the disk is full, the database read-only or
 * unreachable: the commit wrote nothing, and retrying at once would not help
 * @throws whatever else the commit throws, once retrying does not help
 */
export async function commitAtomic(
  op: AtomicOperation,
): Promise<KvCommitResult | KvCommitError> {
  const deadline = Date.now() + LOCKED_RETRY_MS;
  for (let tries = 1;; tries++) {
    try {
      return await op.commit();
    } catch (error) {
      if (Date.now() >= deadline || !/database is locked/.test(String(error))) {
        throw kvUnavailable(error) ?? error;
      }
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 4 * Math.min(tries, 5)));
    }
  }
}

/** One caller's part of a group commit: its checks and mutations, and their size. */
export interface CommitBatch {
  /** Adds the batch's checks and mutations to `op`. */
  apply(op: AtomicOperation): void;
  /** Number of checks it adds. */
  checks: number;
  /** Number of mutations (and enqueues) it adds. */
  mutations: number;
  /** Estimated bytes of its keys and values. */
  bytes: number;
  /** Estimated bytes of the keys it sets (KV allows 80 KiB of them a commit). Default 0. */
  keyBytes?: number;
  /**
   * Checks that many batches make alike (a pipeline's pause absent, say), not in
   * `checks` nor added by `apply`: a grouped commit checks each distinct one (same key
   * and versionstamp) once, and counts it once against its limit. Read when the batch's
   * commit is put together (a getter may decide them then), and then not again.
   */
  shared?: readonly KvCheck[];
  /**
   * Called with the versionstamp of the commit that held the batch, when it succeeded,
   * before the committer puts its next commit together (and before the caller hears).
   */
  committed?(versionstamp: string): void;
}

/** Limits of one grouped commit. */
export interface GroupLimits {
  /** Checks per commit (local KV: 100; remote KV: 10). */
  checks: number;
  /** Mutations per commit (KV: 1,000). */
  mutations: number;
  /** Bytes per commit (KV: 800 KiB). */
  bytes: number;
  /** Bytes of keys set per commit (KV: 80 KiB). */
  keyBytes: number;
  /**
   * Whether batches share commits at all. `false` commits each batch at once on its own,
   * as if there were no committer (to measure what grouping buys). Default true.
   */
  group: boolean;
  /**
   * Grouped commits in flight at once. Local KV: 1 (a commit's time is its fsync, which KV
   * does not overlap). Remote KV: more, since a commit's time is mostly its round trip and
   * only 10 checks fit in one; groups in flight together hold disjoint batches as before.
   * Default 1.
   */
  inFlight: number;
}

interface Queued {
  batch: CommitBatch;
  resolve(result: KvCommitResult | KvCommitError): void;
  reject(error: unknown): void;
}

/**
 * Group commit: batches submitted while a commit is in flight share the next commit.
 * KV pays one fsync per commit and does not batch concurrent commits itself, so runs
 * that checkpoint at the same moment would otherwise queue for one fsync each.
 *
 * Each batch keeps its own checks, so it stays all-or-nothing and fenced. Callers must
 * only submit, at the same time, batches that touch disjoint keys (kvflow's checkpoints:
 * every key of a run's batch contains the run id, and one run's batches are serialized),
 * so one grouped commit equals the batches committed one after another. Sums on a shared
 * counter (runs by pipeline and status, lease takeovers) are the exception that keeps this
 * true: sums commute, and KV applies each of several on one key in a commit. When a grouped
 * commit fails a check or throws, every batch is committed on its own and gets its own
 * result. With nothing in flight a batch is committed at once: a lone caller waits for
 * nobody.
 */
export class GroupCommitter {
  readonly #kv: Kv;
  readonly #limits: GroupLimits;
  #queue: Queued[] = [];
  #inFlight = 0;
  /** What it did: batches in, KV commits made, grouped commits, and fallbacks. */
  readonly stats = { batches: 0, commits: 0, grouped: 0, fallbacks: 0 };

  /**
   * Creates a committer.
   *
   * @param kv the database
   * @param limits per-commit limits; defaults fit local KV
   */
  constructor(kv: Kv, limits: Partial<GroupLimits> = {}) {
    this.#kv = kv;
    this.#limits = {
      checks: KV_COMMIT_CHECKS,
      mutations: BATCH_MUTATIONS,
      bytes: BATCH_BYTES,
      keyBytes: BATCH_KEY_BYTES,
      group: true,
      inFlight: 1,
      ...limits,
    };
  }

  /** Commits a batch, alone or with others; resolves with its own result. */
  commit(batch: CommitBatch): Promise<KvCommitResult | KvCommitError> {
    this.stats.batches++;
    if (!this.#limits.group) {
      this.stats.commits++;
      return (async () => {
        const op = this.#kv.atomic();
        applyAlone(op, batch);
        return told(batch, await commitAtomic(op));
      })();
    }
    if (this.#inFlight < this.#limits.inFlight && this.#queue.length === 0) {
      // Alone: straight to KV, as without a committer; those that come meanwhile queue.
      this.#inFlight++;
      this.stats.commits++;
      let commit: Promise<KvCommitResult | KvCommitError>;
      try {
        const op = this.#kv.atomic();
        applyAlone(op, batch);
        commit = commitAtomic(op).then((result) => told(batch, result));
      } catch (error) {
        commit = Promise.reject(error);
      }
      commit.then(this.#next, this.#next);
      return commit;
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ batch, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight < this.#limits.inFlight && this.#queue.length > 0) {
      this.#inFlight++;
      this.#commitGroup(this.#take()).then(this.#next, this.#next);
    }
  }

  /** Runs once a commit ended: the batches queued meanwhile go next. */
  readonly #next = (): void => {
    this.#inFlight--;
    this.#pump();
  };

  #take(): Queued[] {
    if (this.#queue.length === 1) {
      // a lone batch (nothing else queued): no copy of the queue
      const group = this.#queue;
      this.#queue = [];
      return group;
    }
    const group = [this.#queue[0]];
    let { checks, mutations, bytes, keyBytes = 0 } = this.#queue[0].batch;
    const shared = new Set<string>();
    checks += addShared(shared, this.#queue[0].batch);
    let i = 1;
    for (; i < this.#queue.length; i++) {
      const b = this.#queue[i].batch;
      const added = newShared(shared, b);
      if (
        checks + b.checks + added.length > this.#limits.checks ||
        mutations + b.mutations > this.#limits.mutations ||
        bytes + b.bytes > this.#limits.bytes ||
        keyBytes + (b.keyBytes ?? 0) > this.#limits.keyBytes
      ) break;
      group.push(this.#queue[i]);
      for (const id of added) shared.add(id);
      checks += b.checks + added.length;
      mutations += b.mutations;
      bytes += b.bytes;
      keyBytes += b.keyBytes ?? 0;
    }
    this.#queue = this.#queue.slice(i);
    return group;
  }

  async #commitGroup(group: Queued[]): Promise<void> {
    // alone: committed at once, as it would be without a committer
    if (group.length === 1) return await this.#commitAlone(group[0]);
    this.stats.commits++;
    this.stats.grouped++;
    let result: KvCommitResult | KvCommitError | undefined;
    try {
      const op = this.#kv.atomic();
      const shared = new Set<string>();
      for (const q of group) {
        q.batch.apply(op);
        for (const check of q.batch.shared ?? []) {
          const id = checkId(check);
          if (id !== undefined && shared.has(id)) continue;
          if (id !== undefined) shared.add(id);
          op.check(check);
        }
      }
      result = await commitAtomic(op);
    } catch {
      result = undefined;
    }
    if (result?.ok) {
      for (const q of group) q.resolve(told(q.batch, result));
      return;
    }
    this.stats.fallbacks++;
    // Parts that follow the commits' versionstamps (`committed`) go one after another: a
    // part's shared checks are asked when it is committed, after the part before it told
    // what it wrote. The others go at once.
    const follow = group.filter((q) => q.batch.committed);
    await Promise.all([
      ...group.filter((q) => !q.batch.committed).map((q) => this.#commitAlone(q)),
      (async () => {
        for (const q of follow) await this.#commitAlone(q);
      })(),
    ]);
  }

  /** Commits one batch on its own and settles its caller with the outcome. */
  async #commitAlone(q: Queued): Promise<void> {
    this.stats.commits++;
    try {
      const op = this.#kv.atomic();
      applyAlone(op, q.batch);
      q.resolve(told(q.batch, await commitAtomic(op)));
    } catch (error) {
      q.reject(error);
    }
  }
}

/** Tells a batch its commit succeeded (`CommitBatch.committed`); returns the result. */
function told(
  batch: CommitBatch,
  result: KvCommitResult | KvCommitError,
): KvCommitResult | KvCommitError {
  if (result.ok) batch.committed?.(result.versionstamp);
  return result;
}

/** Adds a batch's checks alike to `op` with its own: it is committed alone. */
function applyAlone(op: AtomicOperation, batch: CommitBatch): void {
  batch.apply(op);
  if (batch.shared && batch.shared.length > 0) op.check(...batch.shared);
}

/**
 * A check's identity (its key and versionstamp) for sharing it, or undefined when its key
 * has parts other than strings and numbers (then it is never shared).
 */
function checkId(check: KvCheck): string | undefined {
  for (const part of check.key) {
    if (typeof part !== "string" && typeof part !== "number") return undefined;
  }
  return JSON.stringify([check.key, check.versionstamp]);
}

/** The ids of a batch's shared checks not in `seen` yet (each once; unshareable ones too). */
function newShared(seen: ReadonlySet<string>, batch: CommitBatch): string[] {
  const out: string[] = [];
  const mine = new Set<string>();
  for (const check of batch.shared ?? []) {
    // an unshareable check counts on its own: an id no other check has
    const id = checkId(check) ?? `\u0000${seen.size + out.length}`;
    if (seen.has(id) || mine.has(id)) continue;
    mine.add(id);
    out.push(id);
  }
  return out;
}

/** Adds a batch's shared checks to `seen`; returns how many were new. */
function addShared(seen: Set<string>, batch: CommitBatch): number {
  const added = newShared(seen, batch);
  for (const id of added) seen.add(id);
  return added.length;
}
