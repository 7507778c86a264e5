/**
 * The store: reading runs, and the changes that people and workers make to them from
 * outside a running driver — create, claim, resume, rerun, cancel. Each change is one
 * atomic commit that also moves the run's indexes and its due-index entry.
 *
 * @module
 */
import type { Pipeline, Trigger } from "../define/definition.ts";
import { UsageError } from "../model/errors.ts";
import v8 from "node:v8";
import * as keys from "../kv/keys.ts";
import { MAX_RUN_RECORD_BYTES } from "../kv/limits.ts";
import {
  type AttemptRecord,
  cancelTask,
  type Lease,
  planRerun,
  planResume,
  recordedGraph,
  resetTask,
  type RunRecord,
  type RunStatus,
  type StepReset,
  type TaskRecord,
  TERMINAL,
} from "../model/run_state.ts";
import { decodeValue, type PendingBlob, readBlob, reclaimBlobs } from "../kv/values.ts";
import {
  addWrites,
  commitAtomic,
  GroupCommitter,
  type KvWrite,
  splitWrites,
} from "../kv/commit.ts";
import { type Clock, systemClock } from "../engine/clock.ts";
import type { ArtifactMeta } from "../model/artifacts.ts";

/** A queue message: a hint to look at a run. */
export interface RunHint {
  /** Marks the message as kvflow's. */
  kvflow: "run";
  /** The run to look at. */
  runId: string;
}

/** What {@linkcode Store.createRun} needs. */
export interface CreateRunInput {
  /** Params, validated against the pipeline's schema. */
  params?: unknown;
  /** `YYYY-MM-DD`; default today (UTC). */
  logicalDate?: string;
  /** How it was started. Default `cli`. */
  trigger?: Trigger;
  /** A fixed id, e.g. derived from a schedule tick; creation fails if it exists. */
  id?: string;
  /** The module the pipeline came from, when it is not in the registry. */
  module?: string;
  /**
   * A client's `Idempotency-Key`: stored with the run in the same commit, so a second
   * create with the same key (per pipeline) fails with `conflict`; find the first run
   * with {@linkcode Store.runForIdempotencyKey}.
   */
  idempotencyKey?: string;
  /** The schedule tick the run belongs to, ms since the epoch. */
  tick?: number;
}

/** Filters of {@linkcode Store.listRuns}. */
export interface ListRunsOptions {
  /** Only this pipeline's runs. */
  pipeline?: string;
  /** Only runs with this status. */
  status?: RunStatus;
  /** Page size, 1 to 1000. Default 20. */
  limit?: number;
  /** Where the previous page ended. */
  cursor?: string;
}

/** A page of runs, newest first. */
export interface RunPage {
  /** The runs. */
  runs: RunRecord[];
  /** Pass back to get the next page; absent on the last page. */
  cursor?: string;
}

/** A claimed run: the records a driver starts from. */
export interface Claim {
  /** The run, as the claim wrote it. */
  run: RunRecord;
  /** The lease the claim wrote. */
  lease: Lease;
  /** Versionstamp of the lease entry: every checkpoint checks it. */
  leaseVersion: string;
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
  readonly kv: Deno.Kv;
  /** Whether `kv.enqueue` hints are sent. */
  readonly queues: boolean;
  /** Shares one KV commit among checkpoints of different runs made at the same moment. */
  readonly committer: GroupCommitter;
  /** The clock that decides when work is due. */
  readonly clock: Clock;

  /**
   * Creates it.
   *
   * @param kv an open KV database
   * @param options whether the KV has queues
   */
  constructor(kv: Deno.Kv, options: StoreOptions = {}) {
    this.kv = kv;
    this.queues = options.queues ?? true;
    this.clock = options.clock ?? systemClock;
    // remote KV allows 10 checks per commit; local files and memory allow 100
    this.committer = new GroupCommitter(kv, {
      checks: this.queues ? 100 : 10,
      group: options.groupCommit ?? true,
    });
  }

  /**
   * Creates a queued run with validated params and a due-index entry for now.
   *
   * @throws {UsageError} on params that fail the schema or a malformed date
   */
  async createRun(pipeline: Pipeline<unknown>, input: CreateRunInput = {}): Promise<RunRecord> {
    const run = this.newRun(pipeline, input);
    if (input.idempotencyKey !== undefined) checkIdempotencyKey(input.idempotencyKey);
    const op = this.kv.atomic();
    this.addRunCreation(op, run);
    if (input.idempotencyKey !== undefined) {
      const key = keys.idempotency(run.pipeline, input.idempotencyKey);
      op.check({ key, versionstamp: null }).set(key, run.id);
    }
    const result = await commitAtomic(op).catch((error) => {
      // KV refuses a value over 64 KiB; of the run record, params are what a user sent.
      if (!/too large/i.test(String(error))) throw error;
      throw new UsageError(
        `Invalid params for '${pipeline.name}': too large to store with the run (${
          error instanceof Error ? error.message : String(error)
        })`,
        "invalid_params",
      );
    });
    if (!result.ok) {
      throw new UsageError(
        input.idempotencyKey === undefined
          ? `Run ${run.id} already exists`
          : `Run ${run.id} or idempotency key already exists`,
        "conflict",
      );
    }
    return run;
  }

