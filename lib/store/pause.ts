/**
 * Pausing and unpausing runs and pipelines. A pause is a key (`keys.runPause`,
 * `keys.pipelinePause`) that claims read: while it exists no worker starts anything of
 * the run (or, for a pipeline, of its runs that never started). A run nobody holds is
 * recorded `paused` at once, with no lease and no due entry; a run a worker holds is
 * released by its driver, which learns of the pause at its next look at the lease,
 * finishes the attempts in flight and records the run `paused` in one fenced commit.
 * Unpausing deletes the key and makes every run it held due now, in small commits.
 *
 * @module
 */
import { UsageError } from "../model/errors.ts";
import { isRunId, unknownRun } from "../model/run_id.ts";
import { type Lease, type PauseState, type RunRecord, TERMINAL } from "../model/records.ts";
import * as keys from "../kv/keys.ts";
import { moveDue, moveStatus } from "../kv/indexes.ts";
import { commitAtomic } from "../kv/commit.ts";
import type { StoreParts } from "./parts.ts";
import type { AtomicOperation, Kv, KvEntryMaybe } from "../kv/kv.ts";

/** Runs made due per commit when a pipeline is unpaused: about 9 mutations each. */
const UNPAUSE_BATCH = 10;

/**
 * Pauses a run. A run no worker holds is recorded `paused` in the same commit; a held
 * run keeps its status until its holder has finished the attempts in flight and released
 * it (the returned record then has `paused` set while its status is still `running`).
 * Pausing a paused run changes nothing.
 *
 * @throws {UsageError} `not_found` for an unknown run, `conflict` for one that ended
 */
export async function pauseRun(
  store: StoreParts,
  runId: string,
  reason = "Paused by request",
): Promise<RunRecord> {
  if (!isRunId(runId)) throw unknownRun(runId);
  for (let tries = 0; tries < 10; tries++) {
    const [runEntry, leaseEntry, pauseEntry] = await store.kv.getMany<
      [RunRecord, Lease, PauseState]
    >([keys.run(runId), keys.lease(runId), keys.runPause(runId)]);
    const run = runEntry.value;
    if (!run) throw unknownRun(runId);
    if (TERMINAL.has(run.status)) {
      throw new UsageError(`Run ${runId} already ${run.status}: nothing to pause`, "conflict");
    }
    if (run.status === "paused" && run.paused?.by === "run") return run;
    const now = store.clock.now();
    const pause: PauseState = pauseEntry.value ?? { by: "run", at: now, reason };
    const op = store.kv.atomic().check(pauseEntry, leaseEntry).set(keys.runPause(runId), pause);
    const held = leaseEntry.value !== null && leaseEntry.value.deadline > now;
    if (held) {
      // Marking the lease fences the holder's next checkpoint: it finds the mark, starts
      // no step after this commit, and releases the run as paused once the attempts in
      // flight are checkpointed. An idle holder sees the key at its next look (≤ 1 s).
      op.set(keys.lease(runId), { ...leaseEntry.value!, paused: true });
      if ((await commitAtomic(op)).ok) return { ...run, paused: pause };
      continue;
    }
    const next = pausedRecord(run, pause);
    op.check(runEntry);
    setRun(op, run, next);
    // an expired lease of a worker that died: nobody may hold a paused run
    if (leaseEntry.value) op.delete(keys.lease(runId));
    if ((await commitAtomic(op)).ok) return next;
  }
  throw new UsageError(`Run ${runId} changed too often to pause it; try again`, "conflict");
}

/**
 * Unpauses a run: it is queued and due now (a parked run then looks at its inbox and
 * takes what was delivered while it was paused, or parks again). A held run whose holder
 * has not released it yet just goes on. Unpausing a run that is not paused changes nothing.
 *
 * @throws {UsageError} `not_found` for an unknown run, `conflict` for one that ended
 */
