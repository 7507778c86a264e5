/**
 * The changes that people and workers make to runs from outside a running driver: create
 * and claim, and reclaiming the blobs of an ended run (resume and rerun are in
 * `requeue.ts`, cancel in `cancel.ts`). Each change is one atomic commit that also moves
 * the run's indexes and its due-index entry.
 *
 * @module
 */
import v8 from "node:v8";
import type { Trigger } from "../define/context.ts";
import type { Pipeline } from "../define/pipeline.ts";
import { UsageError } from "../model/errors.ts";
import { validateParams } from "../model/params.ts";
import { checkIdempotencyKey, checkRunId, newRunId } from "../model/run_id.ts";
import { recordedGraph } from "../model/plans.ts";
import {
  type Lease,
  type PauseState,
  type RunFlow,
  type RunRecord,
  type RunTrace,
  type SlotHolder,
  TERMINAL,
} from "../model/records.ts";
import * as keys from "../kv/keys.ts";
import { MAX_RUN_RECORD_BYTES } from "../kv/limits.ts";
import { addRunIndexes, moveDue, moveStatus } from "../kv/indexes.ts";
import { SCHEMA_VERSION } from "../kv/migrations.ts";
import { reclaimBlobs } from "../kv/blobs.ts";
import { commitAtomic } from "../kv/commit.ts";
import { isDeadLocalHolder } from "../platform/process.ts";
import { startRunTrace } from "../platform/tracing.ts";
import type { StoreParts } from "./parts.ts";
import type { Delivery } from "../model/events.ts";
import type {
  AtomicOperation,
  KvCheck,
  KvCommitError,
  KvCommitResult,
  KvEntry,
  KvEntryMaybe,
} from "../kv/kv.ts";
import { pausedRecord } from "./pause.ts";
import { checkPriority, flowKey } from "../define/flow.ts";
import { admit, needsAdmission } from "./flow.ts";
import type { ViewPick } from "./limit_view.ts";

/** What {@linkcode createRun} needs. */
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
   * with `runForIdempotencyKey`.
   */
  idempotencyKey?: string;
  /** The schedule tick the run belongs to, ms since the epoch. */
  tick?: number;
  /** For a run an event starts: the event's id. */
  event?: string;
  /** For a child run: the parent's run, step and item. */
  parent?: { runId: string; step: string; item: number };
  /** Its priority, 0 to 10. Default: the pipeline's (`priority`, else 0). */
  priority?: number;
  /** With tracing on: the span its trace's root nests under (a child's parent session). */
  traceParent?: RunTrace;
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

/**
 * Creates a queued run with validated params and a due-index entry for now.
 *
 * @throws {UsageError} on params that fail the schema or a malformed date
 */