  /**
   * A new run record, queued and due now, with validated params.
   *
   * @throws {UsageError} on params that fail the schema or are too large to store, a
   * malformed date, or an id that is not a valid run id
   */
  newRun(pipeline: Pipeline<unknown>, input: CreateRunInput = {}): RunRecord {
    if (input.id !== undefined && !isRunId(input.id)) {
      throw new UsageError(
        `Invalid run id ${quoteClipped(input.id)}: use 1 to ${MAX_RUN_ID_LENGTH} letters, ` +
          `digits, '_', '.', ':' or '-', starting with a letter or digit`,
      );
    }
    const params = validateParams(pipeline, input.params ?? {});
    const now = this.clock.now();
    const logicalDate = input.logicalDate ?? new Date(now).toISOString().slice(0, 10);
    checkDate(logicalDate);
    const run: RunRecord = {
      id: input.id ?? newRunId(now),
      pipeline: pipeline.name,
      version: pipeline.version,
      graph: recordedGraph(pipeline),
      params,
      logicalDate,
      tick: input.tick ?? null,
      trigger: input.trigger ?? "cli",
      ...(input.module ? { module: input.module } : {}),
      status: "queued",
      createdAt: now,
      startedAt: null,
      endedAt: null,
      dueAt: now,
      error: null,
      failures: 0,
      takeovers: 0,
    };
    // Refused here, not by KV in the middle of the run: the record grows later (an error
    // message of up to 4,000 characters), and every change rewrites it whole.
    const size = v8.serialize(run).byteLength;
    if (size > MAX_RUN_RECORD_BYTES) {
      throw new UsageError(
        `Invalid params for '${pipeline.name}': too large to store with the run (the run ` +
          `record would take ${size} bytes, at most ${MAX_RUN_RECORD_BYTES}; pass large ` +
          `inputs by reference, such as a URL or a file name)`,
        "invalid_params",
      );
    }
    return run;
  }

  /**
   * Adds to `op` the creation of `run`: a check that its id is new, the record, its
   * indexes, its count by pipeline and status, its due-index entry and a queue hint (at
   * most 9 mutations).
   */
  addRunCreation(op: Deno.AtomicOperation, run: RunRecord): void {
    const at = run.createdAt;
    op.check({ key: keys.run(run.id), versionstamp: null })
      .set(keys.run(run.id), run)
      .set(keys.runsByTime(at, run.id), run.pipeline)
      .set(keys.runsByPipeline(run.pipeline, at, run.id), run.status)
      .set(keys.runsByStatus(run.status, at, run.id), run.pipeline)
      .set(keys.runsByPipelineStatus(run.pipeline, run.status, at, run.id), COUNTED)
      .sum(keys.runCount(run.pipeline, run.status), 1n);
    // a run imported as already ended (a history) is not active
    if (!TERMINAL.has(run.status)) op.set(keys.activeRun(run.pipeline, run.id), at);
    if (run.dueAt !== null) op.set(keys.due(run.dueAt, run.id), run.id);
    this.hint(op, run.id, 0);
  }

  /** How many runs of a pipeline are queued, running or waiting. */
  async countActive(pipeline: string): Promise<number> {
    let count = 0;
    for await (const _ of this.kv.list({ prefix: keys.activeRunPrefix(pipeline) })) count++;
    return count;
  }

  /** The run an idempotency key created for a pipeline, or null when it created none. */
  async runForIdempotencyKey(pipeline: string, key: string): Promise<RunRecord | null> {
    const runId = (await this.kv.get<string>(keys.idempotency(pipeline, key))).value;
    return runId === null ? null : await this.getRun(runId);
  }

  /** A run, or null when there is none with that id. */
  async getRun(runId: string): Promise<RunRecord | null> {
    if (!isRunId(runId)) return null;
    return (await this.kv.get<RunRecord>(keys.run(runId))).value;
  }

  /**
   * A run that must exist.
   *
   * @throws {UsageError} when there is no such run
   */
  async requireRun(runId: string): Promise<RunRecord> {
    const run = await this.getRun(runId);
    if (!run) throw unknownRun(runId);
    return run;
  }

  /** The stored step records of a run, by step name. */
  async getSteps(runId: string): Promise<Map<string, TaskRecord>> {
    const steps = new Map<string, TaskRecord>();
    for await (const e of this.kv.list<TaskRecord>({ prefix: keys.stepPrefix(runId) })) {
      steps.set(e.key[e.key.length - 1] as string, e.value);
    }
    return steps;
  }

