/**
 * The KV key layout. Nothing else in kvflow builds a key.
 *
 * Every key starts with `"kvflow"`, so an application may share its KV database.
 * Run ids sort by creation time; the indexes below let a reader list runs newest first,
 * by pipeline or by status, and let a worker find due work without scanning every run.
 *
 * @module
 */
import type { KvKey } from "./kv.ts";

const ROOT = "kvflow";

/**
 * A key's size as KV counts it against its limits (2 KiB a key, 80 KiB of keys a commit):
 * exact for strings and numbers, an upper bound for other parts.
 *
 * @param key the key
 * @returns its encoded size in bytes
 */
export function keySize(key: KvKey): number {
  let size = 0;
  for (const part of key) {
    if (typeof part === "number") size += 9;
    else if (typeof part === "boolean") size += 1;
    else if (typeof part === "bigint") size += 3 + Math.ceil(part.toString(16).length / 2);
    else if (typeof part === "string") {
      // a type byte, UTF-8 with each NUL escaped to two bytes, and a terminating NUL
      size += 2;
      for (let i = 0; i < part.length; i++) {
        const c = part.charCodeAt(i);
        if (c >= 0xd800 && c < 0xdc00 && i + 1 < part.length) {
          const next = part.charCodeAt(i + 1);
          if (next >= 0xdc00 && next < 0xe000) {
            // a surrogate pair is one character outside the BMP: four bytes of UTF-8
            size += 4;
            i++;
            continue;
          }
        }
        size += c === 0 ? 2 : c < 0x80 ? 1 : c < 0x800 ? 2 : 3;
      }
    } else if (part instanceof Uint8Array) size += 2 + 2 * part.byteLength;
    else size += 16;
  }
  return size;
}

/** The run record. */
export function run(runId: string): KvKey {
  return [ROOT, "run", runId];
}

/** Index of all runs by creation time. */
export function runsByTime(createdAt: number, runId: string): KvKey {
  return [ROOT, "runs_by_time", createdAt, runId];
}

/** Prefix of {@linkcode runsByTime}. */
export function runsByTimePrefix(): KvKey {
  return [ROOT, "runs_by_time"];
}

/** Index of a pipeline's runs by creation time. */
export function runsByPipeline(pipeline: string, createdAt: number, runId: string): KvKey {
  return [ROOT, "runs_by_pipeline", pipeline, createdAt, runId];
}

/** Prefix of {@linkcode runsByPipeline} for one pipeline. */
export function runsByPipelinePrefix(pipeline: string): KvKey {
  return [ROOT, "runs_by_pipeline", pipeline];
}

/** Index of runs by status, then creation time. */
export function runsByStatus(status: string, createdAt: number, runId: string): KvKey {
  return [ROOT, "runs_by_status", status, createdAt, runId];
}

/** Prefix of {@linkcode runsByStatus} for one status. */
export function runsByStatusPrefix(status: string): KvKey {
  return [ROOT, "runs_by_status", status];
}

/**
 * Index of a pipeline's runs by status, then creation time: lists one pipeline's failed
 * runs without reading the other pipelines' failures. The value `1` says the run is counted
 * in {@linkcode runCount}; entries written before the counters existed hold `null` until
 * the schema migration counts them.
 */
export function runsByPipelineStatus(
  pipeline: string,
  status: string,
  createdAt: number,
  runId: string,
): KvKey {
  return [ROOT, "runs_by_pipeline_status", pipeline, status, createdAt, runId];
}

/** Prefix of {@linkcode runsByPipelineStatus} for one pipeline and status. */
export function runsByPipelineStatusPrefix(pipeline: string, status: string): KvKey {
  return [ROOT, "runs_by_pipeline_status", pipeline, status];
}

/** Prefix of {@linkcode runsByPipeline} for every pipeline. */
export function allRunsByPipelinePrefix(): KvKey {
  return [ROOT, "runs_by_pipeline"];
}

