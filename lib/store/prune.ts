/**
 * Retention: deleting ended runs past their pipeline's retention, with everything they
 * own, in small commits.
 *
 * The commit that deletes a run's record, its index entries and due entry (and moves its
 * count down) is checked against the run record's versionstamp as read (an ended run): a
 * resume or rerun racing it either committed first (the check fails, the run is active
 * again and left alone) or finds no run. What the run owns (steps, items, attempts with
 * their logs, artifacts, blob chunks and markers, alerts and their outbox entries, inbox,
 * bell, lease, event effects, its idempotency key) goes in that same commit when it fits
 * the batch budgets of `kv/limits.ts`. A larger run leaves a {@linkcode keys.pruning}
 * marker in that commit instead, and the rest is deleted in commits within the budgets,
 * each checked that the run record is still absent; the last deletes the marker. A prune that dies in between leaves the marker, and the next prune
 * finishes it first. Child runs go with their parent, and never while it is active: a
 * child whose parent still exists is left to the parent's prune.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import { COUNTED, dueIndexTime, releaseGate } from "../kv/indexes.ts";
import { addWrites, commitAtomic, type KvWrite, splitWrites } from "../kv/commit.ts";
import { getAll } from "../kv/reads.ts";
import { type RunRecord, type RunStatus, TERMINAL } from "../model/records.ts";
import { DEFAULT_RETENTION, type Retention } from "../define/retention.ts";
import { DEADLINE_LOOKBACK_MS } from "../define/deadline.ts";
import type { StoreParts } from "./parts.ts";
import type { FlowPruneReport } from "./flow_prune.ts";
import type { AtomicOperation, KvEntry, KvKey } from "../kv/kv.ts";

/** Minus one for a `sum` on a `Deno.KvU64`. */
const MINUS_ONE = (1n << 64n) - 1n;

/** The ended statuses, each with a retention. */
const ENDED = ["succeeded", "failed", "cancelled"] as const;

/** What {@linkcode pruneRuns} prunes. */
export interface PruneOptions {
  /** Each pipeline's retention; a pipeline it does not know keeps the default. */
  retentionOf?: (pipeline: string) => Retention | undefined;
  /** Prunes runs ended longer ago than this (ms), whatever their retention says. */
  olderThanMs?: number;
  /** Only this pipeline's runs. */
  pipeline?: string;
  /** Counts what would go, deletes nothing. */
  dryRun?: boolean;
  /** Stops after this many runs (the background prune takes a few at a time). */
  maxRuns?: number;
}

/** What {@linkcode pruneRuns} removed (or, dry, would remove). */
export interface PruneReport {
  /** Runs removed. */
  runs: number;
  /** Keys deleted, the runs' own and their index entries. */
  keys: number;
  /** Runs removed by pipeline, then ended status. */
  byPipeline: Record<string, Partial<Record<RunStatus, number>>>;
  /** Whether it stopped at `maxRuns` with more to prune. */
  more: boolean;
  /**
   * Missed-deadline records it removed (with the alert of a tick that had no run): kept
   * as long as the pipeline's failed runs, and never less than the deadline watch looks
   * back (a week) and a day.
   */
  deadlineMisses: number;
  /**
   * The state of idle limit and throttle keys it forgot (`store/flow_prune.ts`): a prune
   * of every pipeline does that too.
   */
  flow?: FlowPruneReport;
  /** Events past their retention it removed: a prune of every pipeline does that too. */
  events?: number;
  /**
   * Heads of event correlations that only a wait past the event retention bumped last (a
   * wait that timed out, with no event ever sent for it), forgotten with the events.
   */
  waitHeads?: number;
}

/** Keys of other runs' entries found by scans that a run's id alone cannot find. */
interface Scans {
  due: Map<string, KvKey[]>;
  effects: Map<string, KvKey[]>;
  /**
   * Idempotency entries by the run they name, for runs created before run records named
   * their key and for debounced runs; read when first needed.
   */
  idempotency: Map<string, KvKey[]> | null;
}

/** What a marker keeps of a run to find what it owned once the record is gone. */
interface PruningMarker {
  pipeline: string;
  extra: KvKey[];
}