  /** The stored item records of a fan-out step, by index. */
  async getItems(runId: string, step: string): Promise<Map<number, TaskRecord>> {
    const items = new Map<number, TaskRecord>();
    for await (const e of this.kv.list<TaskRecord>({ prefix: keys.itemPrefix(runId, step) })) {
      items.set(e.key[e.key.length - 1] as number, e.value);
    }
    return items;
  }

  /** The stored attempts of a run, in step, item, attempt order. */
  async getAttempts(runId: string): Promise<AttemptRecord[]> {
    const attempts: AttemptRecord[] = [];
    for await (const e of this.kv.list<AttemptRecord>({ prefix: keys.attemptPrefix(runId) })) {
      attempts.push(e.value);
    }
    return attempts;
  }

  /** The output of a succeeded step (for fan-out steps, the list of item outputs). */
  async getOutput(runId: string, step: string): Promise<unknown> {
    const record = (await this.kv.get<TaskRecord>(keys.step(runId, step))).value;
    if (!record || record.status !== "succeeded") {
      throw new UsageError(`Step '${step}' of run ${runId} has no output yet`, "not_found");
    }
    if (record.output) return await decodeValue(this.kv, runId, record.output);
    const items = await this.getItems(runId, step);
    const out: unknown[] = [];
    for (let i = 0; i < (record.items ?? 0); i++) {
      const item = items.get(i);
      out.push(item?.output ? await decodeValue(this.kv, runId, item.output) : undefined);
    }
    return out;
  }

  /** The artifacts a run has stored. */
  async getArtifacts(runId: string): Promise<ArtifactMeta[]> {
    const out: ArtifactMeta[] = [];
    for await (const e of this.kv.list<ArtifactMeta>({ prefix: keys.artifactPrefix(runId) })) {
      out.push(e.value);
    }
    return out;
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
    const meta = (await this.kv.get<ArtifactMeta>(keys.artifact(runId, name))).value;
    if (!meta) throw new UsageError(`Run ${runId} has no artifact '${name}'`, "not_found");
    return { meta, bytes: await readBlob(this.kv, runId, meta.blob) };
  }