/**
 * How many runs of a pipeline have a status: a `Deno.KvU64` summed in every commit that
 * creates a run or moves its status, the commit that also moves its index entries.
 */
export function runCount(pipeline: string, status: string): KvKey {
  return [ROOT, "run_count", pipeline, status];
}

/** Prefix of every {@linkcode runCount}. */
export function runCountPrefix(): KvKey {
  return [ROOT, "run_count"];
}

/**
 * A key no commit ever writes: building a mutation on it checks that a value can be
 * stored, without storing it.
 */
export function probe(): KvKey {
  return [ROOT, "probe"];
}

/** The schema version of the database: which migrations it has had. */
export function schema(): KvKey {
  return [ROOT, "schema"];
}

/** The lease of a run: who may write its checkpoints, and until when. */
export function lease(runId: string): KvKey {
  return [ROOT, "lease", runId];
}

/** Prefix of every {@linkcode lease}. */
export function leasePrefix(): KvKey {
  return [ROOT, "lease"];
}

/** An entry of the due-index: this run needs a look at time `at` (ms since epoch). */
export function due(at: number, runId: string): KvKey {
  return [ROOT, "due", at, runId];
}

/** Prefix of the due-index. */
export function duePrefix(): KvKey {
  return [ROOT, "due"];
}

/** The state of one step of a run. */
export function step(runId: string, stepName: string): KvKey {
  return [ROOT, "step", runId, stepName];
}

/** Prefix of every step state of a run. */
export function stepPrefix(runId: string): KvKey {
  return [ROOT, "step", runId];
}

/** The state of one item of a fan-out step. */
export function item(runId: string, stepName: string, index: number): KvKey {
  return [ROOT, "item", runId, stepName, index];
}

/** Prefix of the items of one fan-out step. */
export function itemPrefix(runId: string, stepName: string): KvKey {
  return [ROOT, "item", runId, stepName];
}

/** Prefix of every item of a run. */
export function itemRunPrefix(runId: string): KvKey {
  return [ROOT, "item", runId];
}

/** One attempt of a step (item -1) or of a fan-out item. */
export function attempt(runId: string, stepName: string, item: number, n: number): KvKey {
  return [ROOT, "attempt", runId, stepName, item, n];
}

/** Prefix of every attempt of a run. */
export function attemptPrefix(runId: string): KvKey {
  return [ROOT, "attempt", runId];
}

/**
 * The task a key holds the state ({@linkcode step}, {@linkcode item}) or an attempt
 * ({@linkcode attempt}) of, or null for any other key.
 */
export function taskOf(key: KvKey): { step: string; item: number; attempt: boolean } | null {
  if (key[0] !== ROOT) return null;
  if (key[1] === "step") return { step: key[3] as string, item: -1, attempt: false };
  if (key[1] === "item") return { step: key[3] as string, item: key[4] as number, attempt: false };
  if (key[1] === "attempt") {
    return { step: key[3] as string, item: key[4] as number, attempt: true };
  }
  return null;
}

/** One chunk of a large value or artifact. */
export function blobChunk(runId: string, blobId: string, index: number): KvKey {
  return [ROOT, "blob", runId, blobId, index];
}

/** Prefix of one blob's chunks. */
export function blobPrefix(runId: string, blobId: string): KvKey {
  return [ROOT, "blob", runId, blobId];
}

/**
 * A blob that its owner (a step's or item's output, an artifact) may not refer to: written
 * with the blob's first chunks and deleted by the checkpoint that refers to it, or written
 * when a rerun or a new artifact of the same name drops the reference. Whatever such a
 * marker still names once no writer can refer to the blob any more is reclaimed.
 */
export function blobPending(runId: string, blobId: string): KvKey {
  return [ROOT, "blob_pending", runId, blobId];
}

/** Prefix of a run's {@linkcode blobPending} markers. */
export function blobPendingPrefix(runId: string): KvKey {
  return [ROOT, "blob_pending", runId];
}

/** An artifact's metadata, by name. */
export function artifact(runId: string, name: string): KvKey {
  return [ROOT, "artifact", runId, name];
}

