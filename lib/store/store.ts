/**
 * The store: reading runs, and the changes that people and workers make to them from
 * outside a running driver — create, claim, resume, rerun, cancel. {@linkcode Store} is
 * a thin front: reads are in `queries.ts`, changes in `commands.ts`,
 * `requeue.ts` and `cancel.ts`.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import type { AttemptRecord, Lease, RunRecord, TaskRecord } from "../model/records.ts";
import type { ArtifactMeta } from "../model/artifacts.ts";
import { GroupCommitter } from "../kv/commit.ts";
import {
  KV_COMMIT_CHECKS,
  KV_ENQUEUE_DELAY_MS,
  REMOTE_COMMITS_IN_FLIGHT,
  REMOTE_KV_COMMIT_CHECKS,
} from "../kv/limits.ts";
import { type Clock, systemClock } from "../model/clock.ts";
import * as queries from "./queries.ts";
import * as commands from "./commands.ts";
import { cancel } from "./cancel.ts";
import * as requeue from "./requeue.ts";
import type { Claim, CreateRunInput } from "./commands.ts";
import type { ListRunsOptions, RunPage } from "./queries.ts";
import { LimitViews } from "./limit_view.ts";
import type { AtomicOperation, Kv, KvEntry, KvEntryMaybe } from "../kv/kv.ts";

export type { Claim, CreateRunInput } from "./commands.ts";
export type { ListRunsOptions, RunPage } from "./queries.ts";

/**
 * A queue message that wakes runs: "look at this run", or, for the second and later runs
 * one commit makes due at once, "look at the head of the due-index" (one message for all
 * of them: a queue holding thousands of messages costs its process ms of CPU each).
 */
export type WakeMessage = RunWakeMessage | DueWakeMessage;

/** "Look at this run." */
export interface RunWakeMessage {
  /** Marks the message as kvflow's. */
  kvflow: "run";
  /** The run to look at. */
  runId: string;
  /**
   * When the look is meant for (wall time, ms: sent plus the delay). A worker that read
   * the run at or after it has looked already and drops the message without a read.
   */
  at?: number;
}

/** "Runs are due now: look at the head of the due-index." */
export interface DueWakeMessage {
  /** Marks the message as kvflow's. */
  kvflow: "due";
}

/** Options of a {@linkcode Store}. */
export interface StoreOptions {
  /** Whether this KV has queues (local file and memory do; Deploy and remote KV do not). */
  queues?: boolean;
  /** The clock that decides when work is due. Default: wall time. */
  clock?: Clock;
  /** Whether checkpoints and claims of different runs share KV commits. Default true. */
  groupCommit?: boolean;
}

/** Reads and changes runs in one KV database. */
export class Store {
  /** The KV database. */
  readonly kv: Kv;
  /** Whether `kv.enqueue` wake-ups are sent. */
  readonly queues: boolean;
  /** Shares one KV commit among checkpoints of different runs made at the same moment. */
  readonly committer: GroupCommitter;
  /** Commits claims (see `StoreParts.claims`). */
  readonly claims: GroupCommitter;
  /** The clock that decides when work is due. */
  readonly clock: Clock;
  /** What this process knows of its run limits' keys (`limit_view.ts`). */
  readonly limits: LimitViews = new LimitViews();
  /** See `StoreParts.schemaUnwritten` (`parts.ts`); the engine sets it after migrating. */
  schemaUnwritten = false;
  /** Runs each atomic operation wakes now, to send one message for all but the first. */
  readonly #wokenNow = new WeakMap<AtomicOperation, number>();

  /**
   * Creates it.
   *
   * @param kv an open KV database
   * @param options whether the KV has queues
   */
  constructor(kv: Kv, options: StoreOptions = {}) {
    this.kv = kv;
    this.queues = options.queues ?? true;
    this.clock = options.clock ?? systemClock;
    // without queues this is remote KV (Deploy, KV Connect), which allows fewer checks
    this.committer = new GroupCommitter(kv, {
      checks: this.queues ? KV_COMMIT_CHECKS : REMOTE_KV_COMMIT_CHECKS,
      inFlight: this.queues ? 1 : REMOTE_COMMITS_IN_FLIGHT,
      group: options.groupCommit ?? true,
    });
    this.claims = this.queues ? this.committer : new GroupCommitter(kv, { group: false });
  }