  /**
   * Runs newest first, optionally of one pipeline and one status, a page at a time.
   *
   * @throws {UsageError} on a limit out of range or a bad cursor
   */
  async listRuns(options: ListRunsOptions = {}): Promise<RunPage> {
    const limit = options.limit ?? 20;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
      throw new UsageError(`Invalid limit ${limit}: use an integer from 1 to 1000`);
    }
    // KV cursors are base64; anything else (a non-Latin-1 string) makes KV throw a TypeError.
    if (options.cursor !== undefined && !/^[A-Za-z0-9_=+/-]{1,2048}$/.test(options.cursor)) {
      throw new UsageError(`Invalid cursor: ${JSON.stringify(options.cursor.slice(0, 80))}`);
    }
    // Each filter has its own index, so a page reads `limit` entries however many runs
    // the other filters leave out.
    const prefix = options.status && options.pipeline
      ? keys.runsByPipelineStatusPrefix(options.pipeline, options.status)
      : options.status
      ? keys.runsByStatusPrefix(options.status)
      : options.pipeline
      ? keys.runsByPipelinePrefix(options.pipeline)
      : keys.runsByTimePrefix();
    const runs: RunRecord[] = [];
    let iter: Deno.KvListIterator<unknown>;
    try {
      iter = this.kv.list({ prefix }, {
        reverse: true,
        cursor: options.cursor,
        limit,
        batchSize: Math.min(limit, 500),
      });
      const ids: string[] = [];
      for await (const e of iter) {
        ids.push(e.key[e.key.length - 1] as string);
        if (ids.length === limit) break;
      }
      for (let i = 0; i < ids.length; i += 10) {
        const entries = await this.kv.getMany<RunRecord[]>(
          ids.slice(i, i + 10).map((id) => keys.run(id)),
        );
        for (const e of entries) if (e.value) runs.push(e.value);
      }
      const cursor = ids.length === limit ? iter.cursor : "";
      return cursor ? { runs, cursor } : { runs };
    } catch (error) {
      if (options.cursor && error instanceof Error && /cursor/i.test(error.message)) {
        throw new UsageError(`Invalid cursor: ${JSON.stringify(options.cursor)}`);
      }
      throw error;
    }
  }

  /** The lease of a run, with its versionstamp. */
  async getLease(runId: string): Promise<Deno.KvEntryMaybe<Lease>> {
    return await this.kv.get<Lease>(keys.lease(runId));
  }

  /**
   * Claims a run for a worker: succeeds when the run is active and unleased (or its lease
   * expired, or its holder is a dead process on this host) and, for a waiting run, its
   * retry is due. The commit writes the lease, a due-index entry at the lease deadline
   * (so a crash of this worker still leaves a wake-up), and the run as `running`.
   *
   * @returns the claim, or null when another worker has it or there is nothing to do
   */
  async claim(
    runId: string,
    holder: Omit<Lease, "deadline">,
    leaseMs: number,
  ): Promise<Claim | null> {
    const [runEntry, leaseEntry] = await this.kv.getMany<[RunRecord, Lease]>([
      keys.run(runId),
      keys.lease(runId),
    ]);
    const run = runEntry.value;
    if (!run) return null;
    const now = this.clock.now();
    if (TERMINAL.has(run.status)) {
      if (run.dueAt !== null) await this.#dropStaleDue(runEntry as Deno.KvEntry<RunRecord>);
      return null;
    }
    const held = leaseEntry.value;
    const takeover = held !== null;
    if (held && held.deadline > now && !isDeadLocalHolder(held, holder)) return null;
    if (run.status === "waiting" && run.dueAt !== null && run.dueAt > now) return null;
    const lease: Lease = { ...holder, deadline: now + leaseMs };
    const claimed: RunRecord = {
      ...run,
      status: "running",
      startedAt: run.startedAt ?? now,
      dueAt: lease.deadline,
      takeovers: run.takeovers + (takeover ? 1 : 0),
    };
    // Claims of different runs touch disjoint keys: they may share a commit.
    const result = await this.committer.commit({
      checks: 2,
      mutations: 14,
      bytes: 2048 + 2 * JSON.stringify(claimed.graph ?? {}).length,
      apply: (op) => {
        op.check(runEntry, leaseEntry)
          .set(keys.lease(runId), lease)
          .set(keys.run(runId), claimed);
        // A cross-process total for the metrics endpoint.
        if (takeover) op.sum(keys.counter("lease_takeovers"), 1n);
        moveDue(op, run, claimed);
        moveStatus(op, run, claimed);
      },
    });
    if (!result.ok) return null;
    // A run claimed before may hold blobs that an earlier holder wrote and never
    // checkpointed: the new lease fences that holder out, so this claim may reclaim them.
    if (run.startedAt !== null) {
      const fence = { key: keys.lease(runId), versionstamp: result.versionstamp };
      // Best effort: what a full disk leaves now, the next claim or the run's end reclaims.
      await reclaimBlobs(this.kv, runId, (op) => commitAtomic(op.check(fence))).catch(() => {});
    }
    return { run: claimed, lease, leaseVersion: result.versionstamp };
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
    // Most runs have no pending blob: one read of an empty range, then done.
    const pending = this.kv.list({ prefix: keys.blobPendingPrefix(runId) }, { limit: 1 });
    if ((await pending.next()).done) return 0;
    const entry = await this.kv.get<RunRecord>(keys.run(runId));
    if (!entry.value || !TERMINAL.has(entry.value.status)) return 0;
    return await reclaimBlobs(this.kv, runId, (op) => commitAtomic(op.check(entry)));
  }

  /**
   * Puts a failed or cancelled run back in the queue: failed and skipped steps return to
   * pending with their attempts reset, checkpointed outputs stay. An active run is left
   * as it is (a worker, or the caller, continues it).
   *
   * @throws {UsageError} on a succeeded run, or a changed graph without `force`
   */
  async resume(run: RunRecord, pipeline: Pipeline<unknown>, force = false): Promise<RunRecord> {
    if (!TERMINAL.has(run.status)) return run;
    const steps = await this.getSteps(run.id);
    return await this.#requeue(run, pipeline, planResume(run, pipeline, steps, force), steps);
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
    const steps = await this.getSteps(run.id);
    return await this.#requeue(
      run,
      pipeline,
      planRerun(run, pipeline, steps, from, force),
      steps,
    );
  }

  async #requeue(
    run: RunRecord,
    pipeline: Pipeline<unknown>,
    resets: StepReset[],
    steps: ReadonlyMap<string, TaskRecord>,
  ): Promise<RunRecord> {
    // Blobs left over from before are reclaimed while the run is still ended.
    await this.reclaimBlobs(run.id);
    const now = this.clock.now();
    const next: RunRecord = {
      ...run,
      version: pipeline.version,
      graph: recordedGraph(pipeline),
      status: "queued",
      endedAt: null,
      error: null,
      dueAt: now,
    };
    // Groups of writes that go in one commit: a reset that drops an output stored as a blob
    // comes with the blob's pending marker, so the next claim reclaims it.
    const writes: [Deno.KvKey, unknown][][] = [];
    for (const reset of resets) {
      const owner = { step: reset.step, item: -1 };
      writes.push(resetWrites(run.id, owner, steps.get(reset.step), reset.record));
      if (reset.items === "none") continue;
      for (const [index, item] of await this.getItems(run.id, reset.step)) {
        // Items go back to pending but keep their attempt count, so their history grows.
        if (reset.items === "all" || item.status !== "succeeded") {
          writes.push(resetWrites(
            run.id,
            { step: reset.step, item: index },
            item,
            resetTask(item, reset.items === "all" ? reset.record.generation : item.generation),
          ));
        }
      }
    }
    // The run record, its indexes and due entry go in the last commit, so the run is
    // queued only once every step reset is stored.
    const runEntry = await this.kv.get<RunRecord>(keys.run(run.id));
    if (!runEntry.value || runEntry.value.status !== run.status) {
      throw new UsageError(`Run ${run.id} changed while being requeued: try again`, "conflict");
    }
    // Thousands of fan-out items take several commits, each within KV's limits on
    // mutations and on key bytes (80 KiB: long names make long item keys). Each commit
    // checks the run record as the commit before left it and, until the last, writes it
    // again unchanged, so a cancel still marking this run's tasks (see `cancel`) and this
    // requeue cannot interleave their batches: whichever commits second stops.
    const batches = splitWrites(writes);
    let fence: { key: Deno.KvKey; versionstamp: string | null } = runEntry;
    for (const [i, batch] of batches.entries()) {
      const op = this.kv.atomic().check(fence);
      addWrites(op, batch);
      if (i === batches.length - 1) this.#finishRequeue(op, run, next);
      else op.set(keys.run(run.id), runEntry.value);
      const result = await commitAtomic(op);
      if (!result.ok) {
        throw new UsageError(`Run ${run.id} changed while being requeued: try again`, "conflict");
      }
      fence = { key: keys.run(run.id), versionstamp: result.versionstamp };
    }
    return next;
  }

  #finishRequeue(op: Deno.AtomicOperation, run: RunRecord, next: RunRecord): void {
    op.set(keys.run(run.id), next);
    moveDue(op, run, next);
    moveStatus(op, run, next);
    this.hint(op, run.id, 0);
  }

  /**
   * Cancels an active run: takes its lease away (so its worker can write nothing more and
   * aborts its running steps), marks unfinished steps, and ends the run `cancelled`.
   *
   * @throws {UsageError} when the run already ended
   */
  async cancel(runId: string, reason = "Cancelled by request"): Promise<RunRecord> {
    if (!isRunId(runId)) throw unknownRun(runId);
    for (let tries = 0; tries < 5; tries++) {
      const [runEntry, leaseEntry] = await this.kv.getMany<[RunRecord, Lease]>([
        keys.run(runId),
        keys.lease(runId),
      ]);
      const run = runEntry.value;
      if (!run) throw unknownRun(runId);
      if (TERMINAL.has(run.status)) {
        // A cancel that stopped between its two parts left tasks open: this one ends them.
        if (run.status === "cancelled") {
          await this.#cancelTasks(run, runEntry.versionstamp, reason).catch(() => {});
        }
        throw new UsageError(`Run ${runId} already ${run.status}: nothing to cancel`, "conflict");
      }
      const now = this.clock.now();
      const next: RunRecord = {
        ...run,
        status: "cancelled",
        endedAt: now,
        dueAt: null,
        error: { step: null, message: reason },
      };
      // The run ends and loses its lease in one commit, checked against both, with its
      // running and retrying tasks marked when they fit (nearly always): a reader sees the
      // run active or cancelled, never between, and its worker is fenced out from then on.
      const marks = splitWrites(await this.#cancelWrites(next, reason));
      const op = this.kv.atomic().check(runEntry, leaseEntry).delete(keys.lease(runId));
      op.set(keys.run(runId), next);
      moveDue(op, run, next);
      moveStatus(op, run, next);
      if (marks.length === 1) addWrites(op, marks[0]);
      const result = await commitAtomic(op);
      if (!result.ok) continue;
      // What did not fit, and what the worker wrote between the read above and the commit
      // (a step it started then), is marked now that nothing more of its lands. The run is
      // cancelled whatever happens here; a later cancel ends what this one could not.
      await this.#cancelTasks(next, result.versionstamp, reason).catch(() => {});
      // Chunks its worker was writing when the lease went are of no use now.
      await this.reclaimBlobs(runId).catch(() => {});
      return next;
    }
    throw new UsageError(`Run ${runId} kept changing while being cancelled: try again`, "conflict");
  }

  /** The writes that mark the running and retrying steps and items of a run cancelled. */
  async #cancelWrites(run: RunRecord, reason: string): Promise<KvWrite[][]> {
    const now = run.endedAt ?? this.clock.now();
    const writes: KvWrite[][] = [];
    for (const [name, record] of await this.getSteps(run.id)) {
      if (record.items !== undefined) {
        for (const [index, item] of await this.getItems(run.id, name)) {
          if (item.status === "running" || item.status === "retrying") {
            writes.push([[keys.item(run.id, name, index), cancelTask(item, now, reason)]]);
          }
        }
      }
      if (record.status === "running" || record.status === "retrying") {
        writes.push([[keys.step(run.id, name), cancelTask(record, now, reason)]]);
      }
    }
    return writes;
  }

  /**
   * Marks the running and retrying steps and items of a cancelled run, in as many commits
   * as KV's limits need (a fan-out may have thousands). Each commit checks the run record
   * as the commit before left it and writes it again unchanged, so a resume or rerun
   * started meanwhile (which does the same, see `#requeue`) and this marking cannot
   * interleave their batches: once the other has committed, this one stops, and the
   * records are the other's to reset.
   */
  async #cancelTasks(run: RunRecord, versionstamp: string, reason: string): Promise<void> {
    const writes = await this.#cancelWrites(run, reason);
    if (writes.length === 0) return;
    let fence = { key: keys.run(run.id), versionstamp };
    for (const batch of splitWrites(writes)) {
      const op = this.kv.atomic().check(fence).set(keys.run(run.id), run);
      addWrites(op, batch);
      const result = await commitAtomic(op);
      if (!result.ok) return;
      fence = { key: keys.run(run.id), versionstamp: result.versionstamp };
    }
  }

  /**
   * Ids of runs whose due-index entry is at or before `now`, oldest first. An entry that
   * disagrees with its run record (no such run, or the run is due at another time or not
   * at all) is deleted instead of returned: left in place, every sweep would list it
   * again, and entries at the head of the index would hide the due work behind them.
   */
  async dueRuns(now: number, limit: number): Promise<string[]> {
    const entries: [number, string][] = [];
    const iter = this.kv.list<string>({ prefix: keys.duePrefix(), end: keys.due(now + 1, "") }, {
      limit,
    });
    for await (const e of iter) entries.push([e.key[2] as number, e.key[3] as string]);
    const ids: string[] = [];
    for (let i = 0; i < entries.length; i += 10) {
      const chunk = entries.slice(i, i + 10);
      const runs = await this.kv.getMany<RunRecord[]>(chunk.map(([, id]) => keys.run(id)));
      // Checked against the run as read, so a run that moved meanwhile keeps its entry.
      const drop = this.kv.atomic();
      let stale = 0;
      chunk.forEach(([at, id], j) => {
        if (runs[j].value?.dueAt === at) {
          ids.push(id);
          return;
        }
        drop.check(runs[j]).delete(keys.due(at, id));
        stale++;
      });
      if (stale > 0) await commitAtomic(drop);
    }
    return ids;
  }

  /**
   * Runs whose lease is held by a process of this host that is gone (see
   * {@linkcode isDeadLocalHolder}): a worker started after a crash takes them over at
   * once instead of waiting out their leases.
   */
  async orphanedRuns(holder: Omit<Lease, "deadline">, limit: number): Promise<string[]> {
    const ids: string[] = [];
    if (limit <= 0) return ids;
    for await (const e of this.kv.list<Lease>({ prefix: keys.leasePrefix() })) {
      if (isDeadLocalHolder(e.value, holder)) ids.push(e.key[2] as string);
      if (ids.length >= limit) break;
    }
    return ids;
  }

  /** The earliest due-index entry's time, or null when nothing is due. */
  async nextDue(): Promise<number | null> {
    for await (const e of this.kv.list({ prefix: keys.duePrefix() }, { limit: 1 })) {
      return e.key[2] as number;
    }
    return null;
  }

  /** Adds a queue hint for a run to an atomic operation, where the KV has queues. */
  hint(op: Deno.AtomicOperation, runId: string, delayMs: number): void {
    if (!this.queues) return;
    op.enqueue({ kvflow: "run", runId } satisfies RunHint, {
      delay: Math.max(0, Math.min(delayMs, 30 * 86_400_000 - 1)),
    });
  }

  async #dropStaleDue(entry: Deno.KvEntry<RunRecord>): Promise<void> {
    const run = entry.value;
    const fixed = { ...run, dueAt: null };
    const op = this.kv.atomic().check(entry).set(keys.run(run.id), fixed);
    moveDue(op, run, fixed);
    await commitAtomic(op);
  }
}

