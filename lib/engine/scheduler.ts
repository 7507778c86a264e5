/**
 * Schedules: the engine, not Deno's cron, decides which ticks are due. Deno's cron is
 * UTC-only, fires in every process, and forgets missed ticks; so each pipeline's schedule
 * state (the last tick handled) lives in KV, due ticks are computed with croner in the
 * schedule's time zone, and each tick's run has an id derived from (pipeline, tick),
 * created in the same atomic commit that advances the state. However many processes or
 * isolates look at the same moment, a tick gets one run.
 *
 * @module
 */
import { Cron } from "croner";
import type { Pipeline } from "../define/pipeline.ts";
import type { Schedule } from "../define/schedule.ts";
import { deadlineText } from "../define/deadline.ts";
import * as keys from "../kv/keys.ts";
import { commitAtomic } from "../kv/commit.ts";
import type { PauseState, RunRecord } from "../model/records.ts";
import type { Store } from "../store/store.ts";
import { UsageError } from "../model/errors.ts";

/** What KV keeps per scheduled pipeline. */
export interface ScheduleState {
  /** The last tick handled (run, skipped or caught up), ms since the epoch. */
  lastTick: number;
  /** When the state last changed. */
  updatedAt: number;
  /** Ticks dropped by catch-up or overlap so far (at most 1,000 counted per look). */
  skipped: number;
  /**
   * The tick overlap `queue` holds back until an active run ends: it runs then, however
   * late, since it was not missed but deferred.
   */
  queued?: number;
  /**
   * When the first look happened: deadlines are checked only for ticks after it, so a new
   * pipeline is not blamed for ticks from before it existed.
   */
  since?: number;
}

/** A tick whose run could not start yet, or was not started, and why. */
export interface TickDecision {
  /** Pipeline. */
  pipeline: string;
  /** The tick, ms since the epoch. */
  tick: number;
  /** What happened to it. */
  outcome: "created" | "exists" | "skipped" | "queued";
  /** The run, when one was created or existed. */
  runId?: string;
}

/** A tick counts as on time, not missed, this long after it. */
const ON_TIME_MS = 120_000;

/**
 * Runs created per commit: each adds a check, and a commit allows 10 checks on remote KV
 * (100 locally). A catch-up of more ticks takes several commits.
 */
const RUNS_PER_COMMIT = 8;

/** The ticks of a schedule after `afterMs` up to and including `untilMs`, at most `max`. */
export function ticksBetween(
  schedule: Schedule,
  afterMs: number,
  untilMs: number,
  max: number,
): number[] {
  const cron = new Cron(schedule.cron, { timezone: schedule.timezone, paused: true });
  const out: number[] = [];
  let from = new Date(afterMs);
  while (out.length < max) {
    const next = cron.nextRun(from);
    if (!next || next.getTime() > untilMs) break;
    out.push(next.getTime());
    from = next;
  }
  return out;
}

/** The next `n` ticks after `fromMs`. */
export function nextTicks(schedule: Schedule, fromMs: number, n: number): number[] {
  return ticksBetween(schedule, fromMs, Infinity, n);
}

/** The most recent ticks at or before `atMs`, newest first, at most `n`. */
export function previousTicks(schedule: Schedule, atMs: number, n: number): number[] {
  const cron = new Cron(schedule.cron, { timezone: schedule.timezone, paused: true });
  // croner returns the runs before the whole second its date falls in, so a tick is only
  // seen a second after it; ask from the next whole second (ticks are whole seconds).
  const nextSecond = Math.floor(atMs / 1000) * 1000 + 1000;
  return cron.previousRuns(n, new Date(nextSecond)).map((d) => d.getTime());
}

/** The calendar date of a tick in the schedule's time zone: the run's logical date. */
export function tickDate(schedule: Schedule, tick: number): string {
  return new Intl.DateTimeFormat("en-CA", {
    timeZone: schedule.timezone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
  }).format(new Date(tick));
}

/** The id of a tick's run: the same in every process, so a tick has one run. */
export function tickRunId(pipeline: string, tick: number): string {
  return `${pipeline}.${new Date(tick).toISOString().replace(/[-:]|\.\d{3}/g, "")}`;
}

/** Computes due ticks and creates their runs. One per engine; safe in many processes. */
export class Scheduler {
  readonly #store: Store;
  readonly #pipelines: ReadonlyMap<string, Pipeline<unknown>>;

