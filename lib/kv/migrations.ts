/**
 * The schema version of a kvflow database, and the one-time migration that brings a
 * database written by an older kvflow up to it. {@linkcode openEngine} runs it before the
 * engine changes anything.
 *
 * Version 2 keeps, for every run, an entry in the index by pipeline and status marked
 * counted, and a count per pipeline and status that every creation and status move sums
 * in its own commit. Older databases lack the entries (runs stored before the index
 * existed) or have them unmarked (runs stored before the counts existed); the migration
 * adds each missing entry and counts each run once.
 *
 * It is safe when several processes open the database at once, and when one dies midway:
 * every run is counted in a commit that checks both the run's index entry by pipeline
 * (which every status move rewrites) and its entry by pipeline and status (which counting
 * marks), so a run is counted once, under the status it has. The version is written once
 * every run was counted; a process that opens the database sooner migrates too, and stops
 * early when it sees another one finish.
 *
 * Every process must run this kvflow before the migration: an older one would create and
 * move runs without counting them.
 *
 * @module
 */
import * as keys from "./keys.ts";
import { keySize } from "./keys.ts";
import { commitAtomic } from "./commit.ts";
import { BATCH_KEY_BYTES } from "./limits.ts";
import { KvUnavailableError, UsageError } from "../model/errors.ts";
import { COUNTED } from "./indexes.ts";
import type { Kv, KvEntry, KvEntryMaybe, KvKey, KvListIterator } from "./kv.ts";

/** The database a migration works on, and whether it has queues. */
export interface MigrationTarget {
  /** The KV database. */
  readonly kv: Kv;
  /** Whether the KV has queues. */
  readonly queues: boolean;
}

/** The schema version this kvflow writes. A database without a version is at 1. */
export const SCHEMA_VERSION = 2;

/** What {@linkcode migrate} did. */
export interface MigrationResult {
  /** The version the database had. */
  from: number;
  /** The version it has now. */
  to: number;
  /** Runs this process counted (others may have counted some meanwhile). */
  counted: number;
}

/** Runs read between two looks at whether another process finished the migration. */
const LOOK_EVERY = 5000;

/**
 * Brings the database up to {@linkcode SCHEMA_VERSION}; does nothing (one or two reads)
 * when it is there already or holds no runs.
 *
 * @param store the store of the database
 * @returns the versions before and after, and how many runs this process counted
 * @throws {UsageError} when a newer kvflow wrote the database
 */
export async function migrate(store: MigrationTarget): Promise<MigrationResult> {
  const { kv } = store;
  const entry = await kv.get<number>(keys.schema());
  const from = entry.value ?? 1;
  if (from > SCHEMA_VERSION) {
    throw new UsageError(
      `Cannot open a database at schema version ${from}: this kvflow knows versions up to ` +
        `${SCHEMA_VERSION}; use the kvflow that wrote it`,
    );
  }
  if (from === SCHEMA_VERSION) return { from, to: from, counted: 0 };
  // A database without runs (new, or shared with an application) is left as it is: every
  // run this kvflow stores is counted, and the first run an engine creates in it, or else
  // the first open that finds runs, writes the version.
  for await (const _ of kv.list({ prefix: keys.allRunsByPipelinePrefix() }, { limit: 1 })) {
    try {
      return await migrateRuns(store, entry, from);
    } catch (error) {
      // A read-only database can still be read (status, runs); any write will say why not.
      if (error instanceof KvUnavailableError && error.problem === "read-only") {
        return { from, to: from, counted: 0 };
      }
      throw error;
    }
  }
  return { from, to: from, counted: 0 };
}

async function migrateRuns(
  store: MigrationTarget,
  entry: KvEntryMaybe<number>,
  from: number,
): Promise<MigrationResult> {
  const { kv } = store;
  const finishedElsewhere = async () =>
    ((await kv.get<number>(keys.schema())).value ?? 1) >= SCHEMA_VERSION;
  // Two checks a run; remote KV allows 10 checks a commit, local files and memory 100.
  const counted = await countRuns(kv, store.queues ? 50 : 5, finishedElsewhere);
  // A failed check means another process wrote the version first.
  await commitAtomic(kv.atomic().check(entry).set(keys.schema(), SCHEMA_VERSION));
  return { from, to: SCHEMA_VERSION, counted };
}

/** A run to count: its two index entries as read. */
interface Uncounted {
  byPipeline: KvEntry<string>;
  byStatus: { key: KvKey; versionstamp: string | null };
}

/**
 * Walks the index by pipeline (whose value is the run's status) beside the index by
 * pipeline and status, both in creation order, and counts each run whose entry by
 * pipeline and status is missing or unmarked: reads in large pages, no read per run.
 */
