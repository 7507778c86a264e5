/**
 * Every size limit that shapes how kvflow writes to Deno KV, in one place: the limits KV
 * itself enforces, and the budgets kvflow keeps under them so that a commit always has
 * room for what must join it (a run record of up to 64 KiB and its index moves).
 *
 * Nothing else in kvflow writes one of these numbers.
 *
 * @module
 */

/** The most bytes one key may take: KV refuses a longer key. */
export const KV_KEY_BYTES = 2048;
/** The most bytes one value may take, structured-serialized. */
export const KV_VALUE_BYTES = 65_536;
/** Checks KV allows in one atomic commit: local KV. */
export const KV_COMMIT_CHECKS = 100;
/** Checks a remote KV server (KV Connect, Deno Deploy) allows in one atomic commit. */
export const REMOTE_KV_COMMIT_CHECKS = 10;
/**
 * Grouped commits kvflow keeps in flight at once on a remote KV (locally one: there a commit's
 * time is its fsync). Remotely a commit's time is its round trip and holds 10 checks, so one
 * at a time would cap a worker at 10 checkpoints a round trip.
 */
export const REMOTE_COMMITS_IN_FLIGHT = 16;
/** Mutations (sets, deletes, enqueues) KV allows in one atomic commit. */
export const KV_COMMIT_MUTATIONS = 1000;
/** Bytes of keys and values KV allows in one atomic commit (800 KiB). */
export const KV_COMMIT_BYTES = 800 * 1024;
/** Bytes of keys KV allows in one atomic commit (80 KiB). */
export const KV_COMMIT_KEY_BYTES = 80 * 1024;

/** Keys KV reads in one `getMany` ("Too many ranges" beyond). */
export const KV_GET_MANY_KEYS = 10;

/** The longest delay of a queue message (30 days). */
export const KV_ENQUEUE_DELAY_MS = 30 * 86_400_000;

/** Mutations kvflow puts in one commit of task records, markers or deletions. */
export const BATCH_MUTATIONS = 900;
/** Key bytes kvflow puts in one such commit; the rest is room for a run's index keys. */
export const BATCH_KEY_BYTES = 60_000;
/** Key and value bytes kvflow puts in one such commit. */
export const BATCH_BYTES = 600_000;

/** Bytes per chunk of a large value: under the value limit with room for the encoding. */
export const CHUNK_BYTES = 60_000;
/**
 * Chunks written per commit. A chunk commit stands alone (nothing joins it), so its
 * 12 × 60,000 bytes only need to fit under {@linkcode KV_COMMIT_BYTES}.
 */
export const CHUNKS_PER_COMMIT = 12;
/** Estimated size under which a value is stored inline without measuring it exactly. */
export const INLINE_ESTIMATE = 24_000;
/** Exact serialized size under which a value is stored inline, not as a blob. */
export const INLINE_BYTES = 48_000;
/** The largest value kvflow stores, inline or in chunks. */
export const MAX_VALUE_BYTES = 256 * 1024 * 1024;
/**
 * The most bytes a new run record may take (a value may take 64 KiB): the rest is room
 * for what a run adds later, such as its error.
 */
export const MAX_RUN_RECORD_BYTES = 48 * 1024;