  /**
   * Creates a scheduler.
   *
   * @param store where schedule state and runs live
   * @param pipelines the pipelines whose schedules it keeps
   */
  constructor(store: Store, pipelines: ReadonlyMap<string, Pipeline<unknown>>) {
    this.#store = store;
    this.#pipelines = pipelines;
  }

  /** The stored state of a pipeline's schedule, or null before its first look. */
  async state(pipeline: string): Promise<ScheduleState | null> {
    return (await this.#store.kv.get<ScheduleState>(keys.schedule(pipeline))).value;
  }

  /**
   * Looks at every schedule once: applies catch-up and overlap to the ticks due since the
   * last look and creates their runs.
   *
   * @returns what happened to each tick considered
   */
  async tick(): Promise<TickDecision[]> {
    const out: TickDecision[] = [];
    for (const pipeline of this.#pipelines.values()) {
      if (pipeline.schedule) out.push(...await this.#tickOne(pipeline, pipeline.schedule));
    }
    return out;
  }

  async #tickOne(pipeline: Pipeline<unknown>, schedule: Schedule): Promise<TickDecision[]> {
    const out: TickDecision[] = [];
    for (let tries = 0; tries < 5; tries++) {
      const now = this.#store.clock.now();
      const [entry, pause] = await this.#store.kv.getMany<[ScheduleState, PauseState]>([
        keys.schedule(pipeline.name),
        keys.pipelinePause(pipeline.name),
      ]);
      // Paused: the state stays where it is, so the unpause catches up by the policy.
      if (pause.value !== null) return out;
      if (!entry.value) {
        // First look: start from the latest tick, without a run for it, so deploying a
        // pipeline does not start a run for a tick from before it existed.
        const [latest] = previousTicks(schedule, now, 1);
        const state: ScheduleState = {
          lastTick: latest ?? now,
          updatedAt: now,
          skipped: 0,
          since: now,
        };
        const ok = await commitAtomic(
          this.#store.kv.atomic().check(entry).set(keys.schedule(pipeline.name), state),
        );
        if (ok.ok) return [];
        continue;
      }
      const plan = await this.#plan(pipeline, schedule, entry.value, now);
      if (!plan) return out;
      const op = this.#store.kv.atomic().check(entry, pause)
        .set(keys.schedule(pipeline.name), plan.state);
      for (const run of plan.runs) this.#store.addRunCreation(op, run);
      if ((await commitAtomic(op)).ok) {
        out.push(...plan.decisions);
        if (!plan.more) return out;
        tries = -1; // a full commit: plan the rest afresh
      }
    }
    return out;
  }

  async #plan(
    pipeline: Pipeline<unknown>,
    schedule: Schedule,
    state: ScheduleState,
    now: number,
  ): Promise<
    { state: ScheduleState; runs: RunRecord[]; decisions: TickDecision[]; more: boolean } | null
  > {
    const recent = previousTicks(schedule, now, schedule.catchupLimit)
      .filter((t) => t > state.lastTick)
      .reverse();
    if (recent.length === 0) return null;
    const latest = recent[recent.length - 1];
    let candidates = schedule.catchup === "all" ? recent : [latest];
    if (schedule.catchup === "none") {
      candidates = candidates.filter((t) => now - t <= ON_TIME_MS || t === state.queued);
    }
    const decisions: TickDecision[] = [];
    const runs: RunRecord[] = [];
    const existing = await this.#existing(pipeline.name, candidates);
    let room = schedule.overlap === "allow"
      ? Infinity
      : schedule.maxActive - await this.#store.countActive(pipeline.name);
    let lastTick = latest;
    let queued: number | undefined;
    let more = false;
    for (const tick of candidates) {
      const runId = tickRunId(pipeline.name, tick);
      if (existing.has(runId)) {
        decisions.push({ pipeline: pipeline.name, tick, outcome: "exists", runId });
        continue;
      }
      if (room <= 0) {
        if (schedule.overlap === "queue") {
          // leave this tick (and later ones) pending: the state stops just before it
          lastTick = tick - 1;
          queued = tick;
          decisions.push({ pipeline: pipeline.name, tick, outcome: "queued" });
          break;
        }
        decisions.push({ pipeline: pipeline.name, tick, outcome: "skipped" });
        continue;
      }
      if (runs.length === RUNS_PER_COMMIT) {
        lastTick = tick - 1;
        more = true;
        break;
      }
      room--;
      runs.push(this.#store.newRun(pipeline, {
        id: runId,
        tick,
        logicalDate: tickDate(schedule, tick),
        trigger: "schedule",
        priority: schedule.priority,
      }));
      decisions.push({ pipeline: pipeline.name, tick, outcome: "created", runId });
    }
    if (lastTick === state.lastTick) return null;
    // A full window may have older ticks before it, missed too: count them (boundedly:
    // croner takes ≈ 60 µs a tick).
    const beyond = recent.length === schedule.catchupLimit
      ? ticksBetween(schedule, state.lastTick, recent[0] - 1, 1000).length
      : 0;
    const dropped = beyond + recent.filter((t) => t <= lastTick).length - runs.length -
      decisions.filter((d) => d.outcome === "exists").length;
    return {
      state: {
        lastTick,
        updatedAt: now,
        skipped: state.skipped + Math.max(0, dropped),
        ...(state.since === undefined ? {} : { since: state.since }),
        ...(queued === undefined ? {} : { queued }),
      },
      runs,
      decisions,
      more,
    };
  }

  async #existing(pipeline: string, ticks: number[]): Promise<Set<string>> {
    const ids = ticks.map((t) => tickRunId(pipeline, t));
    const found = new Set<string>();
    for (let i = 0; i < ids.length; i += 10) {
      const entries = await this.#store.kv.getMany(ids.slice(i, i + 10).map((id) => keys.run(id)));
      for (const e of entries) if (e.value) found.add(e.key[2] as string);
    }
    return found;
  }
}