/**
 * Prunes ended runs past their retention (or `olderThanMs`), children with their parent.
 *
 * @param store the store
 * @param options which runs, dry or not, how many
 * @returns what it removed, or would remove
 */
export async function pruneRuns(
  store: StoreParts,
  options: PruneOptions = {},
): Promise<PruneReport> {
  const report: PruneReport = {
    runs: 0,
    keys: 0,
    byPipeline: {},
    more: false,
    deadlineMisses: 0,
  };
  if (!options.dryRun) await finishMarkers(store);
  const now = store.clock.now();
  const max = options.maxRuns ?? Infinity;
  let scans: Scans | null = null;
  for (const pipeline of await pipelinesWithRuns(store, options.pipeline)) {
    const retention = options.retentionOf?.(pipeline) ?? DEFAULT_RETENTION;
    for (const status of ENDED) {
      const cutoff = now - (options.olderThanMs ?? retention[status]);
      // a run ends after it is created: one created since the cutoff ended since too
      const iter = store.kv.list({
        prefix: keys.runsByPipelineStatusPrefix(pipeline, status),
        end: keys.runsByPipelineStatus(pipeline, status, cutoff, ""),
      });
      for await (const index of iter) {
        if (report.runs >= max) {
          report.more = true;
          return report;
        }
        const entry = await store.kv.get<RunRecord>(keys.run(index.key[5] as string));
        const run = entry.value;
        if (!run || !TERMINAL.has(run.status) || run.endedAt === null || run.endedAt >= cutoff) {
          continue;
        }
        // a child goes with its parent, never while the parent exists
        if (run.parent && (await store.kv.get(keys.run(run.parent.runId))).value) continue;
        scans ??= await scan(store);
        await pruneTree(store, entry as KvEntry<RunRecord>, scans, options, report);
      }
    }
  }
  await pruneDeadlineMisses(store, options, report);
  return report;
}

/** A missed deadline's record is kept at least this long, however short the retention. */
const KEEP_MISSES_MS = DEADLINE_LOOKBACK_MS + 86_400_000;

/**
 * Removes missed-deadline records (`keys.deadlineMiss`) past the pipeline's retention for
 * failed runs (or `olderThanMs`), but never one the deadline watch could still look at,
 * which would alert its tick again. A tick that had no run also leaves the miss's alert
 * and its outbox entry (a run's own prune takes them otherwise). Each in a commit checked
 * against the record and the run as read; counted in `keys.prunedAlertCount`.
 */
async function pruneDeadlineMisses(
  store: StoreParts,
  options: PruneOptions,
  report: PruneReport,
): Promise<void> {
  const now = store.clock.now();
  const max = options.maxRuns ?? Infinity;
  const pipelines = new Set<string>();
  if (options.pipeline !== undefined) pipelines.add(options.pipeline);
  else {
    for await (const e of store.kv.list({ prefix: keys.deadlineMissPrefix() })) {
      pipelines.add(e.key[2] as string);
    }
  }
  let seen = 0;
  for (const pipeline of pipelines) {
    const retention = options.retentionOf?.(pipeline) ?? DEFAULT_RETENTION;
    const cutoff = now - Math.max(options.olderThanMs ?? retention.failed, KEEP_MISSES_MS);
    const iter = store.kv.list<{ runId: string }>({
      prefix: keys.deadlineMissPrefix(pipeline),
      end: keys.deadlineMiss(pipeline, cutoff),
    });
    for await (const miss of iter) {
      if (seen++ >= max) {
        report.more = true;
        return;
      }
      const runId = miss.value.runId;
      const run = await store.kv.get(keys.run(runId));
      if (options.dryRun) {
        report.deadlineMisses++;
        continue;
      }
      const op = store.kv.atomic().check(miss, run).delete(miss.key);
      if (run.versionstamp === null) {
        op.delete(keys.alert(runId, 0)).delete(keys.alertOutbox(runId, 0));
      }
      op.sum(keys.prunedAlertCount(pipeline, "deadline"), 1n);
      if ((await commitAtomic(op)).ok) report.deadlineMisses++;
    }
  }
}

/** The pipelines that have counted runs: every one, or just `only`. */
async function pipelinesWithRuns(store: StoreParts, only?: string): Promise<string[]> {
  if (only !== undefined) return [only];
  const names = new Set<string>();
  for await (const e of store.kv.list({ prefix: keys.runCountPrefix() })) {
    names.add(e.key[2] as string);
  }
  return [...names];
}