/**
 * The writes that reset the record of `owner` (a step, or an item) from `before` to
 * `after`: when that drops an output stored as a blob, the blob's pending marker first.
 */
function resetWrites(
  runId: string,
  owner: { step: string; item: number },
  before: TaskRecord | undefined,
  after: TaskRecord,
): [Deno.KvKey, unknown][] {
  const key = owner.item < 0
    ? keys.step(runId, owner.step)
    : keys.item(runId, owner.step, owner.item);
  const output = before?.output;
  if (!output || !("blob" in output) || after.output === output) return [[key, after]];
  const marker: PendingBlob = { ...owner, chunks: output.blob.chunks };
  return [[keys.blobPending(runId, output.blob.id), marker], [key, after]];
}

/** Adds to `op` the due-index move from `before.dueAt` to `after.dueAt`. */
export function moveDue(op: Deno.AtomicOperation, before: RunRecord, after: RunRecord): void {
  if (before.dueAt === after.dueAt) return;
  if (before.dueAt !== null) op.delete(keys.due(before.dueAt, before.id));
  if (after.dueAt !== null) op.set(keys.due(after.dueAt, after.id), after.id);
}

/**
 * Adds to `op` the status-index move from `before.status` to `after.status`, and the move
 * of the run from one per-status count to the other: 8 mutations at most. Every status
 * change goes through here or {@linkcode Store.addRunCreation}, so the counts change in
 * the commits that move the index entries and never drift from them.
 */