export async function createRun(
  store: StoreParts,
  pipeline: Pipeline<unknown>,
  input: CreateRunInput = {},
): Promise<RunRecord> {
  if (input.idempotencyKey !== undefined) checkIdempotencyKey(input.idempotencyKey);
  const run = newRun(store, pipeline, input);
  run.idempotencyKey = input.idempotencyKey ?? null;
  const op = store.kv.atomic();
  addRunCreation(store, op, run);
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
export function newRun(
  store: StoreParts,
  pipeline: Pipeline<unknown>,
  input: CreateRunInput = {},
): RunRecord {
  if (input.id !== undefined) checkRunId(input.id);
  const params = validateParams(pipeline, input.params ?? {});
  const flow = runFlow(pipeline, params);
  let priority = pipeline.flow.priority;
  if (input.priority !== undefined) {
    try {
      priority = checkPriority(`run of '${pipeline.name}'`, input.priority);
    } catch (error) {
      throw new UsageError((error as Error).message, "invalid_params");
    }
  }
  const now = store.clock.now();
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
    ...(input.event ? { event: input.event } : {}),
    ...(input.parent ? { parent: input.parent } : {}),
    ...(priority ? { priority } : {}),
    ...(flow ? { flow } : {}),
  };
  const trace = startRunTrace(run, input.traceParent);
  if (trace) run.trace = trace;
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
 * indexes, its count by pipeline and status, its due-index entry and a queue message that
 * wakes it (at most 9 mutations).
 */
export function addRunCreation(store: StoreParts, op: AtomicOperation, run: RunRecord): void {
  addRunIndexes(op, run);
  store.wake(op, run.id, 0);
  if (store.schemaUnwritten) {
    // the run is counted in this commit, as every run this kvflow creates: the database
    // is current from its first run on. Written once; should this commit fail, the next
    // open migrates (and finds every run counted).
    op.set(keys.schema(), SCHEMA_VERSION);
    store.schemaUnwritten = false;
  }
}

/**
 * Claims a run for a worker: succeeds when the run is active and unleased (or its lease
 * expired, or its holder is a dead process on this host) and, for a waiting run, its
 * retry is due. The commit writes the lease, a due-index entry at the lease deadline
 * (so a crash of this worker still leaves a wake-up), and the run as `running`. A queued
 * run under a limit or throttle (`flow.ts`) takes its slot and throttle entry in that
 * commit, or is recorded still queued with why it is held back, and is not claimed.
 *
 * With `seen`, the run record a sweep read as due, the claim first commits against it
 * without reading anything (see {@linkcode claimSeen}); only when that fails does it read.
 *
 * @returns the claim, or null when another worker has it or there is nothing to do
 */
export async function claim(
  store: StoreParts,
  runId: string,
  holder: Omit<Lease, "deadline">,
  leaseMs: number,
  pipeline?: string,
  seen?: KvEntry<RunRecord>,
): Promise<Claim | null> {
  if (seen && seen.key[2] === runId) {
    const claimed = await claimSeen(store, seen, holder, leaseMs);
    if (claimed) return claimed;
  }
  // a slot freed while a run under a limit was found held back: it looks again
  for (let tries = 0; tries < 3; tries++) {
    const result = await claimOnce(store, runId, holder, leaseMs, pipeline);
    if (result !== "again") return result;
  }
  return null;
}

async function claimOnce(
  store: StoreParts,
  runId: string,
  holder: Omit<Lease, "deadline">,
  leaseMs: number,
  pipeline?: string,
): Promise<Claim | null | "again"> {
  // the pauses come with the run: the claim is the check that a paused run never starts
  const [runEntry, leaseEntry, bellEntry, pauseEntry, pipelinePause] = await store.kv.getMany<
    [RunRecord, Lease, number, PauseState, PauseState]
  >([
    keys.run(runId),
    keys.lease(runId),
    keys.bell(runId),
    keys.runPause(runId),
    keys.pipelinePause(pipeline ?? ""),
  ]);
  const run = runEntry.value;
  if (!run) return null;
  const now = store.clock.now();
  if (TERMINAL.has(run.status)) {
    if (run.dueAt !== null) await dropStaleDue(store, runEntry as KvEntry<RunRecord>);
    // deliveries that came after it ended (a child's end, say) lead nowhere now
    if (bellEntry.versionstamp !== null) await dropInbox(store, runId);
    return null;
  }
  // a paused run starts nothing until it is unpaused, which makes it due again
  if (run.status === "paused") return null;
  // held back by a throttle or a debounce until a time: a queue hint may come before it
  if (run.status === "queued" && run.held?.until != null && run.held.until > now) return null;
  const held = leaseEntry.value;
  const takeover = held !== null;
  if (held && held.deadline > now && !isDeadLocalHolder(held, holder)) return null;
  const known = run.pipeline === pipeline ? pipelinePause : null;
  const paused = await parkPaused(
    store,
    runEntry as KvEntry<RunRecord>,
    leaseEntry,
    pauseEntry,
    known,
  );
  if (paused) return null;
  // A parked run is due at its time, or at once when a delivery rang its bell since.
  if (
    run.status === "waiting" && run.dueAt !== null && run.dueAt > now &&
    bellEntry.versionstamp === (run.bellSeen ?? null)
  ) return null;
  const { lease, record } = claimedRecord(run, holder, now, leaseMs, takeover);
  let claimed = record;
  // A lease comes to be only in a claim, which writes the run record too: when there was
  // none, the run's check stands for the lease's (a check less, and checks are what a
  // grouped commit runs out of first).
  const fences = takeover ? [runEntry, leaseEntry] : [runEntry];
  const apply = (op: AtomicOperation) => {
    op.check(...fences);
    writeClaim(op, run, claimed, lease, takeover);
  };
  const taken = (versionstamp: string) =>
    claimTaken(store, claimed, lease, versionstamp, run.startedAt !== null);
  const bytes = claimBytes(claimed);
  // Claims of different runs touch disjoint keys: they may share a commit.
  if (!needsAdmission(run)) {
    const result = await store.claims.commit({
      checks: fences.length,
      mutations: 14,
      bytes,
      apply,
    });
    return result.ok ? await taken(result.versionstamp) : null;
  }
  // A queued run under a limit or throttle starts only when they let it. Its claim checks
  // a slot or throttle entry that other claims of its key check too; within one grouped
  // commit such checks would all pass, so a claim picks none that another claim of this
  // process is taking (`admit`), and claims of one key still share commits.
  // a take or queueing of the key that this process's view of it does not follow
  const limit = run.flow?.limit;
  const other = limit ? store.limits.other(limit) : () => {};
  let took: number | undefined;
  const decided = await (async () => {
    const at = store.clock.now();
    const admission = await admit(store.kv, run, at);
    if (!admission.start) {
      const next: RunRecord = { ...run, held: admission.held, dueAt: admission.dueAt };
      const held = await store.committer.commit({
        checks: fences.length + admission.checks,
        mutations: 7,
        bytes,
        apply: (op) => {
          op.check(...fences).set(keys.run(runId), next);
          admission.apply(op);
          moveDue(op, run, next);
        },
      });
      return held.ok ? "held" : "again";
    }
    claimed = {
      ...claimed,
      startedAt: run.startedAt ?? at,
      ...(admission.slot !== null ? { slot: admission.slot } : {}),
    };
    // with a slot and a throttle entry taken, a queue entry dropped and a gate
    try {
      const result = await store.committer.commit({
        checks: fences.length + admission.checks,
        mutations: 19,
        bytes,
        apply: (op) => {
          apply(op);
          admission.apply(op);
        },
      });
      if (result.ok && admission.slot !== null) took = admission.slot;
      return result;
    } finally {
      // before the reservation ends: a pick from the view then knows the slot taken
      other(took);
      admission.done();
    }
  })().finally(() => other());
  if (decided === "held") return null;
  if (decided === "again") return "again";
  return decided.ok ? await taken(decided.versionstamp) : null;
}

/**
 * A claim committed against the run record a sweep read, with no read first: one round
 * trip instead of three where KV is remote. It checks that the run is as read (so no other
 * claim, pause or change came since: each rewrites the record), that no lease, run pause
 * or pipeline pause exists, and takes only a run that is plainly due now: queued or
 * waiting, due, not held back, not throttled, not leased (a takeover reads the lease).
 * A new run under a limit this process knows to be unreached takes a free slot of its
 * view of the key (`limit_view.ts`) with no check of the slot: the commit checks the key's
 * mark, unchanged since no slot was taken and no run queued. Anything else, or a failed
 * check, is left to the claim that reads.
 */
async function claimSeen(
  store: StoreParts,
  seen: KvEntry<RunRecord>,
  holder: Omit<Lease, "deadline">,
  leaseMs: number,
): Promise<Claim | null> {
  const run = seen.value;
  const now = store.clock.now();
  if (run.status !== "queued" && run.status !== "waiting") return null;
  if (run.dueAt === null || run.dueAt > now || run.held) return null;
  const limit = run.flow?.limit;
  let pick: ViewPick | null = null;
  if (needsAdmission(run)) {
    // a throttle is read at each first start, a run that started once goes on by a read;
    // where KV is remote each claim is its own commit, and claims of a key would collide
    if (!limit || run.flow?.throttle || run.startedAt !== null) return null;
    if (store.claims !== store.committer) return null;
    pick = await store.limits.pick(store.kv, limit, now);
    if (!pick) return null;
  }
  const claimed = claimedRecord(run, holder, now, leaseMs, false);
  const lease = claimed.lease;
  const record = pick ? { ...claimed.record, slot: pick.index } : claimed.record;
  const pause: KvCheck = { key: keys.pipelinePause(run.pipeline), versionstamp: null };
  let result: KvCommitResult | KvCommitError;
  try {
    result = await store.claims.commit({
      checks: 3,
      mutations: pick ? 16 : 14,
      bytes: claimBytes(record),
      // alike for every claim of the pipeline, and of the limit key: a grouped commit
      // checks each once
      get shared() {
        return pick ? [pause, pick.check()] : [pause];
      },
      committed: pick?.committed,
      apply: (op) => {
        op.check(
          seen,
          { key: keys.lease(run.id), versionstamp: null },
          { key: keys.runPause(run.id), versionstamp: null },
        );
        writeClaim(op, run, record, lease, false);
        if (pick && limit) {
          // the mark's check says the slot is still free (see `limit_view.ts`)
          const holder: SlotHolder = { run: run.id, step: null, item: -1, attempt: 0, at: now };
          op.set(keys.slot(limit.scope, limit.key, pick.index), holder);
          op.set(keys.limitQueueMark(limit.scope, limit.key), now);
        }
      },
    });
  } catch (error) {
    pick?.done(false);
    throw error;
  }
  pick?.done(result.ok);
  return result.ok
    ? await claimTaken(store, record, lease, result.versionstamp, run.startedAt !== null)
    : null;
}

/** The lease a claim writes and the run as it records it. */
function claimedRecord(
  run: RunRecord,
  holder: Omit<Lease, "deadline">,
  now: number,
  leaseMs: number,
  takeover: boolean,
): { lease: Lease; record: RunRecord } {
  const lease: Lease = { ...holder, deadline: now + leaseMs };
  const record: RunRecord = {
    ...run,
    status: "running",
    startedAt: run.startedAt ?? now,
    dueAt: lease.deadline,
    takeovers: run.takeovers + (takeover ? 1 : 0),
    ...(run.waitingFor ? { waitingFor: null } : {}),
    ...(run.held ? { held: null } : {}),
  };
  return { lease, record };
}

/** A claim's writes, after its checks: the lease, the run, its due entry and indexes. */
function writeClaim(
  op: AtomicOperation,
  run: RunRecord,
  claimed: RunRecord,
  lease: Lease,
  takeover: boolean,
): void {
  op.set(keys.lease(run.id), lease).set(keys.run(run.id), claimed);
  // A cross-process total for the metrics endpoint.
  if (takeover) op.sum(keys.counter("lease_takeovers"), 1n);
  moveDue(op, run, claimed);
  moveStatus(op, run, claimed);
}

/** What a claim's commit is counted as in a grouped commit. */
function claimBytes(claimed: RunRecord): number {
  return 2048 + 2 * JSON.stringify(claimed.graph ?? {}).length;
}

async function claimTaken(
  store: StoreParts,
  claimed: RunRecord,
  lease: Lease,
  versionstamp: string,
  claimedBefore: boolean,
): Promise<Claim> {
  // A run claimed before may hold blobs that an earlier holder wrote and never
  // checkpointed: the new lease fences that holder out, so this claim may reclaim them.
  if (claimedBefore) {
    const fence = { key: keys.lease(claimed.id), versionstamp };
    // Best effort: what a full disk leaves now, the next claim or the run's end reclaims.
    await reclaimBlobs(store.kv, claimed.id, (op) => commitAtomic(op.check(fence))).catch(
      () => {},
    );
  }
  return { run: claimed, lease, leaseVersion: versionstamp };
}

/**
 * Records a run `paused`, with no lease and no due entry, when it or (for a run that never
 * started) its pipeline is paused: the commit checks the pause, so an unpause that came
 * meanwhile leaves the run due. A new run's pipeline pause comes with the claim's read
 * when the caller named the pipeline (the worker does), else it is read here.
 *
 * @returns whether the run is paused
 */
async function parkPaused(
  store: StoreParts,
  runEntry: KvEntry<RunRecord>,
  leaseEntry: KvEntryMaybe<Lease>,
  pauseEntry: KvEntryMaybe<PauseState>,
  pipelinePause: KvEntryMaybe<PauseState> | null,
): Promise<boolean> {
  const run = runEntry.value;
  let pause = pauseEntry;
  if (pause.value === null && run.startedAt === null) {
    pause = pipelinePause ?? await store.kv.get<PauseState>(keys.pipelinePause(run.pipeline));
  }
  if (pause.value === null) return false;
  const next = pausedRecord(run, pause.value);
  const op = store.kv.atomic().check(runEntry, leaseEntry, pause).set(keys.run(run.id), next);
  if (leaseEntry.value) op.delete(keys.lease(run.id));
  moveDue(op, run, next);
  moveStatus(op, run, next);
  await commitAtomic(op);
  return true;
}

/**
 * Reclaims the blobs of an ended run that nothing refers to: chunks a worker wrote but
 * never checkpointed (it was killed, lost its lease, or the disk filled up), or that a
 * rerun dropped. An ended run has no lease, so no worker can refer to them any more;
 * each commit checks that the run is still ended. An active run is left to its holder.
 *
 * @returns how many blobs it deleted
 */
export async function reclaimRunBlobs(store: StoreParts, runId: string): Promise<number> {
  // Most runs have no pending blob: one read of an empty range, then done.
  const pending = store.kv.list({ prefix: keys.blobPendingPrefix(runId) }, { limit: 1 });
  if ((await pending.next()).done) return 0;
  const entry = await store.kv.get<RunRecord>(keys.run(runId));
  if (!entry.value || !TERMINAL.has(entry.value.status)) return 0;
  return await reclaimBlobs(store.kv, runId, (op) => commitAtomic(op.check(entry)));
}

/** Deletes an ended run's inbox, the due entries its deliveries wrote, and its bell. */
async function dropInbox(store: StoreParts, runId: string): Promise<void> {
  const op = store.kv.atomic().delete(keys.bell(runId));
  let n = 0;
  for await (const entry of store.kv.list<Delivery>({ prefix: keys.inboxPrefix(runId) })) {
    op.delete(entry.key).delete(keys.due(entry.value.dueAt, runId));
    if (++n >= 200) break;
  }
  await commitAtomic(op);
}

async function dropStaleDue(store: StoreParts, entry: KvEntry<RunRecord>): Promise<void> {
  const run = entry.value;
  const fixed = { ...run, dueAt: null };
  const op = store.kv.atomic().check(entry).set(keys.run(run.id), fixed);
  moveDue(op, run, fixed);
  await commitAtomic(op);
}
/**
 * The limit, throttle and debounce keys of a run with these params, or null when its
 * pipeline has none.
 *
 * @throws {UsageError} naming the pipeline and the option when a key function throws or
 * returns something that is not a short string
 */
export function runFlow(pipeline: Pipeline<unknown>, params: unknown): RunFlow | null {
  const { limit, throttle, debounce } = pipeline.flow;
  if (!limit && !throttle && !debounce) return null;
  const key = (option: string, fn: (input: unknown) => string) => {
    try {
      return flowKey(`${option} key of pipeline '${pipeline.name}'`, fn, params);
    } catch (error) {
      throw new UsageError((error as Error).message, "invalid_params");
    }
  };
  const flow: RunFlow = {};
  if (limit) flow.limit = { scope: limit.scope, key: key("limit", limit.key), max: limit.max };
  if (throttle) {
    flow.throttle = {
      scope: throttle.scope,
      key: key("throttle", throttle.key),
      max: throttle.max,
      perMs: throttle.perMs,
    };
  }
  if (debounce) flow.debounce = { key: key("debounce", debounce.key) };
  return flow;
}

function checkDate(date: string): void {
  // An out-of-range month or day ("2026-13-01") is an Invalid Date, whose toISOString throws.
  const parsed = new Date(`${date}T00:00:00Z`);
  const ok = /^\d{4}-\d{2}-\d{2}$/.test(date) && !Number.isNaN(parsed.getTime()) &&
    parsed.toISOString().slice(0, 10) === date;
  if (!ok) throw new UsageError(`Invalid date ${JSON.stringify(date)}: use YYYY-MM-DD`);
}