export async function unpauseRun(store: StoreParts, runId: string): Promise<RunRecord> {
  if (!isRunId(runId)) throw unknownRun(runId);
  for (let tries = 0; tries < 10; tries++) {
    const [runEntry, pauseEntry] = await store.kv.getMany<[RunRecord, PauseState]>([
      keys.run(runId),
      keys.runPause(runId),
    ]);
    const run = runEntry.value;
    if (!run) throw unknownRun(runId);
    if (TERMINAL.has(run.status)) {
      throw new UsageError(`Run ${runId} already ${run.status}: nothing to unpause`, "conflict");
    }
    if (pauseEntry.value === null && run.status !== "paused") return run;
    const op = store.kv.atomic().check(pauseEntry).delete(keys.runPause(runId));
    let next = run;
    if (run.status === "paused") {
      next = resumedRecord(store, run);
      op.check(runEntry);
      setRun(op, run, next);
      store.wake(op, runId, 0);
    }
    if ((await commitAtomic(op)).ok) return next;
  }
  throw new UsageError(`Run ${runId} changed too often to unpause it; try again`, "conflict");
}

/**
 * Pauses a pipeline: its runs that have not started yet stay queued (and are recorded
 * `paused` by the claim that finds them), triggers are still accepted, and the scheduler
 * leaves its schedule state alone. Pausing a paused pipeline changes nothing.
 *
 * @returns the pause in effect
 */
export async function pausePipeline(
  store: StoreParts,
  pipeline: string,
  reason = "Paused by request",
): Promise<PauseState> {
  for (let tries = 0; tries < 10; tries++) {
    const entry = await store.kv.get<PauseState>(keys.pipelinePause(pipeline));
    if (entry.value) return entry.value;
    const pause: PauseState = { by: "pipeline", at: store.clock.now(), reason };
    const op = store.kv.atomic().check(entry).set(keys.pipelinePause(pipeline), pause);
    if ((await commitAtomic(op)).ok) return pause;
  }
  throw new UsageError(`Pipeline '${pipeline}' changed too often to pause it; try again`);
}

/**
 * Unpauses a pipeline: deletes its pause, then makes each run its pause held due now,
 * {@linkcode UNPAUSE_BATCH} runs per commit (runs paused one by one stay paused).
 *
 * @returns how many runs it made due
 */
export async function unpausePipeline(store: StoreParts, pipeline: string): Promise<number> {
  await commitAtomic(store.kv.atomic().delete(keys.pipelinePause(pipeline)));
  let resumed = 0;
  for (let pass = 0; pass < 100; pass++) {
    const ids: string[] = [];
    const prefix = keys.runsByPipelineStatusPrefix(pipeline, "paused");
    for await (const e of store.kv.list({ prefix }, { limit: 1000 })) {
      ids.push(e.key[e.key.length - 1] as string);
    }
    let conflicts = 0;
    for (let i = 0; i < ids.length; i += UNPAUSE_BATCH) {
      const entries = await store.kv.getMany<RunRecord[]>(
        ids.slice(i, i + UNPAUSE_BATCH).map((id) => keys.run(id)),
      );
      const op = store.kv.atomic();
      let n = 0;
      for (const entry of entries) {
        const run = entry.value;
        if (run?.status !== "paused" || run.paused?.by !== "pipeline") continue;
        op.check(entry);
        setRun(op, run, resumedRecord(store, run));
        store.wake(op, run.id, 0);
        n++;
      }
      if (n === 0) continue;
      if ((await commitAtomic(op)).ok) resumed += n;
      else conflicts++;
    }
    // a run that changed meanwhile (claimed as paused just now, say): look again
    if (conflicts === 0 && ids.length < 1000) break;
  }
  return resumed;
}

/** The pause of a run, or null when it is not paused. */
export async function runPause(kv: Kv, runId: string): Promise<KvEntryMaybe<PauseState>> {
  return await kv.get<PauseState>(keys.runPause(runId));
}

/** The paused pipelines, by name. */
export async function pausedPipelines(kv: Kv): Promise<Map<string, PauseState>> {
  const out = new Map<string, PauseState>();
  for await (const e of kv.list<PauseState>({ prefix: keys.pipelinePausePrefix() })) {
    out.set(e.key[e.key.length - 1] as string, e.value);
  }
  return out;
}

/** `run` as a paused run: no due entry, and what paused it. */
export function pausedRecord(run: RunRecord, pause: PauseState): RunRecord {
  return { ...run, status: "paused", dueAt: null, paused: pause };
}

function resumedRecord(store: StoreParts, run: RunRecord): RunRecord {
  return { ...run, status: "queued", dueAt: store.clock.now(), paused: null };
}

function setRun(op: AtomicOperation, before: RunRecord, after: RunRecord): void {
  op.set(keys.run(after.id), after);
  moveDue(op, before, after);
  moveStatus(op, before, after);
}
