/**
 * Durations as users write them in step options: `500` (ms), `"500ms"`, `"2s"`, `"5m"`,
 * `"1h"`, `"1d"`.
 *
 * @module
 */

/** A duration in milliseconds, or a string such as `"2s"`, `"5m"`, `"1h"`. */
export type Duration = number | `${number}${"ms" | "s" | "m" | "h" | "d"}`;

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Converts a {@linkcode Duration} to milliseconds.
 *
 * @param value the duration
 * @param what names the option in the error message
 * @returns milliseconds, a finite non-negative number
 * @throws {TypeError} when the value is not a valid duration
 */
export function toMs(value: Duration, what = "duration"): number {
  if (typeof value === "number") {
    if (Number.isFinite(value) && value >= 0) return value;
  } else if (typeof value === "string") {
    const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value.trim());
    if (match) return Number(match[1]) * UNITS[match[2]];
  }
  throw new TypeError(
    `Cannot use ${what}: ${
      JSON.stringify(value)
    } is not a duration (use milliseconds or a string like "2s", "5m", "1h")`,
  );
}

/**
 * Formats milliseconds for people: `850ms`, `2.5s`, `3m 20s`.
 *
 * @param ms milliseconds
 * @returns a short human-readable string
 */
export function formatMs(ms: number): string {
  // Each form rounds to what it shows first, so 999.6 ms, 59,999 ms and 119,999 ms move up
  // to the next form instead of reading "1000ms", "60.0s" or "1m 60s".
  if (Math.round(ms) < 1000) return `${Math.round(ms)}ms`;
  if (Math.round(ms / 100) < 600) return `${(ms / 1000).toFixed(ms < 9_995 ? 2 : 1)}s`;
  const totalSeconds = Math.round(ms / 1000);
  const minutes = Math.floor(totalSeconds / 60);
  if (minutes < 60) return `${minutes}m ${totalSeconds % 60}s`;
  const hours = Math.floor(minutes / 60);
  // a wait of days (up to 365) reads in days from two days on
  if (hours < 48) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}
