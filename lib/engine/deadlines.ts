/**
 * Deadline alerts: a scheduled pipeline with a `deadline` expects each tick's run to have
 * succeeded by then. Every worker looks in its sweep (before the schedules' ticks) at the
 * recent ticks whose deadline has passed; a tick whose run had not succeeded in time gets a
 * miss record and an alert in the outbox, in one commit that checks the miss record is
 * new, so however many workers look, a tick is alerted once. A worker that starts after
 * every worker was down at the deadline finds the miss the same way: the look reaches back
 * over the schedule's `catchupLimit` ticks, and never more than seven days.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import type { Schedule } from "../define/schedule.ts";
import { DEADLINE_LOOKBACK_MS, deadlineOf, deadlineText, lastTickDue } from "../define/deadline.ts";
import type { AlertRecord, DeadlineMissInfo } from "../alerts/alert.ts";
import * as keys from "../kv/keys.ts";
import { commitAtomic } from "../kv/commit.ts";
import { getAll } from "../kv/reads.ts";
import type { Kv } from "../kv/kv.ts";
import type { RunRecord } from "../model/records.ts";
import type { Store } from "../store/store.ts";
import { previousTicks, type ScheduleState, tickDate, tickRunId } from "./scheduler.ts";

/**
 * A deadline counts as passed this long after it: a run that ends just before its deadline
 * commits a moment later, and must not be read as missing it.
 */
const SETTLE_MS = 1000;

/** What KV keeps for a tick that missed its deadline. */
export interface DeadlineMiss extends DeadlineMissInfo {
  /** The pipeline. */
  pipeline: string;
  /** The tick's run (it may not exist). */
  runId: string;
  /** The tick's logical date. */
  logicalDate: string;
  /** When the miss was found. */
  foundAt: number;
}

/** Finds ticks that missed their deadline and stores one alert for each. */
export class DeadlineWatch {
  readonly #store: Store;
  readonly #pipelines: ReadonlyMap<string, Pipeline<unknown>>;
  readonly #channels: { webhook: boolean; email: boolean };
  /** Ticks already met or alerted, seen by this process: no need to read them again. */
  readonly #settled = new Set<string>();

  /**
   * Creates it.
   *
   * @param store where runs, schedule state and alerts live
   * @param pipelines the pipelines whose deadlines it watches
   * @param channels which alert channels are configured, so an alert queues their delivery
   */
  constructor(
    store: Store,
    pipelines: ReadonlyMap<string, Pipeline<unknown>>,
    channels: { webhook: boolean; email: boolean },
  ) {
    this.#store = store;
    this.#pipelines = pipelines;
    this.#channels = channels;
  }