/**
 * The ticks a backfill covers: every tick from the start of day `from` to the end of day
 * `to`, in the schedule's time zone.
 *
 * @throws {UsageError} on malformed dates, a reversed range or more than `max` ticks
 */
export function backfillTicks(
  pipeline: Pipeline<unknown>,
  from: string,
  to: string,
  max = 10_000,
): number[] {
  const schedule = pipeline.schedule;
  if (!schedule) {
    throw new UsageError(
      `Pipeline '${pipeline.name}' has no schedule: backfill runs one run per schedule tick`,
    );
  }
  for (const [name, value] of [["--from", from], ["--to", to]]) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(value) || Number.isNaN(Date.parse(`${value}T00:00:00Z`))) {
      throw new UsageError(`Invalid ${name} ${JSON.stringify(value)}: use YYYY-MM-DD`);
    }
  }
  if (from > to) throw new UsageError(`Invalid range: --from ${from} is after --to ${to}`);
  // Scan a day beyond each end in UTC and keep the ticks whose local date is in range.
  const start = Date.parse(`${from}T00:00:00Z`) - 86_400_000;
  const end = Date.parse(`${to}T00:00:00Z`) + 2 * 86_400_000;
  const ticks = ticksBetween(schedule, start, end, max + 1000)
    .filter((t) => {
      const date = tickDate(schedule, t);
      return date >= from && date <= to;
    });
  if (ticks.length > max) {
    throw new UsageError(`Backfill of ${ticks.length} ticks is too large: at most ${max} at once`);
  }
  return ticks;
}

/** A schedule as people and scripts see it: its settings, last tick and next ticks. */
export interface ScheduleView {
  /** Cron expression. */
  cron: string;
  /** Time zone. */
  timezone: string;
  /** Catch-up policy. */
  catchup: Schedule["catchup"];
  /** Overlap policy. */
  overlap: Schedule["overlap"];
  /** Active runs allowed. */
  maxActive: number;
  /** When each tick's run must have succeeded (`07:00 Europe/Berlin`, `4h after the tick`), or null. */
  deadline: string | null;
  /** The last tick handled, ISO, or null before the first look. */
  lastTick: string | null;
  /** The next three ticks, ISO. */
  next: string[];
}

/** The view of a pipeline's schedule, or null when it has none. */
export async function scheduleView(
  scheduler: Scheduler,
  pipeline: Pipeline<unknown>,
  now: number,
): Promise<ScheduleView | null> {
  const s = pipeline.schedule;
  if (!s) return null;
  const state = await scheduler.state(pipeline.name);
  return {
    cron: s.cron,
    timezone: s.timezone,
    catchup: s.catchup,
    overlap: s.overlap,
    maxActive: s.maxActive,
    deadline: s.deadline ? deadlineText(s.deadline, s.timezone) : null,
    lastTick: state ? new Date(state.lastTick).toISOString() : null,
    next: nextTicks(s, now, 3).map((t) => new Date(t).toISOString()),
  };
}
