/**
 * Calendar dates as `YYYY-MM-DD` strings. The nightly pipeline works on store days, never
 * on instants: a night is a date, "yesterday" is the day before the run's logical date,
 * and no clock or timezone of the machine running it takes part.
 *
 * @module
 */

const DAY_MS = 86_400_000;
const WEEKDAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

/**
 * Adds days to a date.
 *
 * @example
 * ```ts
 * import { addDays } from "./dates.ts";
 * console.log(addDays("2026-11-01", -1)); // "2026-10-31"
 * ```
 *
 * @param date `YYYY-MM-DD`
 * @param days how many, negative to go back
 * @returns the date `days` later
 */
export function addDays(date: string, days: number): string {
  return new Date(Date.parse(`${date}T00:00:00Z`) + days * DAY_MS).toISOString().slice(0, 10);
}

/**
 * The first day of a date's month.
 *
 * @param date `YYYY-MM-DD`
 * @returns `YYYY-MM-01`
 */
export function monthStart(date: string): string {
  return `${date.slice(0, 7)}-01`;
}

/**
 * Every date from `from` to `to`, both included.
 *
 * @param from first date
 * @param to last date
 * @returns the dates in order; empty when `to` is before `from`
 */
export function daysBetween(from: string, to: string): string[] {
  const days: string[] = [];
  for (let day = from; day <= to; day = addDays(day, 1)) days.push(day);
  return days;
}

/**
 * A date as people read it in a report: `Saturday, 31 October 2026`.
 *
 * @param date `YYYY-MM-DD`
 * @returns the long English form
 */
export function longDate(date: string): string {
  const d = new Date(`${date}T00:00:00Z`);
  return `${WEEKDAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${
    MONTHS[d.getUTCMonth()]
  } ${d.getUTCFullYear()}`;
}

/**
 * A date in a mail subject: `Sat 31 Oct 2026`.
 *
 * @param date `YYYY-MM-DD`
 * @returns the short English form
 */
export function shortDate(date: string): string {
  const d = new Date(`${date}T00:00:00Z`);
  return `${WEEKDAYS[d.getUTCDay()].slice(0, 3)} ${d.getUTCDate()} ${
    MONTHS[d.getUTCMonth()].slice(0, 3)
  } ${d.getUTCFullYear()}`;
}