/** Prefix of a run's artifacts. */
export function artifactPrefix(runId: string): KvKey {
  return [ROOT, "artifact", runId];
}

/** The alert of a run's `seq`-th failure. */
export function alert(runId: string, seq: number): KvKey {
  return [ROOT, "alert", runId, seq];
}

/** Prefix of a run's alerts. */
export function alertPrefix(runId: string): KvKey {
  return [ROOT, "alert", runId];
}

/** An alert whose webhook has not been delivered yet. */
export function alertOutbox(runId: string, seq: number): KvKey {
  return [ROOT, "alert_outbox", runId, seq];
}

/** Prefix of the alert outbox. */
export function alertOutboxPrefix(): KvKey {
  return [ROOT, "alert_outbox"];
}

/** A tick whose run had not succeeded by its schedule's deadline: written once, by one worker. */
export function deadlineMiss(pipeline: string, tick: number): KvKey {
  return [ROOT, "deadline_miss", pipeline, tick];
}

/** Prefix of the missed deadlines of one pipeline, or of every pipeline. */
export function deadlineMissPrefix(pipeline?: string): KvKey {
  return pipeline === undefined ? [ROOT, "deadline_miss"] : [ROOT, "deadline_miss", pipeline];
}

/** The run that an `Idempotency-Key` created for a pipeline; written with the run. */
export function idempotency(pipeline: string, key: string): KvKey {
  return [ROOT, "idempotency", pipeline, key];
}

/** A cross-process counter (a `Deno.KvU64` summed atomically), such as lease takeovers. */
export function counter(name: string): KvKey {
  return [ROOT, "counter", name];
}

/** Prefix of every run's alerts. */
export function allAlertsPrefix(): KvKey {
  return [ROOT, "alert"];
}

/** A run of a pipeline that is queued, running or waiting: counted by overlap policies. */
export function activeRun(pipeline: string, runId: string): KvKey {
  return [ROOT, "active", pipeline, runId];
}

/** Prefix of {@linkcode activeRun} for one pipeline. */
export function activeRunPrefix(pipeline: string): KvKey {
  return [ROOT, "active", pipeline];
}

/** A pipeline's schedule state: the last tick it handled. */
export function schedule(pipeline: string): KvKey {
  return [ROOT, "schedule", pipeline];
}

/**
 * A run's pause: while it exists, no worker starts anything of the run (a holder finishes
 * its attempts in flight and releases it). Value: a `PauseState`.
 */
export function runPause(runId: string): KvKey {
  return [ROOT, "pause_run", runId];
}

/** A pipeline's pause: while it exists, its runs that never started are not claimed. */
export function pipelinePause(pipeline: string): KvKey {
  return [ROOT, "pause_pipeline", pipeline];
}

/** Prefix of {@linkcode pipelinePause}: every paused pipeline. */
export function pipelinePausePrefix(): KvKey {
  return [ROOT, "pause_pipeline"];
}

// ---- events and waits ----------------------------------------------------------------

/** A stored event, by id. */
export function event(id: string): KvKey {
  return [ROOT, "event", id];
}

/** Index of events by time sent. */
export function eventsByTime(at: number, id: string): KvKey {
  return [ROOT, "events_by_time", at, id];
}

/** Prefix of {@linkcode eventsByTime}. */
export function eventsByTimePrefix(): KvKey {
  return [ROOT, "events_by_time"];
}

/**
 * Index of events by name and correlation: the payload's `field` had `value` (field ""
 * and value "" index every event of the name). A wait that starts looks here first.
 */
export function eventIndex(
  name: string,
  field: string,
  value: string,
  at: number,
  id: string,
): KvKey {
  return [ROOT, "event_index", name, field, value, at, id];
}

/** Prefix of {@linkcode eventIndex} for one name and correlation. */
export function eventIndexPrefix(name: string, field: string, value: string): KvKey {
  return [ROOT, "event_index", name, field, value];
}