export function moveStatus(op: Deno.AtomicOperation, before: RunRecord, after: RunRecord): void {
  if (before.status === after.status) return;
  op.delete(keys.runsByStatus(before.status, before.createdAt, before.id));
  op.set(keys.runsByStatus(after.status, after.createdAt, after.id), after.pipeline);
  op.set(keys.runsByPipeline(after.pipeline, after.createdAt, after.id), after.status);
  op.delete(keys.runsByPipelineStatus(before.pipeline, before.status, before.createdAt, before.id));
  op.set(
    keys.runsByPipelineStatus(after.pipeline, after.status, after.createdAt, after.id),
    COUNTED,
  );
  op.sum(keys.runCount(before.pipeline, before.status), MINUS_ONE);
  op.sum(keys.runCount(after.pipeline, after.status), 1n);
  if (TERMINAL.has(after.status)) op.delete(keys.activeRun(after.pipeline, after.id));
  else op.set(keys.activeRun(after.pipeline, after.id), after.createdAt);
}

/** Value of a {@linkcode keys.runsByPipelineStatus} entry whose run is in its count. */
export const COUNTED = 1;

/** Minus one for a `sum` on a `Deno.KvU64`, which adds modulo 2^64. */
const MINUS_ONE = (1n << 64n) - 1n;

