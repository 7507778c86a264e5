/**
 * Debounce: a burst of triggers (HTTP requests, events) of a pipeline with the same
 * debounce key gathers into one queued run, held back until its burst is quiet.
 *
 * The burst's entry `keys.debounce(pipeline, key)` names its run and when the burst began.
 * The first trigger creates the run `queued`, held by `debounce` until `now + quiet`, due
 * then. Each later trigger, while that run is still queued and its burst not yet quiet,
 * replaces its params with its own and moves the hold (and the due entry) to
 * `now + quiet`, never past `firstAt + maxWait`; the commit checks the entry and the run
 * record, so a claim that took the run meanwhile makes the trigger look again and begin a
 * new burst. A trigger after the quiet period begins a new burst too, even while no
 * worker has claimed the run yet.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import type { Debounce } from "../define/flow.ts";
import { UsageError } from "../model/errors.ts";
import { checkIdempotencyKey } from "../model/run_id.ts";
import type { RunRecord } from "../model/records.ts";
import * as keys from "../kv/keys.ts";
import { addRunIndexes, moveDue } from "../kv/indexes.ts";
import { commitAtomic } from "../kv/commit.ts";
import type { AtomicOperation, KvEntryMaybe } from "../kv/kv.ts";
import { type CreateRunInput, newRun } from "./commands.ts";
import type { StoreParts } from "./parts.ts";

/** The value of a burst's entry. */
export interface BurstEntry {
  /** The run the burst gathers into. */
  runId: string;
  /** When its first trigger came, ms since the epoch. */
  firstAt: number;
}

/** A burst as read before a trigger's commit: its entry and its run's record. */
export interface Burst {
  /** The burst's entry (versionstamp null when there is none). */
  entry: KvEntryMaybe<BurstEntry>;
  /** The record of the run it names, or null when there is no entry. */
  run: KvEntryMaybe<RunRecord> | null;
}

/** What a trigger did. */
export interface DebouncedTrigger {
  /** The run the trigger began or joined, as the commit wrote it. */
  run: RunRecord;
  /** Whether it joined a burst's run (false: it began a burst with a new run). */
  joined: boolean;
}

/** How many times a trigger looks again when a claim or another trigger came between. */
const TRIES = 100;

/**
 * The debounce of a run a pipeline's trigger creates, or null when it has none.
 *
 * @param run a new run of the pipeline (its `flow.debounce.key` computed from its params)
 */
export function debounceOf(
  pipeline: Pipeline<unknown>,
  run: RunRecord,
): { debounce: Debounce; key: string } | null {
  const debounce = pipeline.flow.debounce;
  const key = run.flow?.debounce?.key;
  if (!debounce || key === undefined) return null;
  return { debounce, key };
}

/** Reads a burst: its entry, and the record of the run the entry names. */
export async function readBurst(
  store: StoreParts,
  pipeline: string,
  key: string,
): Promise<Burst> {
  const entry = await store.kv.get<BurstEntry>(keys.debounce(pipeline, key));
  if (!entry.value) return { entry, run: null };
  return { entry, run: await store.kv.get<RunRecord>(keys.run(entry.value.runId)) };
}

/**
 * Adds to `op` one trigger of a burst read just before: the join of its run while that
 * is still queued and held by the debounce (its params and flow replaced by `fresh`'s,
 * its hold and due time moved), else a new burst whose run is `fresh`, held back. Both
 * check the burst's entry (and the run), so `op` fails when anything changed since the
 * read; read again and retry then.
 *
 * @param fresh the run this trigger would create: validated params, its debounce key
 * @returns the run as `op` writes it, and whether the trigger joined a burst
 */
