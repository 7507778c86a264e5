/**
 * A run's checkpoint queue: the writes the driver made since the last commit, committed in
 * batches that keep within KV's limits, fenced by the run's lease. Results that arrive
 * while a commit is in flight share the next commit, and the start of the steps a result
 * makes ready joins that result's commit, so a sequential step costs one commit. Events
 * and after-commit callbacks run once the writes before them are durable.
 *
 * @module
 */
import type { ErrorInfo } from "../../model/errors.ts";
import { kvLimit } from "../../model/errors.ts";
import { addWrites, commitAtomic, type KvWrite } from "../../kv/commit.ts";
import * as keys from "../../kv/keys.ts";
import { keySize } from "../../kv/keys.ts";
import { BATCH_BYTES, BATCH_KEY_BYTES, BATCH_MUTATIONS } from "../../kv/limits.ts";
import type {
  AttemptRecord,
  Lease,
  RunRecord,
  StepStatus,
  TaskRecord,
} from "../../model/records.ts";
import type { Store } from "../../store/store.ts";
import type { StepNode } from "./graph.ts";
import type {
  AtomicOperation,
  KvCheck,
  KvCommitError,
  KvCommitResult,
  KvKey,
} from "../../kv/kv.ts";

/** A change the driver made durable, for progress lines and live views. */
export type RunEvent =
  | { type: "run"; run: RunRecord }
  | {
    type: "task";
    runId: string;
    step: string;
    /** Fan-out item index, or -1 for the step itself. */
    item: number;
    status: StepStatus;
    attempt: number;
    /** Items of a fan-out step, when known. */
    items?: number;
    durationMs?: number;
    nextAt?: number | null;
    error?: ErrorInfo | null;
    /** When the current or last attempt started (the stored record's value). */
    startedAt?: number | null;
    /** When the task reached this status (the stored record's value). */
    endedAt?: number | null;
  };

/** A pending write of the queue. */
export interface Write {
  key: KvKey;
  value: unknown;
  /** Estimated bytes it adds to a commit: its value, and its key twice (as KV counts). */
  size: number;
  keyBytes: number;
}

/** What the queue tells its driver, and asks it. */
export interface CheckpointHooks {
  /** Whether the driver still acts on the run: chunks are committed only then. */
  acting(): boolean;
  /** Whether it is handing the run back after a refusal: then a refusal is final. */
  refusing(): boolean;
  /** A commit's lease check failed: the run is no longer the driver's. */
  lost(): void;
  /** KV failed a commit: the driver must not go on without its writes. */
  failed(error: unknown): void;
  /** KV refused a commit for breaking one of its limits; resolves once handled. */
  refuse(limit: string, refused: Write[], uncommitted: Write[]): Promise<void>;
  /** Called with each event once the writes before it are durable. */
  onEvent?: (event: RunEvent) => void;
  /**
   * The run was paused: the pause marked the lease (a new versionstamp, same holder), so
   * the commit that found out retries with it. The driver must stop starting steps before
   * this returns, since the retried commit may hold start markers.
   */
  paused(): void;
}

/** Writes that go into a commit only if their checks pass there. */
interface Conditional {
  checks: readonly KvCheck[];
  writes: readonly KvWrite[];
  /** Told whether they were committed. */
  settle: (ok: boolean) => void;
}

/** The queue of one run's checkpoint writes. */
export class Checkpoints {
  readonly #store: Store;
  readonly #runId: string;
  readonly #hooks: CheckpointHooks;
  readonly #lease: KvKey;
  /** The lease's versionstamp that every commit checks. */
  #leaseVersion: string;
  /** Who holds the lease: a pause marks it and keeps the holder. */
  readonly #owner: string;
  /** Bytes of the run's largest index key, to count its run ops' keys. */
  readonly #indexKeyBytes: number;
  #writes = new Map<string, Write>();
  #runOps: ((op: AtomicOperation) => void)[] = [];
  #events: RunEvent[] = [];
  #afterCommit: (() => void)[] = [];
  #conditionals: Conditional[] = [];
  #committing: Promise<void> | null = null;
  #queued: Promise<void> | null = null;
  /**
   * Whether chunks were committed since the driver last reclaimed the run's pending
   * blobs: only then may the run end with pending blobs of its own.
   */
  wroteChunks = false;

  /**
   * Creates the queue of a claimed run.
   *
   * @param run the run, its lease's versionstamp and holder, and the store to commit to
   */
  constructor(
    run: { store: Store; record: RunRecord; leaseVersion: string; owner: string },
    hooks: CheckpointHooks,
  ) {
    this.#store = run.store;
    this.#runId = run.record.id;
    this.#leaseVersion = run.leaseVersion;
    this.#owner = run.owner;
    this.#lease = keys.lease(this.#runId);
    this.#hooks = hooks;
    this.#indexKeyBytes = keySize(
      keys.runsByPipelineStatus(run.record.pipeline, "cancelled", 0, this.#runId),
    );
  }

