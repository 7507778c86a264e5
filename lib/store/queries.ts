/**
 * Reading runs: records, steps, items, attempts, outputs, artifacts, pages of runs,
 * leases, and the due-index a worker sweeps. Plain functions over an open KV database;
 * the one write, in {@linkcode dueRuns}, drops due-index entries that disagree with their
 * run.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import { isGate, openGate } from "./flow.ts";
import { UsageError } from "../model/errors.ts";
import { isRunId, unknownRun } from "../model/run_id.ts";
import {
  type AttemptRecord,
  type Lease,
  type RunRecord,
  type RunStatus,
  type TaskRecord,
  TERMINAL,
} from "../model/records.ts";
import type { RungDue } from "../model/events.ts";
import type { ArtifactMeta } from "../model/artifacts.ts";
import { readBlob } from "../kv/blobs.ts";
import { decodeValue } from "../kv/values.ts";
import { commitAtomic } from "../kv/commit.ts";
import { dueIndexTime, type GateDue } from "../kv/indexes.ts";
import { isDeadLocalHolder } from "../platform/process.ts";
import type { Kv, KvEntry, KvEntryMaybe, KvListIterator } from "../kv/kv.ts";

/** Filters of {@linkcode listRuns}. */
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

/** How many runs of a pipeline are queued, running or waiting. */
export async function countActive(kv: Kv, pipeline: string): Promise<number> {
  let count = 0;
  for await (const _ of kv.list({ prefix: keys.activeRunPrefix(pipeline) })) count++;
  return count;
}

/** The run an idempotency key created for a pipeline, or null when it created none. */
export async function runForIdempotencyKey(
  kv: Kv,
  pipeline: string,
  key: string,
): Promise<RunRecord | null> {
  const runId = (await kv.get<string>(keys.idempotency(pipeline, key))).value;
  return runId === null ? null : await getRun(kv, runId);
}

/** A run, or null when there is none with that id. */
export async function getRun(kv: Kv, runId: string): Promise<RunRecord | null> {
  if (!isRunId(runId)) return null;
  return (await kv.get<RunRecord>(keys.run(runId))).value;
}

/**
 * A run that must exist.
 *
 * @throws {UsageError} when there is no such run
 */
export async function requireRun(kv: Kv, runId: string): Promise<RunRecord> {
  const run = await getRun(kv, runId);
  if (!run) throw unknownRun(runId);
  return run;
}

/** The stored step records of a run, by step name. */
export async function getSteps(kv: Kv, runId: string): Promise<Map<string, TaskRecord>> {
  const steps = new Map<string, TaskRecord>();
  for await (const e of kv.list<TaskRecord>({ prefix: keys.stepPrefix(runId) })) {
    steps.set(e.key[e.key.length - 1] as string, e.value);
  }
  return steps;
}

/** The stored item records of a fan-out step, by index. */
export async function getItems(
  kv: Kv,
  runId: string,
  step: string,
): Promise<Map<number, TaskRecord>> {
  const items = new Map<number, TaskRecord>();
  for await (const e of kv.list<TaskRecord>({ prefix: keys.itemPrefix(runId, step) })) {
    items.set(e.key[e.key.length - 1] as number, e.value);
  }
  return items;
}

/** The stored attempts of a run, in step, item, attempt order. */
export async function getAttempts(kv: Kv, runId: string): Promise<AttemptRecord[]> {
  const attempts: AttemptRecord[] = [];
  for await (const e of kv.list<AttemptRecord>({ prefix: keys.attemptPrefix(runId) })) {
    attempts.push(e.value);
  }
  return attempts;
}

/** The output of a succeeded step (for fan-out steps, the list of item outputs). */
export async function getOutput(kv: Kv, runId: string, step: string): Promise<unknown> {
  const record = (await kv.get<TaskRecord>(keys.step(runId, step))).value;
  if (!record || record.status !== "succeeded") {
    throw new UsageError(`Step '${step}' of run ${runId} has no output yet`, "not_found");
  }
  if (record.output) return await decodeValue(kv, runId, record.output);
  const items = await getItems(kv, runId, step);
  const out: unknown[] = [];
  for (let i = 0; i < (record.items ?? 0); i++) {
    const item = items.get(i);
    out.push(item?.output ? await decodeValue(kv, runId, item.output) : undefined);
  }
  return out;
}

/** The artifacts a run has stored. */
export async function getArtifacts(kv: Kv, runId: string): Promise<ArtifactMeta[]> {
  const out: ArtifactMeta[] = [];
  for await (const e of kv.list<ArtifactMeta>({ prefix: keys.artifactPrefix(runId) })) {
    out.push(e.value);
  }
  return out;
}

/**
 * An artifact's metadata and bytes.
 *
 * @throws {UsageError} when the run has no artifact of that name
 */
export async function readArtifact(
  kv: Kv,
  runId: string,
  name: string,
): Promise<{ meta: ArtifactMeta; bytes: Uint8Array }> {
  const meta = (await kv.get<ArtifactMeta>(keys.artifact(runId, name))).value;
  if (!meta) throw new UsageError(`Run ${runId} has no artifact '${name}'`, "not_found");
  return { meta, bytes: await readBlob(kv, runId, meta.blob) };
}

/**
 * Runs newest first, optionally of one pipeline and one status, a page at a time.
 *
 * @throws {UsageError} on a limit out of range or a bad cursor
 */