export function addTrigger(
  store: StoreParts,
  op: AtomicOperation,
  burst: Burst,
  fresh: RunRecord,
  debounce: Debounce,
  key: string,
): DebouncedTrigger {
  const now = store.clock.now();
  const entryKey = keys.debounce(fresh.pipeline, key);
  const open = burst.run?.value;
  if (burst.entry.value && burst.run && open && joinable(open, now)) {
    // past already when maxWait ran out and no worker claimed the run yet: due at once
    const until = Math.min(now + debounce.quietMs, burst.entry.value.firstAt + debounce.maxWaitMs);
    const joined: RunRecord = {
      ...open,
      params: fresh.params,
      ...(fresh.flow ? { flow: fresh.flow } : {}),
      // the burst's most urgent trigger sets its priority
      priority: Math.max(open.priority ?? 0, fresh.priority ?? 0),
      dueAt: until,
      held: { ...open.held!, until, reason: heldReason(key, until, now) },
    };
    if (!joined.priority) delete joined.priority;
    op.check(burst.entry, burst.run).set(keys.run(open.id), joined);
    moveDue(op, open, joined);
    store.wake(op, open.id, until - now);
    return { run: joined, joined: true };
  }
  const until = now + debounce.quietMs;
  const run: RunRecord = {
    ...fresh,
    // the burst's first trigger is now: maxWait counts from the run's creation
    createdAt: now,
    dueAt: until,
    held: { by: "debounce", key, since: now, until, reason: heldReason(key, until, now) },
  };
  op.check(burst.entry).set(entryKey, { runId: run.id, firstAt: now } satisfies BurstEntry);
  addRunIndexes(op, run);
  store.wake(op, run.id, until - now);
  return { run, joined: false };
}

/**
 * Triggers a debounced pipeline outside an event: begins a burst or joins its run, in one
 * commit checked against the burst, retried when a claim or another trigger came between.
 * An `idempotencyKey` is stored with the run it went to, checked to be new.
 *
 * @throws {UsageError} as `createRun` does (params, debounce key, priority), or
 * `conflict` when the idempotency key was used
 */
export async function triggerDebounced(
  store: StoreParts,
  pipeline: Pipeline<unknown>,
  input: CreateRunInput,
): Promise<DebouncedTrigger> {
  if (input.idempotencyKey !== undefined) checkIdempotencyKey(input.idempotencyKey);
  const fresh = newRun(store, pipeline, input);
  const of = debounceOf(pipeline, fresh);
  if (!of) throw new TypeError(`Pipeline '${pipeline.name}' has no debounce`);
  fresh.idempotencyKey = input.idempotencyKey ?? null;
  for (let tries = 0; tries < TRIES; tries++) {
    const burst = await readBurst(store, pipeline.name, of.key);
    const op = store.kv.atomic();
    const done = addTrigger(store, op, burst, fresh, of.debounce, of.key);
    if (input.idempotencyKey !== undefined) {
      const key = keys.idempotency(pipeline.name, input.idempotencyKey);
      op.check({ key, versionstamp: null }).set(key, done.run.id);
    }
    if ((await commitAtomic(op)).ok) return done;
    if (input.idempotencyKey !== undefined) {
      const used = await store.kv.get(keys.idempotency(pipeline.name, input.idempotencyKey));
      if (used.value !== null) {
        throw new UsageError(`Idempotency key already used for run ${used.value}`, "conflict");
      }
    }
    await new Promise((r) => setTimeout(r, Math.random() * Math.min(tries, 10)));
  }
  throw new UsageError(
    `The trigger of '${pipeline.name}' could not join its burst: it kept changing; try again`,
    "conflict",
  );
}

/**
 * Whether a trigger may still join the run: not claimed yet, still held by its burst, and
 * the burst not quiet yet (a run whose quiet period passed while no worker ran starts
 * with what it gathered; a later trigger begins the next burst).
 */
function joinable(run: RunRecord, now: number): boolean {
  return run.status === "queued" && run.startedAt === null && run.held?.by === "debounce" &&
    (run.held.until ?? 0) > now;
}

function heldReason(key: string, until: number, now: number): string {
  return `debounced: waiting for triggers with key '${key}' to be quiet (until ${
    new Date(until).toISOString()
  }, ${Math.max(0, until - now)} ms)`;
}