  /**
   * Creates a queued run with validated params and a due-index entry for now.
   *
   * @throws {UsageError} on params that fail the schema or a malformed date
   */
  async createRun(pipeline: Pipeline<unknown>, input: CreateRunInput = {}): Promise<RunRecord> {
    return await commands.createRun(this, pipeline, input);
  }

  /**
   * A new run record, queued and due now, with validated params.
   *
   * @throws {UsageError} on params that fail the schema or are too large to store, a
   * malformed date, or an id that is not a valid run id
   */
  newRun(pipeline: Pipeline<unknown>, input: CreateRunInput = {}): RunRecord {
    return commands.newRun(this, pipeline, input);
  }

  /**
   * Adds to `op` the creation of `run`: a check that its id is new, the record, its
   * indexes, its count by pipeline and status, its due-index entry and a queue message that
   * wakes it (at most 9 mutations).
   */
  addRunCreation(op: AtomicOperation, run: RunRecord): void {
    commands.addRunCreation(this, op, run);
  }

  /** A run, or null when there is none with that id. */
  async getRun(runId: string): Promise<RunRecord | null> {
    return await queries.getRun(this.kv, runId);
  }

  /**
   * A run that must exist.
   *
   * @throws {UsageError} when there is no such run
   */
  async requireRun(runId: string): Promise<RunRecord> {
    return await queries.requireRun(this.kv, runId);
  }

  /** The stored step records of a run, by step name. */
  async getSteps(runId: string): Promise<Map<string, TaskRecord>> {
    return await queries.getSteps(this.kv, runId);
  }

  /** The stored item records of a fan-out step, by index. */
  async getItems(runId: string, step: string): Promise<Map<number, TaskRecord>> {
    return await queries.getItems(this.kv, runId, step);
  }

  /** The stored attempts of a run, in step, item, attempt order. */
  async getAttempts(runId: string): Promise<AttemptRecord[]> {
    return await queries.getAttempts(this.kv, runId);
  }

  /** The output of a succeeded step (for fan-out steps, the list of item outputs). */
  async getOutput(runId: string, step: string): Promise<unknown> {
    return await queries.getOutput(this.kv, runId, step);
  }

  /** The artifacts a run has stored. */
  async getArtifacts(runId: string): Promise<ArtifactMeta[]> {
    return await queries.getArtifacts(this.kv, runId);
  }

  /**
   * An artifact's metadata and bytes.
   *
   * @throws {UsageError} when the run has no artifact of that name
   */
  async readArtifact(
    runId: string,
    name: string,
  ): Promise<{ meta: ArtifactMeta; bytes: Uint8Array }> {
    return await queries.readArtifact(this.kv, runId, name);
  }

  /**
   * Runs newest first, optionally of one pipeline and one status, a page at a time.
   *
   * @throws {UsageError} on a limit out of range or a bad cursor
   */
  async listRuns(options: ListRunsOptions = {}): Promise<RunPage> {
    return await queries.listRuns(this.kv, options);
  }

  /** How many runs of a pipeline are queued, running or waiting. */
  async countActive(pipeline: string): Promise<number> {
    return await queries.countActive(this.kv, pipeline);
  }

  /** The run an idempotency key created for a pipeline, or null when it created none. */
  async runForIdempotencyKey(pipeline: string, key: string): Promise<RunRecord | null> {
    return await queries.runForIdempotencyKey(this.kv, pipeline, key);
  }

  /** The lease of a run, with its versionstamp. */
  async getLease(runId: string): Promise<KvEntryMaybe<Lease>> {
    return await queries.getLease(this.kv, runId);
  }

  /**
   * Claims a run for a worker: succeeds when the run is active and unleased (or its lease
   * expired, or its holder is a dead process on this host) and, for a waiting run, its
   * retry is due. The commit writes the lease, a due-index entry at the lease deadline
   * (so a crash of this worker still leaves a wake-up), and the run as `running`.
   *
   * A paused run, or a new run of a paused pipeline, is recorded `paused` instead.
   *
   * @param pipeline the run's pipeline, when the caller knows it: its pause is then read
   * with the run, not after
   * @param seen the run record as a sweep read it: the claim commits against it first,
   * without a read
   * @returns the claim, or null when another worker has it or there is nothing to do
   */
  async claim(
    runId: string,
    holder: Omit<Lease, "deadline">,
    leaseMs: number,
    pipeline?: string,
    seen?: KvEntry<RunRecord>,
  ): Promise<Claim | null> {
    return await commands.claim(this, runId, holder, leaseMs, pipeline, seen);
  }

