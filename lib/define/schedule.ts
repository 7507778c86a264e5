/**
 * Schedules as a pipeline declares them: cron expression, time zone, catch-up and
 * overlap policies, checked when the pipeline is defined.
 *
 * @module
 */
import { Cron } from "croner";
import { type Deadline, parseDeadline } from "./deadline.ts";
import { checkPriority } from "./flow.ts";

/** When a pipeline runs on its own. */
export interface ScheduleOptions {
  /** Cron expression: five fields, or six with seconds first (`"0 3 * * *"`). */
  cron: string;
  /** IANA time zone the expression is read in, DST included. Default `"UTC"`. */
  timezone?: string;
  /**
   * Ticks missed while nothing ran: `"none"` skips them, `"latest"` runs the most recent
   * one, `"all"` runs each (at most `catchupLimit`, the most recent). Default `"latest"`.
   */
  catchup?: "none" | "latest" | "all";
  /** Most missed ticks `catchup: "all"` runs. Default 10. */
  catchupLimit?: number;
  /**
   * A tick while `maxActive` runs of the pipeline are still active: `"skip"` drops it,
   * `"queue"` starts it once one ends, `"allow"` starts it anyway. Default `"skip"`.
   */
  overlap?: "skip" | "queue" | "allow";
  /** Active runs allowed before `overlap` applies. Default 1. */
  maxActive?: number;
  /**
   * When each tick's run must have succeeded, or an alert goes out: a time of day in the
   * schedule's zone (`"07:00"`, `"07:00:30"`; the first such moment after the tick, so the
   * next day when it is not after the tick's time), or a duration after the tick (`"4h"`).
   * Default: none.
   */
  deadline?: string;
  /** The priority of its ticks' runs (scheduled and backfilled), 0 to 10. Default: the pipeline's. */
  priority?: number;
}

/** A schedule with every field resolved. */
export interface Schedule {
  /** Cron expression. */
  readonly cron: string;
  /** IANA time zone. */
  readonly timezone: string;
  /** Catch-up policy. */
  readonly catchup: "none" | "latest" | "all";
  /** Most missed ticks run by `all`. */
  readonly catchupLimit: number;
  /** Overlap policy. */
  readonly overlap: "skip" | "queue" | "allow";
  /** Active runs allowed. */
  readonly maxActive: number;
  /** When each tick's run must have succeeded, or null. */
  readonly deadline: Deadline | null;
  /** The priority of its ticks' runs, when it gives one. */
  readonly priority?: number;
}

export function resolveSchedule(pipelineName: string, options: ScheduleOptions): Schedule {
  const where = `Invalid schedule of pipeline '${pipelineName}'`;
  const timezone = options.timezone ?? "UTC";
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: timezone });
  } catch {
    throw new RangeError(
      `${where}: unknown time zone ${
        JSON.stringify(timezone)
      } (use an IANA name like "Europe/Berlin")`,
    );
  }
  try {
    new Cron(options.cron, { timezone, paused: true });
  } catch (error) {
    throw new TypeError(
      `${where}: cron ${JSON.stringify(options.cron)} is not valid: ${
        error instanceof Error ? error.message : error
      }`,
    );
  }
  const catchup = options.catchup ?? "latest";
  if (!["none", "latest", "all"].includes(catchup)) {
    throw new RangeError(
      `${where}: catchup must be "none", "latest" or "all", got ${JSON.stringify(catchup)}`,
    );
  }
  const overlap = options.overlap ?? "skip";
  if (!["skip", "queue", "allow"].includes(overlap)) {
    throw new RangeError(
      `${where}: overlap must be "skip", "queue" or "allow", got ${JSON.stringify(overlap)}`,
    );
  }
  const catchupLimit = options.catchupLimit ?? 10;
  const maxActive = options.maxActive ?? 1;
  for (
    const [field, value] of [["catchupLimit", catchupLimit], ["maxActive", maxActive]] as const
  ) {
    if (!Number.isInteger(value) || value < 1 || value > 1000) {
      throw new RangeError(`${where}: ${field} must be an integer from 1 to 1000, got ${value}`);
    }
  }
  const deadline = options.deadline === undefined ? null : parseDeadline(where, options.deadline);
  const schedule: Schedule = {
    cron: options.cron,
    timezone,
    catchup,
    catchupLimit,
    overlap,
    maxActive,
    deadline,
  };
  if (options.priority === undefined) return schedule;
  try {
    return {
      ...schedule,
      priority: checkPriority(`schedule of pipeline '${pipelineName}'`, options.priority),
    };
  } catch (error) {
    throw new RangeError((error as Error).message);
  }
}