/** Due entries, event effects and idempotency entries by run, read once per prune. */
async function scan(store: StoreParts): Promise<Scans> {
  const scans: Scans = { due: new Map(), effects: new Map(), idempotency: null };
  for await (const e of store.kv.list({ prefix: keys.duePrefix() })) {
    push(scans.due, e.key[3] as string, e.key);
  }
  // events are pruned after their own retention, with their effects; an event's record
  // also lists the runs it started, as history (the API leaves out the ones gone)
  for await (const e of store.kv.list({ prefix: keys.allEventEffectsPrefix() })) {
    push(scans.effects, e.key[3] as string, e.key);
  }
  return scans;
}

function push(map: Map<string, KvKey[]>, id: string, key: KvKey): void {
  const list = map.get(id);
  if (list) list.push(key);
  else map.set(id, [key]);
}

/** Prunes a run's ended children, then the run; nothing when a child is still active. */
async function pruneTree(
  store: StoreParts,
  entry: KvEntry<RunRecord>,
  scans: Scans,
  options: PruneOptions,
  report: PruneReport,
): Promise<boolean> {
  const range = keys.childRunsRange(entry.value.id);
  for await (const child of store.kv.list<RunRecord>(range)) {
    if (child.value.parent?.runId !== entry.value.id) continue;
    if (!TERMINAL.has(child.value.status)) return false;
    if (!await pruneTree(store, child, scans, options, report)) return false;
  }
  return await pruneRun(store, entry, scans, options, report);
}

/** Prunes one ended run; false when it changed meanwhile and is left alone. */
async function pruneRun(
  store: StoreParts,
  entry: KvEntry<RunRecord>,
  scans: Scans,
  options: PruneOptions,
  report: PruneReport,
): Promise<boolean> {
  for (let tries = 0; tries < 3; tries++) {
    const run = entry.value;
    const extra: KvKey[] = [...scans.due.get(run.id) ?? [], ...scans.effects.get(run.id) ?? []];
    // the gate its end's freed slot left, when no sweep opened it since (a cancel, say)
    if (run.flow?.limit) extra.push(releaseGate(run));
    // A record from before runs named their key, and a debounced run that triggers with
    // keys of their own joined (its record names the first): found by a scan of every key.
    let idem: KvKey[] = run.idempotencyKey
      ? [keys.idempotency(run.pipeline, run.idempotencyKey)]
      : [];
    if ((run.idempotencyKey === undefined && run.trigger === "http") || run.flow?.debounce) {
      if (!scans.idempotency) {
        scans.idempotency = new Map();
        for await (const e of store.kv.list<string>({ prefix: keys.allIdempotencyPrefix() })) {
          push(scans.idempotency, e.value, e.key);
        }
      }
      // the scan found the run's own key too, if it is still the run's
      idem = scans.idempotency.get(run.id) ?? [];
    }
    const named = await getAll<string>(store.kv, idem);
    named.forEach((e, i) => {
      if (e.value === run.id) extra.push(idem[i]);
    });
    // the entry of the debounced burst the run gathered, when no later burst replaced it
    const burst = run.flow?.debounce ? keys.debounce(run.pipeline, run.flow.debounce.key) : null;
    if (burst && (await store.kv.get<{ runId: string }>(burst)).value?.runId === run.id) {
      extra.push(burst);
    }
    const byStatus = await store.kv.get(
      keys.runsByPipelineStatus(run.pipeline, run.status, run.createdAt, run.id),
    );
    const indexKeys = [
      keys.run(run.id),
      keys.runsByTime(run.createdAt, run.id),
      keys.runsByPipeline(run.pipeline, run.createdAt, run.id),
      keys.runsByStatus(run.status, run.createdAt, run.id),
      byStatus.key,
      keys.activeRun(run.pipeline, run.id),
    ];
    const due = dueIndexTime(run);
    if (due !== null) indexKeys.push(keys.due(due, run.id));
    const owned = await ownedKeys(store, run.id, extra);
    if (options.dryRun) {
      count(report, run, indexKeys.length + owned.length);
      return true;
    }
    // a run small enough goes in one commit; a larger one leaves a marker for the rest
    const whole = splitWrites([...owned, ...indexKeys].map((key): KvWrite[] => [[key, null]]))
      .length === 1;
    const op = store.kv.atomic().check(entry).check(byStatus);
    for (const key of indexKeys) op.delete(key);
    if (byStatus.value === COUNTED) op.sum(keys.runCount(run.pipeline, run.status), MINUS_ONE);
    op.sum(keys.prunedCount(run.pipeline), 1n);
    if (whole) {
      for (const key of owned) op.delete(key);
      countAlerts(op, run.pipeline, owned);
    } else op.set(keys.pruning(run.id), { pipeline: run.pipeline, extra } satisfies PruningMarker);
    if ((await commitAtomic(op)).ok) {
      const deleted = whole ? owned.length : await deleteOwned(store, run.id, run.pipeline, extra);
      count(report, run, indexKeys.length + deleted);
      return true;
    }
    // changed meanwhile: prune it only if it is still the ended run it was
    const again = await store.kv.get<RunRecord>(keys.run(run.id));
    if (
      !again.value || !TERMINAL.has(again.value.status) ||
      again.value.endedAt !== run.endedAt
    ) {
      return false;
    }
    entry = again as KvEntry<RunRecord>;
  }
  return false;
}