export async function listRuns(kv: Kv, options: ListRunsOptions = {}): Promise<RunPage> {
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
  let iter: KvListIterator<unknown>;
  try {
    iter = kv.list({ prefix }, {
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
      const entries = await kv.getMany<RunRecord[]>(
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
export async function getLease(kv: Kv, runId: string): Promise<KvEntryMaybe<Lease>> {
  return await kv.get<Lease>(keys.lease(runId));
}

/** A due run found by a sweep, with its record as read when it was found due. */
export interface DueRun {
  runId: string;
  /** The run record as the sweep read it; null for a run a freed limit slot let start. */
  entry: KvEntry<RunRecord> | null;
}

/**
 * Ids of runs whose due-index entry is at or before `now`, oldest first. An entry that
 * disagrees with its run record (no such run, or the run is due at another time or not
 * at all) is deleted instead of returned: left in place, every sweep would list it
 * again, and entries at the head of the index would hide the due work behind them.
 */
export async function dueRuns(kv: Kv, now: number, limit: number): Promise<string[]> {
  return (await dueRunEntries(kv, now, limit)).map((d) => d.runId);
}

/** Options of {@linkcode dueRunEntries}. */
export interface DueRunOptions {
  /**
   * Which of the listed run ids (oldest first) to read and return; default all. Only the
   * chosen runs' records are read, so a sweep may list wide and read narrow.
   */
  choose?: (runIds: string[]) => string[];
}

/**
 * {@linkcode dueRuns}, with the run records as read: a claim may commit against them
 * without reading the run again.
 */
export async function dueRunEntries(
  kv: Kv,
  now: number,
  limit: number,
  options: DueRunOptions = {},
): Promise<DueRun[]> {
  let entries: [number, string][] = [];
  const iter = kv.list<string | RungDue | GateDue>({
    prefix: keys.duePrefix(),
    end: keys.due(now + 1, ""),
  }, {
    limit,
  });
  const rung = new Map<string, RungDue>();
  const gates: KvEntry<GateDue>[] = [];
  for await (const e of iter) {
    const at = e.key[2] as number, id = e.key[3] as string;
    // a freed limit slot: the runs it lets start are due instead
    if (isGate(e.value)) {
      gates.push(e as KvEntry<GateDue>);
      continue;
    }
    entries.push([at, id]);
    // a delivery's wake-up: due whatever the run record says, until the run takes it
    if (typeof e.value === "object" && e.value !== null) rung.set(`${at}\u0000${id}`, e.value);
  }
  if (options.choose) {
    const chosen = new Set(options.choose(entries.map(([, id]) => id)));
    entries = entries.filter(([, id]) => chosen.has(id));
  }
  const found: DueRun[] = [];
  const seen = new Set<string>();
  // getMany reads 10 keys: the chunks are read at once, not one round trip after another
  const chunks: [number, string][][] = [];
  for (let i = 0; i < entries.length; i += 10) chunks.push(entries.slice(i, i + 10));
  const reads = await Promise.all(
    chunks.map((chunk) => kv.getMany<RunRecord[]>(chunk.map(([, id]) => keys.run(id)))),
  );
  const drops: Promise<unknown>[] = [];
  chunks.forEach((chunk, c) => {
    const runs = reads[c];
    // Checked against the run as read, so a run that moved meanwhile keeps its entry.
    const drop = kv.atomic();
    let stale = 0;
    chunk.forEach(([at, id], j) => {
      const run = runs[j].value;
      const active = run && !TERMINAL.has(run.status);
      // a paused run takes its deliveries when unpaused: they stay in its inbox
      if (
        (run && dueIndexTime(run) === at) ||
        (active && run.status !== "paused" && rung.has(`${at}\u0000${id}`))
      ) {
        if (!seen.has(id)) found.push({ runId: id, entry: runs[j] as KvEntry<RunRecord> });
        seen.add(id);
        return;
      }
      drop.check(runs[j]).delete(keys.due(at, id));
      // a delivery to a run that ended meanwhile leads nowhere: its inbox entry goes too
      const delivery = rung.get(`${at}\u0000${id}`);
      if (delivery && !active) {
        drop.delete(keys.inbox(id, delivery.rung[0], delivery.rung[1])).delete(keys.bell(id));
      }
      stale++;
    });
    if (stale > 0) drops.push(commitAtomic(drop));
  });
  await Promise.all(drops);
  for (const gate of gates) {
    for (const id of await openGate(kv, gate, now)) {
      if (!seen.has(id)) found.push({ runId: id, entry: null });
      seen.add(id);
    }
  }
  return found;
}

/**
 * Runs whose lease is held by a process of this host that is gone (see
 * {@linkcode isDeadLocalHolder}): a worker started after a crash takes them over at
 * once instead of waiting out their leases.
 */
export async function orphanedRuns(
  kv: Kv,
  holder: Omit<Lease, "deadline">,
  limit: number,
): Promise<string[]> {
  const ids: string[] = [];
  if (limit <= 0) return ids;
  for await (const e of kv.list<Lease>({ prefix: keys.leasePrefix() })) {
    if (isDeadLocalHolder(e.value, holder)) ids.push(e.key[2] as string);
    if (ids.length >= limit) break;
  }
  return ids;
}

/** The earliest due-index entry's time, or null when nothing is due. */
export async function nextDue(kv: Kv): Promise<number | null> {
  for await (const e of kv.list({ prefix: keys.duePrefix() }, { limit: 1 })) {
    return e.key[2] as number;
  }
  return null;
}