/** Most characters of a run id (ids are ASCII: a byte each in a key). */
export const MAX_RUN_ID_LENGTH = 200;
const RUN_ID = new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,${MAX_RUN_ID_LENGTH - 1}}$`);
/** Most characters of an idempotency key; with a pipeline's name its KV key stays short. */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;
/** A value for a one-line message: quoted, and cut after 80 characters. */
function quoteClipped(value: string): string {
  return value.length <= 80
    ? JSON.stringify(value)
    : `${JSON.stringify(value.slice(0, 80))}… (${value.length} characters)`;
}

/**
 * Checks an idempotency key: 1 to {@linkcode MAX_IDEMPOTENCY_KEY_LENGTH} characters,
 * without control characters.
 *
 * @throws {UsageError} on any other value
 */
function checkIdempotencyKey(key: unknown): void {
  if (
    typeof key !== "string" || key.length === 0 || key.length > MAX_IDEMPOTENCY_KEY_LENGTH ||
    /\p{Cc}/u.test(key)
  ) {
    throw new UsageError(
      `Invalid idempotency key ${
        typeof key === "string" ? quoteClipped(key) : String(key)
      }: use 1 to ${MAX_IDEMPOTENCY_KEY_LENGTH} characters without control characters`,
    );
  }
}

/** The error for a run id that names no run (an id too long for a key names none). */
function unknownRun(runId: string): UsageError {
  return new UsageError(`Unknown run: ${quoteClipped(runId)}`, "not_found");
}

/** Whether a string can be a run id (so unknown ids fail fast, before KV sees them). */
export function isRunId(value: string): boolean {
  return RUN_ID.test(value);
}

/** A new run id: UTC time of creation, then random letters, sortable by time. */
export function newRunId(now: number): string {
  const stamp = new Date(now).toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  const random = crypto.getRandomValues(new Uint8Array(6));
  const alphabet = "0123456789abcdefghjkmnpqrstvwxyz";
  return `${stamp}-${Array.from(random, (b) => alphabet[b & 31]).join("")}`;
}

/**
 * Validates params against a pipeline's schema. What passes is plain data: objects,
 * arrays, strings, finite numbers, booleans, null and dates, so KV stores it as it is and
 * every JSON answer and `status --json` can show it.
 *
 * @throws {UsageError} naming each field that fails, with code `invalid_params` and the
 * problems as `issues`
 */
export function validateParams(
  pipeline: Pipeline<unknown>,
  params: unknown,
): Record<string, unknown> {
  const refuse = (issues: { path: PropertyKey[]; message: string }[], reason?: string) =>
    new UsageError(
      `Invalid params for '${pipeline.name}': ${
        reason ?? issues.map((i) => `${paramPath(i.path)}: ${oneLine(i.message)}`).join("; ")
      }`,
      "invalid_params",
      issues,
    );
  if (params === null || typeof params !== "object" || Array.isArray(params)) {
    throw refuse([{ path: [], message: "Expected an object" }], "expected an object");
  }
  if (!pipeline.params) {
    const names = Object.keys(params);
    if (names.length > 0) {
      throw refuse(
        names.map((k) => ({ path: [k], message: "Unknown param" })),
        `it takes no params, got ${names.map(paramName).join(", ")}`,
      );
    }
    return {};
  }
  const result = pipeline.params.safeParse(params);
  if (!result.success) {
    throw refuse(result.error.issues.map((i) => ({ path: [...i.path], message: i.message })));
  }
  const value = result.data;
  // zod objects drop unknown keys silently; a typo in a param name must not pass unseen.
  // Known keys come from the schema's shape, else from what the parsed value kept; own
  // keys only, or `constructor` and `__proto__` would pass as known.
  const shape = (pipeline.params as { shape?: Record<string, unknown> }).shape;
  const known = (k: string) =>
    shape
      ? Object.hasOwn(shape, k)
      : value !== null && typeof value === "object" && Object.hasOwn(value, k);
  const unknownParams = Object.keys(params).filter((k) => !known(k));
  if (unknownParams.length > 0) {
    throw refuse(
      unknownParams.map((k) => ({ path: [k], message: "Unknown param" })),
      `unknown param${unknownParams.length === 1 ? "" : "s"} ${
        unknownParams.map(paramName).join(", ")
      }${shape ? ` (known: ${Object.keys(shape).join(", ")})` : ""}`,
    );
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new UsageError(`Invalid params schema of '${pipeline.name}': it must produce an object`);
  }
  const problem = notPlainData(value, [], []);
  if (problem) throw refuse([problem]);
  return value as Record<string, unknown>;
}

/** How deep params may nest: no real config is deeper, and checking must not blow the stack. */
const MAX_PARAMS_DEPTH = 64;

/** Where a value stops being plain data (see {@linkcode validateParams}), or null. */
function notPlainData(
  value: unknown,
  path: PropertyKey[],
  parents: object[],
): { path: PropertyKey[]; message: string } | null {
  if (typeof value === "number") {
    return Number.isFinite(value) ? null : { path, message: `${value} is not a finite number` };
  }
  if (value === null || typeof value === "string" || typeof value === "boolean") return null;
  if (typeof value !== "object") {
    const what = typeof value === "bigint"
      ? "a BigInt"
      : value === undefined
      ? "undefined"
      : `a ${typeof value}`;
    return { path, message: `${what} is not JSON data` };
  }
  if (value instanceof Date) {
    return Number.isNaN(value.getTime()) ? { path, message: "Invalid Date" } : null;
  }
  if (parents.includes(value)) return { path, message: "the value refers to itself" };
  if (parents.length >= MAX_PARAMS_DEPTH) {
    return { path, message: `nests deeper than ${MAX_PARAMS_DEPTH} levels` };
  }
  const inside = [...parents, value];
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const problem = notPlainData(value[i], [...path, i], inside);
      if (problem) return problem;
    }
    return null;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    return { path, message: `a ${proto?.constructor?.name || "class instance"} is not JSON data` };
  }
  for (const [k, v] of Object.entries(value)) {
    // an optional param given as undefined is an absent one
    if (v === undefined) continue;
    const problem = notPlainData(v, [...path, k], inside);
    if (problem) return problem;
  }
  return null;
}

/** A param's name for a one-line message: quoted when it has spaces, controls or quotes. */
function paramName(key: PropertyKey): string {
  const text = String(key);
  return /^[^\s\p{C}"]{1,80}$/u.test(text)
    ? text
    : JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

/** A schema's message with control characters escaped: it may quote a key a user sent. */
function oneLine(message: string): string {
  return message.replace(/\p{Cc}/gu, (c) => JSON.stringify(c).slice(1, -1));
}

function paramPath(path: readonly PropertyKey[]): string {
  return path.length ? path.map(paramName).join(".") : "(params)";
}

function checkDate(date: string): void {
  // An out-of-range month or day ("2026-13-01") is an Invalid Date, whose toISOString throws.
  const parsed = new Date(`${date}T00:00:00Z`);
  const ok = /^\d{4}-\d{2}-\d{2}$/.test(date) && !Number.isNaN(parsed.getTime()) &&
    parsed.toISOString().slice(0, 10) === date;
  if (!ok) throw new UsageError(`Invalid date ${JSON.stringify(date)}: use YYYY-MM-DD`);
}

/**
 * Whether a lease's holder is a process of this host that is gone: same boot, pid
 * namespace and user (see `hostname()` in worker.ts), so a pid missing from /proc means a
 * dead process, not one hidden from this user. Only Linux shows other processes under
 * /proc; elsewhere a holder is never "dead" early and its lease is waited out.
 */
function isDeadLocalHolder(held: Lease, me: Omit<Lease, "deadline">): boolean {
  if (Deno.build.os !== "linux" || !me.host.includes("/uid:")) return false;
  if (held.host !== me.host || held.pid === me.pid) return false;
  try {
    Deno.statSync(`/proc/${held.pid}`);
    return false;
  } catch (error) {
    return error instanceof Deno.errors.NotFound;
  }
}