  /**
   * Reclaims the blobs of an ended run that nothing refers to: chunks a worker wrote but
   * never checkpointed (it was killed, lost its lease, or the disk filled up), or that a
   * rerun dropped. An ended run has no lease, so no worker can refer to them any more;
   * each commit checks that the run is still ended. An active run is left to its holder.
   *
   * @returns how many blobs it deleted
   */
  async reclaimBlobs(runId: string): Promise<number> {
    return await commands.reclaimRunBlobs(this, runId);
  }

  /**
   * Puts a failed or cancelled run back in the queue: failed and skipped steps return to
   * pending with their attempts reset, checkpointed outputs stay. An active run is left
   * as it is (a worker, or the caller, continues it).
   *
   * @throws {UsageError} on a succeeded run, or a changed graph without `force`
   */
  async resume(run: RunRecord, pipeline: Pipeline<unknown>, force = false): Promise<RunRecord> {
    return await requeue.resume(this, run, pipeline, force);
  }

  /**
   * Reruns a finished run from one step: that step and its dependents run again with new
   * idempotency keys; other checkpoints are reused.
   *
   * @throws {UsageError} on an active run, an unknown step or a changed graph without `force`
   */
  async rerun(
    run: RunRecord,
    pipeline: Pipeline<unknown>,
    from: string,
    force = false,
  ): Promise<RunRecord> {
    return await requeue.rerun(this, run, pipeline, from, force);
  }

  /**
   * Cancels an active run: takes its lease away (so its worker can write nothing more and
   * aborts its running steps), marks unfinished steps, and ends the run `cancelled`.
   *
   * @throws {UsageError} when the run already ended
   */
  async cancel(runId: string, reason = "Cancelled by request"): Promise<RunRecord> {
    return await cancel(this, runId, reason);
  }

  /**
   * Ids of runs whose due-index entry is at or before `now`, oldest first. An entry that
   * disagrees with its run record (no such run, or the run is due at another time or not
   * at all) is deleted instead of returned: left in place, every sweep would list it
   * again, and entries at the head of the index would hide the due work behind them.
   */
  async dueRuns(now: number, limit: number): Promise<string[]> {
    return await queries.dueRuns(this.kv, now, limit);
  }

  /**
   * {@linkcode Store.dueRuns} with the run records as read, of the runs `choose` picks
   * from those listed (default all).
   */
  async dueRunEntries(
    now: number,
    limit: number,
    choose?: (runIds: string[]) => string[],
  ): Promise<queries.DueRun[]> {
    return await queries.dueRunEntries(this.kv, now, limit, { choose });
  }

  /**
   * Runs whose lease is held by a process of this host that is gone (see
   * `isDeadLocalHolder`): a worker started after a crash takes them over at
   * once instead of waiting out their leases.
   */
  async orphanedRuns(holder: Omit<Lease, "deadline">, limit: number): Promise<string[]> {
    return await queries.orphanedRuns(this.kv, holder, limit);
  }

  /** The child runs a run's waiting steps and items wait for. */
  async waitingChildren(runId: string): Promise<string[]> {
    const children: string[] = [];
    for (const [name, record] of await this.getSteps(runId)) {
      if (record.status === "waiting" && record.wait?.child) children.push(record.wait.child);
      if (record.items !== undefined && record.status === "running") {
        for (const item of (await this.getItems(runId, name)).values()) {
          if (item.status === "waiting" && item.wait?.child) children.push(item.wait.child);
        }
      }
    }
    return children;
  }

  /** The earliest due-index entry's time, or null when nothing is due. */
  async nextDue(): Promise<number | null> {
    return await queries.nextDue(this.kv);
  }

  /** Adds to an atomic operation a queue message that wakes a run, where the KV has queues. */
  wake(op: AtomicOperation, runId: string, delayMs: number): void {
    if (!this.queues) return;
    const delay = Math.max(0, Math.min(delayMs, KV_ENQUEUE_DELAY_MS - 1));
    if (delay === 0) {
      const woken = (this.#wokenNow.get(op) ?? 0) + 1;
      this.#wokenNow.set(op, woken);
      if (woken === 2) op.enqueue({ kvflow: "due" } satisfies WakeMessage);
      if (woken >= 2) return;
    }
    op.enqueue({ kvflow: "run", runId, at: Date.now() + delay } satisfies WakeMessage, { delay });
  }
}