/**
 * The head of one (name, field, value): every send bumps it and every wait that starts
 * checks it, so an event and a wait that race on it are matched exactly once.
 */
export function eventHead(name: string, field: string, value: string): KvKey {
  return [ROOT, "event_head", name, field, value];
}

/** The prefix of every correlation's head ({@linkcode eventHead}). */
export function eventHeadPrefix(): KvKey {
  return [ROOT, "event_head"];
}

/**
 * A wait that an event may end: the run's step (and item) waits for `name` with this
 * correlation. Written in the commit that starts the wait; deleted by the send that ends
 * it, by its timeout, or by the run's cancel.
 */
export function waitEntry(
  name: string,
  field: string,
  value: string,
  runId: string,
  step: string,
  item: number,
): KvKey {
  return [ROOT, "wait", name, field, value, runId, step, item];
}

/** Prefix of {@linkcode waitEntry} for one name and correlation. */
export function waitEntryPrefix(name: string, field: string, value: string): KvKey {
  return [ROOT, "wait", name, field, value];
}

/** What a send or a child's end delivered to a waiting step (or item) of a run. */
export function inbox(runId: string, step: string, item: number): KvKey {
  return [ROOT, "inbox", runId, step, item];
}

/** Prefix of a run's {@linkcode inbox} entries. */
export function inboxPrefix(runId: string): KvKey {
  return [ROOT, "inbox", runId];
}

/**
 * A run's bell: rung (rewritten) by every delivery to its inbox. A parked run records the
 * bell's versionstamp; a different one makes it claimable before its due time.
 */
export function bell(runId: string): KvKey {
  return [ROOT, "bell", runId];
}

/** What an event did to a run: woke a wait, started the run, or did not match its schema. */
export function eventEffect(eventId: string, runId: string, step: string, item: number): KvKey {
  return [ROOT, "event_effect", eventId, runId, step, item];
}

/** Prefix of one event's {@linkcode eventEffect} entries. */
export function eventEffectPrefix(eventId: string): KvKey {
  return [ROOT, "event_effect", eventId];
}

/** An event whose deliveries did not fit its first commit: a worker finishes them. */
export function eventOutbox(id: string): KvKey {
  return [ROOT, "event_outbox", id];
}

/** Prefix of {@linkcode eventOutbox}. */
export function eventOutboxPrefix(): KvKey {
  return [ROOT, "event_outbox"];
}

// ---- retention -------------------------------------------------------------------------

/** Prefix of every {@linkcode eventEffect}. */
export function allEventEffectsPrefix(): KvKey {
  return [ROOT, "event_effect"];
}

/** Prefix of a run's {@linkcode alertOutbox} entries. */
export function alertOutboxRunPrefix(runId: string): KvKey {
  return [ROOT, "alert_outbox", runId];
}

/**
 * A run being pruned: written in the commit that deletes its record and index entries,
 * deleted with the last of what it owned. A prune that died between finds it and finishes.
 */
export function pruning(runId: string): KvKey {
  return [ROOT, "pruning", runId];
}

/** Prefix of every {@linkcode pruning} marker. */
export function pruningPrefix(): KvKey {
  return [ROOT, "pruning"];
}

/** The first key after every child run of `runId` (child ids are `<parent>:<step>…`). */
export function childRunsRange(runId: string): { start: KvKey; end: KvKey } {
  return { start: [ROOT, "run", `${runId}:`], end: [ROOT, "run", `${runId};`] };
}

/** Prefix of every blob chunk of a run. */
export function blobRunPrefix(runId: string): KvKey {
  return [ROOT, "blob", runId];
}

/** Prefix of every {@linkcode idempotency} entry. */
export function allIdempotencyPrefix(): KvKey {
  return [ROOT, "idempotency"];
}

/**
 * How many runs of a pipeline were pruned, by any process: a `Deno.KvU64` summed in the
 * commit that deletes each run's record.
 */
export function prunedCount(pipeline: string): KvKey {
  return [ROOT, "pruned_count", pipeline];
}

