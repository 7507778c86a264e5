/**
 * A schedule's deadline per tick: the time by which a tick's run must have succeeded,
 * either a time of day in the schedule's zone (`"07:00"`) or a duration after the tick
 * (`"4h"`). Pure: parsing and the arithmetic of one tick's deadline.
 *
 * @module
 */
import { Cron } from "croner";
import { type Duration, formatMs, toMs } from "./duration.ts";

/**
 * How far back the deadline watch (`engine/deadlines.ts`) looks for missed ticks at most,
 * whatever the schedule: a prune keeps a miss record at least this long (and a day), or
 * the watch would find the tick again and alert twice.
 */
export const DEADLINE_LOOKBACK_MS = 7 * 86_400_000;

/** A resolved deadline: a time of day in the schedule's zone, or a delay after the tick. */
export type Deadline =
  | { readonly kind: "time"; readonly text: string; readonly cron: string }
  | { readonly kind: "after"; readonly text: string; readonly ms: number };

/**
 * Reads a schedule's `deadline` option.
 *
 * @param where the start of the error message, naming the pipeline
 * @param value `"HH:MM"`, `"HH:MM:SS"`, or a duration such as `"4h"`, `"90m"`, `"5s"`
 * @returns the deadline
 * @throws {TypeError} when the value is neither a time of day nor a positive duration
 */
export function parseDeadline(where: string, value: unknown): Deadline {
  const time = typeof value === "string" ? /^(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value) : null;
  if (time) {
    const [hours, minutes, seconds] = [time[1], time[2], time[3] ?? "0"].map(Number);
    if (hours < 24 && minutes < 60 && seconds < 60) {
      return { kind: "time", text: value as string, cron: `${seconds} ${minutes} ${hours} * * *` };
    }
  }
  let ms = NaN;
  try {
    ms = toMs(value as Duration, "deadline");
  } catch {
    // reported below, with both forms
  }
  if (ms > 0) {
    return { kind: "after", text: typeof value === "string" ? value.trim() : formatMs(ms), ms };
  }
  throw new TypeError(
    `${where}: deadline ${
      JSON.stringify(value)
    } is not valid (use a time of day in the schedule's zone like "07:00", or a duration after the tick like "4h")`,
  );
}

/**
 * The deadline of one tick: for a time of day, the first moment after the tick when the
 * clock in `timezone` shows it (the tick's day, or the next day when that time is not after
 * the tick; on a DST change a time that does not exist moves to the first moment after the
 * gap, and a time that occurs twice counts the first time); for a duration, the tick plus it.
 *
 * @param deadline the schedule's deadline
 * @param timezone the schedule's IANA time zone
 * @param tick the tick, ms since the epoch
 * @returns the deadline, ms since the epoch
 */
export function deadlineOf(deadline: Deadline, timezone: string, tick: number): number {
  if (deadline.kind === "after") return tick + deadline.ms;
  const cron = new Cron(deadline.cron, { timezone, paused: true });
  return cron.nextRun(new Date(tick))!.getTime();
}

/**
 * The latest tick time whose deadline has passed at `now` is at most the returned time:
 * ticks at or before it have deadlines at or before `now`, later ticks do not.
 *
 * @param deadline the schedule's deadline
 * @param timezone the schedule's IANA time zone
 * @param now ms since the epoch
 * @returns ms since the epoch
 */
export function lastTickDue(deadline: Deadline, timezone: string, now: number): number {
  if (deadline.kind === "after") return now - deadline.ms;
  const cron = new Cron(deadline.cron, { timezone, paused: true });
  // croner's previous runs exclude the current whole second; ask from the next one
  const [last] = cron.previousRuns(1, new Date(Math.floor(now / 1000) * 1000 + 1000));
  // a tick exactly at the deadline's time of day is due the next day
  return last ? last.getTime() - 1 : -Infinity;
}

/** The deadline as people read it: `07:00 Europe/Berlin` or `4h after the tick`. */
export function deadlineText(deadline: Deadline, timezone: string): string {
  return deadline.kind === "time"
    ? `${deadline.text} ${timezone}`
    : `${deadline.text} after the tick`;
}