async function countRuns(
  kv: Kv,
  perCommit: number,
  finishedElsewhere: () => Promise<boolean>,
): Promise<number> {
  let counted = 0;
  let batch: Uncounted[] = [];
  let batchKeyBytes = 0;
  let pipeline: string | undefined;
  let streams = new Map<string, IndexStream>();
  let read = 0;
  const entries = kv.list<string>({ prefix: keys.allRunsByPipelinePrefix() }, {
    batchSize: 500,
  });
  for await (const e of entries) {
    if (++read % LOOK_EVERY === 0 && await finishedElsewhere()) return counted;
    const [, , p, createdAt, runId] = e.key as [string, string, string, number, string];
    const status = e.value;
    if (p !== pipeline) {
      pipeline = p;
      streams = new Map();
    }
    let stream = streams.get(status);
    if (!stream) {
      stream = new IndexStream(kv, keys.runsByPipelineStatusPrefix(p, status));
      streams.set(status, stream);
    }
    const found = await stream.find(createdAt, runId);
    if (found?.value === COUNTED) continue;
    const key = keys.runsByPipelineStatus(p, status, createdAt, runId);
    const size = 2 * keySize(key);
    // KV allows 80 KiB of keys a commit: long pipeline names and ids fill it first
    if (batch.length >= perCommit || batchKeyBytes + size > BATCH_KEY_BYTES) {
      counted += await commitCounts(kv, batch);
      batch = [];
      batchKeyBytes = 0;
    }
    batch.push({ byPipeline: e, byStatus: { key, versionstamp: found?.versionstamp ?? null } });
    batchKeyBytes += size;
  }
  return counted + await commitCounts(kv, batch);
}

/** Counts a batch in one commit, or, when something in it changed since it was read, run by run. */
async function commitCounts(kv: Kv, batch: Uncounted[]): Promise<number> {
  if (batch.length === 0) return 0;
  if (await commitOnce(kv, batch)) return batch.length;
  let counted = 0;
  for (const run of batch) counted += await countOne(kv, run.byPipeline.key);
  return counted;
}

async function commitOnce(kv: Kv, batch: Uncounted[]): Promise<boolean> {
  const op = kv.atomic();
  const sums = new Map<string, { key: KvKey; n: bigint }>();
  for (const { byPipeline, byStatus } of batch) {
    op.check(byPipeline, byStatus).set(byStatus.key, COUNTED);
    const key = keys.runCount(byPipeline.key[2] as string, byPipeline.value);
    const id = JSON.stringify(key);
    sums.set(id, { key, n: (sums.get(id)?.n ?? 0n) + 1n });
  }
  for (const { key, n } of sums.values()) op.sum(key, n);
  return (await commitAtomic(op)).ok;
}

/** Counts one run afresh, unless it is counted already; 1 when this process counted it. */
async function countOne(kv: Kv, byPipelineKey: KvKey): Promise<number> {
  const [, , pipeline, createdAt, runId] = byPipelineKey as [
    string,
    string,
    string,
    number,
    string,
  ];
  for (let tries = 0; tries < 10; tries++) {
    const byPipeline = await kv.get<string>(byPipelineKey);
    if (byPipeline.value === null) return 0;
    const key = keys.runsByPipelineStatus(pipeline, byPipeline.value, createdAt, runId);
    const byStatus = await kv.get(key);
    if (byStatus.value === COUNTED) return 0;
    const uncounted = { byPipeline: byPipeline as KvEntry<string>, byStatus };
    if (await commitOnce(kv, [uncounted])) return 1;
  }
  throw new UsageError(
    `Run ${runId} kept changing while the database was being migrated: open it again`,
    "conflict",
  );
}

/** Reads one index by pipeline and status forward, a page at a time, to find entries in order. */
class IndexStream {
  readonly #entries: KvListIterator<unknown>;
  /** The entry read last; undefined before the first read, null at the end. */
  #head: KvEntry<unknown> | null | undefined;

  constructor(kv: Kv, prefix: KvKey) {
    this.#entries = kv.list({ prefix }, { batchSize: 500 });
  }

  /** The entry of a run, or null; runs must be asked for in creation order. */
  async find(createdAt: number, runId: string): Promise<KvEntry<unknown> | null> {
    while (true) {
      if (this.#head === undefined) {
        const next = await this.#entries.next();
        this.#head = next.done ? null : next.value;
      }
      if (this.#head === null) return null;
      const at = this.#head.key[4] as number;
      const id = this.#head.key[5] as string;
      if (at < createdAt || (at === createdAt && id < runId)) {
        this.#head = undefined;
        continue;
      }
      return at === createdAt && id === runId ? this.#head : null;
    }
  }
}