/** Prefix of every {@linkcode prunedCount}. */
export function prunedCountPrefix(): KvKey {
  return [ROOT, "pruned_count"];
}

/**
 * How many alerts of a pipeline were pruned (`failure`: a failed run's; `deadline`: a
 * missed deadline's, counted with its miss record), by any process: a `Deno.KvU64`
 * summed in the commit that deletes them, so `/metrics` counts stored plus pruned and its
 * counters never go down.
 */
export function prunedAlertCount(pipeline: string, kind: "failure" | "deadline"): KvKey {
  return [ROOT, "pruned_alerts", pipeline, kind];
}

/** Prefix of every {@linkcode prunedAlertCount}. */
export function prunedAlertCountPrefix(): KvKey {
  return [ROOT, "pruned_alerts"];
}

// ---- flow control ----------------------------------------------------------------------

/**
 * A slot of a concurrency limit (`define/flow.ts`): slots `0..max-1` of a (scope, key),
 * each held by at most one run or step attempt (its `SlotHolder`), taken with a
 * check that it is free.
 */
export function slot(scope: string, key: string, index: number): KvKey {
  return [ROOT, "slot", scope, key, index];
}

/** Prefix of the slots of one limit key. */
export function slotPrefix(scope: string, key: string): KvKey {
  return [ROOT, "slot", scope, key];
}

/** Prefix of every slot. */
export function allSlotsPrefix(): KvKey {
  return [ROOT, "slot"];
}

/**
 * A throttle's budget: entries `0..max-1` of a (scope, key), each the time it last let a
 * start through. A start takes an entry last used a period or more ago, so any period
 * holds at most `max` starts.
 */
export function throttleSlot(scope: string, key: string, index: number): KvKey {
  return [ROOT, "throttle", scope, key, index];
}

/** Prefix of one throttle key's entries. */
export function throttlePrefix(scope: string, key: string): KvKey {
  return [ROOT, "throttle", scope, key];
}

/** Prefix of every throttle entry. */
export function allThrottlePrefix(): KvKey {
  return [ROOT, "throttle"];
}

/**
 * A run held back by a full limit, in the order it will get a slot: `rank` is its
 * creation time less its priority's credit (first come, first served within a priority).
 */
export function limitQueue(scope: string, key: string, rank: number, runId: string): KvKey {
  return [ROOT, "limit_queue", scope, key, rank, runId];
}

/**
 * When a slot of a limit key was last freed: a run that found every slot taken commits
 * its hold checked against it, so a slot freed meanwhile makes it look again.
 */
export function limitRelease(scope: string, key: string): KvKey {
  return [ROOT, "limit_release", scope, key];
}

/** Prefix of every {@linkcode limitRelease}. */
export function allLimitReleasePrefix(): KvKey {
  return [ROOT, "limit_release"];
}

/**
 * Written by every commit that puts a run in a limit key's queue (its value: when). It is
 * listed first with the queue (a string part sorts before a number), so one read gives
 * both: a claim that checks the mark as it was when the queue was empty knows no run has
 * joined the queue since (`store/limit_view.ts`).
 */
export function limitQueueMark(scope: string, key: string): KvKey {
  return [ROOT, "limit_queue", scope, key, "mark"];
}

/** Whether a key listed under a limit key's queue is its mark, not a queued run. */
export function isLimitQueueMark(key: KvKey): boolean {
  return key.length === 5 && key[1] === "limit_queue";
}

/** Prefix of one limit key's queue. */
export function limitQueuePrefix(scope: string, key: string): KvKey {
  return [ROOT, "limit_queue", scope, key];
}

/** The run a burst of triggers with the same debounce key is gathering into. */
export function debounce(pipeline: string, key: string): KvKey {
  return [ROOT, "debounce", pipeline, key];
}

/** Prefix of a pipeline's debounce entries. */
export function debouncePrefix(pipeline: string): KvKey {
  return [ROOT, "debounce", pipeline];
}