  /**
   * Looks once at every pipeline with a deadline.
   *
   * @returns the alerts this call stored (another worker's are not returned)
   */
  async check(): Promise<AlertRecord[]> {
    const out: AlertRecord[] = [];
    if (this.#settled.size > 10_000) this.#settled.clear();
    for (const pipeline of this.#pipelines.values()) {
      const schedule = pipeline.schedule;
      if (schedule?.deadline) out.push(...await this.#checkOne(pipeline.name, schedule));
    }
    return out;
  }

  async #checkOne(pipeline: string, schedule: Schedule): Promise<AlertRecord[]> {
    const state = (await this.#store.kv.get<ScheduleState>(keys.schedule(pipeline))).value;
    if (!state) return [];
    const now = this.#store.clock.now();
    const since = Math.max(state.since ?? -Infinity, now - DEADLINE_LOOKBACK_MS);
    const ticks = previousTicks(
      schedule,
      lastTickDue(schedule.deadline!, schedule.timezone, now - SETTLE_MS),
      schedule.catchupLimit,
    ).filter((t) => t > since && !this.#settled.has(`${pipeline}@${t}`));
    if (ticks.length === 0) return [];
    const kv = this.#store.kv;
    const misses = await getAll<DeadlineMiss>(kv, ticks.map((t) => keys.deadlineMiss(pipeline, t)));
    const runs = await getAll<RunRecord>(kv, ticks.map((t) => keys.run(tickRunId(pipeline, t))));
    const out: AlertRecord[] = [];
    for (const [i, tick] of ticks.entries()) {
      const deadline = deadlineOf(schedule.deadline!, schedule.timezone, tick);
      const run = runs[i].value;
      if (misses[i].versionstamp !== null || metInTime(run, deadline)) {
        this.#settled.add(`${pipeline}@${tick}`);
        continue;
      }
      const runId = tickRunId(pipeline, tick);
      const miss: DeadlineMiss = {
        pipeline,
        runId,
        logicalDate: tickDate(schedule, tick),
        tick,
        at: deadline,
        rule: deadlineText(schedule.deadline!, schedule.timezone),
        reason: missReason(run, deadline),
        foundAt: now,
      };
      const alert: AlertRecord = {
        runId,
        pipeline,
        seq: 0,
        at: now,
        step: run?.status === "failed" ? run.error?.step ?? null : null,
        attempts: 0,
        message: `missed its deadline: ${miss.reason}`,
        logicalDate: miss.logicalDate,
        webhook: this.#channels.webhook ? "pending" : "none",
        email: this.#channels.email ? "pending" : "none",
        deadline: { tick, at: deadline, rule: miss.rule, reason: miss.reason },
      };
      const op = kv.atomic()
        .check(misses[i])
        .check({ key: keys.alert(runId, 0), versionstamp: null })
        .set(keys.deadlineMiss(pipeline, tick), miss)
        .set(keys.alert(runId, 0), alert);
      if (this.#channels.webhook || this.#channels.email) op.set(keys.alertOutbox(runId, 0), now);
      if ((await commitAtomic(op)).ok) out.push(alert);
      this.#settled.add(`${pipeline}@${tick}`);
    }
    return out;
  }
}

/** Whether the tick's run succeeded by the deadline. */
function metInTime(run: RunRecord | null, deadline: number): boolean {
  return run?.status === "succeeded" && run.endedAt !== null && run.endedAt <= deadline;
}

/** Why a tick's run had not succeeded by its deadline, as people read it. */
export function missReason(run: RunRecord | null, deadline: number): string {
  if (!run) return "no run (no worker was running at the tick, or the tick was skipped)";
  if (run.createdAt > deadline) {
    return `no run by the deadline (created late, at ${new Date(run.createdAt).toISOString()})`;
  }
  switch (run.status) {
    case "succeeded":
      return `succeeded late, at ${new Date(run.endedAt ?? 0).toISOString()}`;
    case "failed":
      return `failed${run.error?.step ? ` at step '${run.error.step}'` : ""}: ${
        run.error?.message ?? "unknown error"
      }`;
    case "cancelled":
      return "cancelled";
    case "queued":
      return run.startedAt === null ? "queued, not started" : "still running (queued again)";
    case "running":
      return "still running";
    case "waiting": {
      const wait = run.waitingFor;
      if (!wait) return "waiting";
      const what = wait.kind === "event"
        ? `event ${(wait.events ?? []).join(" or ")}`
        : wait.kind === "child"
        ? `child run ${wait.child ?? ""}`.trim()
        : `a sleep until ${new Date(wait.until).toISOString()}`;
      return `waiting at step '${wait.step}' for ${what}`;
    }
    case "paused":
      return `paused${run.paused?.reason ? `: ${run.paused.reason}` : ""}`;
  }
}

/**
 * The missed deadlines stored for a pipeline, newest first.
 *
 * @param kv the database
 * @param pipeline the pipeline
 * @param limit how many at most
 */
export async function deadlineMisses(
  kv: Kv,
  pipeline: string,
  limit = 10,
): Promise<DeadlineMiss[]> {
  const out: DeadlineMiss[] = [];
  const entries = kv.list<DeadlineMiss>(
    { prefix: keys.deadlineMissPrefix(pipeline) },
    { reverse: true, limit },
  );
  for await (const e of entries) out.push(e.value);
  return out;
}