function count(report: PruneReport, run: RunRecord, deleted: number): void {
  report.runs++;
  report.keys += deleted;
  const byStatus = report.byPipeline[run.pipeline] ??= {};
  byStatus[run.status] = (byStatus[run.status] ?? 0) + 1;
}

/** Every key a run owns, found by its id, with `extra` keys found by scans. */
async function ownedKeys(store: StoreParts, runId: string, extra: KvKey[]): Promise<KvKey[]> {
  const found: KvKey[] = [];
  const prefixes = [
    keys.stepPrefix(runId),
    keys.itemRunPrefix(runId),
    keys.attemptPrefix(runId),
    keys.artifactPrefix(runId),
    keys.blobRunPrefix(runId),
    keys.blobPendingPrefix(runId),
    keys.alertPrefix(runId),
    keys.alertOutboxRunPrefix(runId),
    keys.inboxPrefix(runId),
  ];
  for (const prefix of prefixes) {
    for await (const e of store.kv.list({ prefix })) found.push(e.key);
  }
  const singles = [keys.bell(runId), keys.lease(runId), ...extra];
  for (let i = 0; i < singles.length; i += 10) {
    for (const e of await store.kv.getMany(singles.slice(i, i + 10))) {
      if (e.versionstamp !== null) found.push(e.key);
    }
  }
  return found;
}

/**
 * Adds to `op` the count of a failure's alerts among `deleted` (seq 0 is a missed
 * deadline's, counted with its miss record), in the commit that deletes them.
 */
function countAlerts(op: AtomicOperation, pipeline: string, deleted: readonly KvKey[]): void {
  const alerts = deleted.filter((k) => k[1] === "alert" && k[3] !== 0).length;
  if (alerts > 0) op.sum(keys.prunedAlertCount(pipeline, "failure"), BigInt(alerts));
}

/** Deletes what a run owned in commits within the budgets; the last drops its marker. */
async function deleteOwned(
  store: StoreParts,
  runId: string,
  pipeline: string,
  extra: KvKey[],
): Promise<number> {
  const owned = await ownedKeys(store, runId, extra);
  const writes: KvWrite[][] = owned.map((key) => [[key, null]]);
  writes.push([[keys.pruning(runId), null]]);
  for (const batch of splitWrites(writes)) {
    const op = store.kv.atomic().check({ key: keys.run(runId), versionstamp: null });
    addWrites(op, batch);
    countAlerts(op, pipeline, batch.map(([key]) => key));
    if (!(await commitAtomic(op)).ok) break; // a new run with this id: leave the rest
  }
  return owned.length;
}

/** Finishes the prunes that died after their first commit. */
async function finishMarkers(store: StoreParts): Promise<void> {
  for await (const e of store.kv.list<PruningMarker>({ prefix: keys.pruningPrefix() })) {
    await deleteOwned(store, e.key[2] as string, e.value.pipeline, e.value.extra);
  }
}