  /** Queues a write (`null` deletes), `size` bytes at least besides its key. */
  write(key: KvKey, value: unknown, size = 1024): void {
    this.writeKeyed(JSON.stringify(key), key, keySize(key), value, size);
  }

  /** `write` with the key's id in the queue (its JSON for any key) and size known. */
  writeKeyed(id: string, key: KvKey, keyBytes: number, value: unknown, size: number): void {
    this.#writes.set(id, { key, value, size: size + 2 * keyBytes, keyBytes });
  }

  /** Queues an attempt record, sized by its logs and error; `node` is its step's. */
  writeAttempt(attempt: AttemptRecord, node: StepNode | undefined): void {
    // Logs and stacks dominate an attempt's size; count them so a commit stays in limits.
    let size = 512 + 2 * (attempt.error?.stack?.length ?? 0) +
      2 * (attempt.error?.message.length ?? 0);
    for (const line of attempt.logs) {
      size += 64 + 2 * line.message.length + (line.fields ? 8192 : 0);
    }
    const key = keys.attempt(this.#runId, attempt.step, attempt.item, attempt.n);
    if (!node) return this.write(key, attempt, size);
    // Every attempt key goes through here: its id in the queue is the step key's (JSON, so
    // without a NUL character) and the item and attempt numbers after NULs, unlike any other.
    node.attemptKeyBytes ??= keySize(key); // numbers count the same whatever their value
    this.writeKeyed(
      `${node.keyId}\u0000${attempt.item}\u0000${attempt.n}`,
      key,
      node.attemptKeyBytes,
      attempt,
      size,
    );
  }

  /** Queues mutations of the run's indexes, due entry or lease, for the last batch. */
  runOp(apply: (op: AtomicOperation) => void): void {
    this.#runOps.push(apply);
  }

  /** Queues an event, told once the writes before it are durable. */
  emit(event: RunEvent): void {
    this.#events.push(event);
  }

  /** Tells listeners of an event now: what it tells of is durable already. */
  tell(event: RunEvent): void {
    this.#hooks.onEvent?.(event);
  }

  /** Calls `fn` once the writes before it are durable. */
  afterCommit(fn: () => void): void {
    this.#afterCommit.push(fn);
  }

  /**
   * Queues writes that go into the next commit only if `checks` pass there — a step's
   * start with the limit slot it takes, checked to be free. When a check fails and the
   * lease is still the driver's, the commit is made again without them.
   *
   * @returns whether they were committed (false: a check failed, or the run was lost)
   */
  conditional(
    checks: readonly KvCheck[],
    writes: readonly KvWrite[],
  ): Promise<boolean> {
    return new Promise((settle) => this.#conditionals.push({ checks, writes, settle }));
  }

  /** Drops everything queued: writes, run ops, events and callbacks. */
  discard(): void {
    this.#writes = new Map();
    this.#runOps = [];
    this.#events = [];
    this.#afterCommit = [];
    const conditionals = this.#conditionals;
    this.#conditionals = [];
    for (const c of conditionals) c.settle(false);
  }

  /** Commits every pending write; resolves when they (and any queued before) are durable. */
  flush(): Promise<void> {
    if (this.#committing) {
      // Every caller until the commit in flight ends shares the one commit after it, so a
      // busy fan-out does not pile up callers that each look again after every commit.
      if (!this.#queued) {
        const queued: Promise<void> = this.#committing
          .finally(() => {
            if (this.#queued === queued) this.#queued = null;
          })
          .then(() => this.flush());
        this.#queued = queued;
      }
      return this.#queued;
    }
    if (this.#writes.size === 0 && this.#runOps.length === 0 && this.#conditionals.length === 0) {
      this.#runAfterCommit();
      return Promise.resolve();
    }
    // `commit` clears `#committing` itself once its commits are durable (see there)
    const committing: Promise<void> = this.commit().then(
      () => {
        if (this.#committing === committing) this.#committing = null;
      },
      (error) => {
        // Its writes are gone from the queue: the driver must not go on without them.
        this.#hooks.failed(error);
        if (this.#committing === committing) this.#committing = null;
        throw error;
      },
    );
    this.#committing = committing;
    return committing;
  }

  /**
   * Commits chunks of a large output or an artifact, fenced by the lease like a
   * checkpoint, and in turn with the checkpoints so that the lease versionstamp it checks
   * is the current one: a worker that lost its lease writes no chunk either.
   */
  commitChunks(op: AtomicOperation): Promise<KvCommitResult | KvCommitError> {
    if (this.#committing) {
      return this.#committing.then(noop, noop).then(() => this.commitChunks(op));
    }
    const commit = (async (): Promise<KvCommitResult | KvCommitError> => {
      if (!this.#hooks.acting()) return { ok: false };
      this.wroteChunks = true;
      op.check({ key: this.#lease, versionstamp: this.#leaseVersion });
      try {
        const result = await commitAtomic(op);
        // a pause marked the lease: the caller builds the op again (see `writeBlob`)
        if (!result.ok && !(await this.#repin()) && this.#hooks.acting()) this.#hooks.lost();
        return result;
      } catch (error) {
        this.#hooks.failed(error);
        throw error;
      }
    })();
    this.#committing = commit.then(noop, noop).finally(() => (this.#committing = null));
    return commit;
  }

  /**
   * Commits `apply`'s mutations on their own, once everything queued is durable, fenced by
   * the lease like every checkpoint; for a change that checks more than the lease (a
   * wait's heads, the run's bell) and must not share a commit whose failure would mean
   * the run was lost.
   *
   * @param grouped when given, the commit may share a KV commit with other runs' (the
   * store's group committer, which commits each alone when a grouped commit fails): its
   * checks and mutations, within the committer's limits. The caller must make sure no two
   * such commits of this process in flight at once check the same key for absence (two
   * such checks would both pass in one grouped commit).
   * @returns `ok`; `conflict` when another of its checks failed and the lease is still
   * the driver's; or `lost` (the driver was told)
   */
  async commitFenced(
    apply: (op: AtomicOperation) => void,
    writesLease = false,
    grouped?: { checks: number; mutations: number },
  ): Promise<"ok" | "conflict" | "lost"> {
    await this.flush();
    while (this.#committing) await this.#committing.catch(noop);
    const commit = (async (): Promise<"ok" | "conflict" | "lost"> => {
      const fence = { key: this.#lease, versionstamp: this.#leaseVersion };
      let result: KvCommitResult | KvCommitError;
      try {
        if (grouped) {
          result = await this.#store.committer.commit({
            checks: grouped.checks + 1,
            mutations: grouped.mutations,
            bytes: 4096,
            apply: (op) => apply(op.check(fence)),
          });
        } else {
          const op = this.#store.kv.atomic().check(fence);
          apply(op);
          result = await commitAtomic(op);
        }
      } catch (error) {
        this.#hooks.failed(error);
        throw error;
      }
      if (result.ok) {
        if (writesLease) this.#leaseVersion = result.versionstamp;
        return "ok";
      }
      const lease = await this.#store.kv.get(this.#lease);
      if (lease.versionstamp === this.#leaseVersion || await this.#repin()) return "conflict";
      this.#hooks.lost();
      return "lost";
    })();
    const settled = commit.then(noop, noop);
    this.#committing = settled;
    settled.finally(() => {
      if (this.#committing === settled) this.#committing = null;
    });
    return await commit;
  }

  /** Commits what is queued now, in batches within KV's limits; see {@linkcode flush}. */
  async commit(): Promise<void> {
    // The run record goes last, into the commit that also moves its indexes, due entry and
    // lease (the run ops): a commit split by the limits never stores a run status without
    // them. Pending-blob markers go where a cut-short split cannot orphan a blob.
    const writes = Array.from(this.#writes.values());
    if (writes.some(needsOrder)) writes.sort((a, b) => commitOrder(a) - commitOrder(b));
    const runOps = this.#runOps;
    const events = this.#events;
    const after = this.#afterCommit;
    let conditionals = this.#conditionals;
    this.#conditionals = [];
    this.discard();
    let done = false;
    try {
      done = await this.#commitBatches(writes, runOps, conditionals, (left) => conditionals = left);
    } finally {
      // what a failure, a refusal or the lease's loss left unsettled was not committed
      if (!done) { for (const c of conditionals) c.settle(false); }
    }
    if (!done) return;
    // Durable, and nothing of this driver in flight: the writes of what the events and
    // the steps started below lead to (the next step's result) go into a new commit at
    // once, not after this promise settles.
    this.#committing = null;
    const onEvent = this.#hooks.onEvent;
    if (onEvent) { for (const e of events) onEvent(e); }
    for (const fn of after) fn();
    // the starts committed with these writes are told after what made them ready
    const committed = conditionals;
    conditionals = [];
    for (const c of committed) c.settle(true);
  }

  async #commitBatches(
    writes: Write[],
    runOps: ((op: AtomicOperation) => void)[],
    queued: Conditional[],
    left: (conditionals: Conditional[]) => void,
  ): Promise<boolean> {
    let conditionals = queued;
    const batches: Write[][] = [[]];
    let bytes = 0;
    let keyBytes = 0;
    for (const w of writes) {
      const batch = batches[batches.length - 1];
      if (
        batch.length >= BATCH_MUTATIONS ||
        (batch.length > 0 &&
          (bytes + w.size > BATCH_BYTES || keyBytes + w.keyBytes > BATCH_KEY_BYTES))
      ) {
        batches.push([w]);
        bytes = w.size;
        keyBytes = w.keyBytes;
      } else {
        batch.push(w);
        bytes += w.size;
        keyBytes += w.keyBytes;
      }
    }
    for (let i = 0, repinned = false; i < batches.length; i++) {
      const batch = batches[i];
      const last = i === batches.length - 1;
      const lease = { key: this.#lease, versionstamp: this.#leaseVersion };
      let leaseWritten = last && runOps.length > 0;
      let size = 0;
      let batchKeyBytes = 0;
      for (const w of batch) {
        size += w.size;
        batchKeyBytes += w.keyBytes;
        if (w.key[1] === "lease") leaseWritten = true;
      }
      let result: KvCommitResult | KvCommitError;
      try {
        const conds = last ? conditionals : [];
        result = await this.#store.committer.commit({
          checks: 1 + conds.reduce((n, c) => n + c.checks.length, 0),
          // run ops move indexes, due entry and counts (moveDue, moveStatus) or delete the
          // lease and enqueue: at most 14 mutations (an end frees its limit slot), on keys
          // no longer than an index key
          mutations: batch.length + (last ? runOps.length * 14 : 0) +
            conds.reduce((n, c) => n + c.writes.length, 0),
          bytes: size + (last ? runOps.length * 1024 : 0),
          keyBytes: batchKeyBytes + (last ? runOps.length * 14 * this.#indexKeyBytes : 0),
          apply: (op) => {
            op.check(lease);
            for (const w of batch) {
              if (w.value === null) op.delete(w.key);
              else op.set(w.key, w.value);
            }
            if (last) { for (const apply of runOps) apply(op); }
            // after the batch's writes: on a key they share, the last write wins
            for (const c of conds) {
              op.check(...c.checks);
              addWrites(op, c.writes);
            }
          },
        });
      } catch (error) {
        const limit = kvLimit(error);
        if (limit === undefined || this.#hooks.refusing()) throw error;
        await this.#hooks.refuse(limit, batch, batches.slice(i).flat());
        return false;
      }
      if (!result.ok && last && conditionals.length > 0) {
        // a conditional's check failed, or the lease did: the lease says which
        const lease = await this.#store.kv.get(this.#lease);
        if (lease.versionstamp === this.#leaseVersion) {
          for (const c of conditionals) c.settle(false);
          conditionals = [];
          left(conditionals);
          i--;
          continue;
        }
      }
      if (!result.ok) {
        // a pause marked the lease: the same batch again, checked against the marked one
        if (!repinned && await this.#repin()) {
          repinned = true;
          i--;
          continue;
        }
        this.#hooks.lost();
        return false;
      }
      if (leaseWritten) this.#leaseVersion = result.versionstamp;
    }
    return true;
  }

  /**
   * After a failed check of the lease: when the lease is still this holder's and a pause
   * marked it, adopts its versionstamp and tells the driver (a read only on that failure,
   * never per step).
   *
   * @returns whether the lease was adopted
   */
  async #repin(): Promise<boolean> {
    const entry = await this.#store.kv.get<Lease>(this.#lease);
    if (entry.value?.owner !== this.#owner || entry.value.paused !== true) return false;
    if (entry.versionstamp === this.#leaseVersion) return false;
    this.#leaseVersion = entry.versionstamp!;
    this.#hooks.paused();
    return true;
  }

  #runAfterCommit(): void {
    const events = this.#events;
    const after = this.#afterCommit;
    this.#events = [];
    this.#afterCommit = [];
    const onEvent = this.#hooks.onEvent;
    if (onEvent) { for (const e of events) onEvent(e); }
    for (const fn of after) fn();
  }
}

/** Bytes a task record may take: its error's message and stack dominate. */
export function taskBytes(record: TaskRecord, atLeast: number): number {
  const error = record.error;
  return Math.max(atLeast, 512 + 2 * ((error?.message.length ?? 0) + (error?.stack?.length ?? 0)));
}

/**
 * Where a write goes in a commit that the limits split into batches (committed in order,
 * up to the first one refused): a pending-blob marker set because a write drops a blob
 * goes before that write; a marker deleted because a write refers to its blob, after it;
 * the run record last. Cut short anywhere, the split leaves no blob both unreferenced
 * and unmarked.
 */
function commitOrder(w: Write): number {
  if (w.key[1] === "run") return 2;
  if (w.key[1] !== "blob_pending") return 0;
  return w.value === null ? 1 : -1;
}

/** Whether a write has a place of its own in a commit's order (see `commitOrder`). */
function needsOrder(w: Write): boolean {
  return commitOrder(w) !== 0;
}

function noop(): void {}
