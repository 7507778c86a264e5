/**
 * Money is integer cents of one currency everywhere in the nightly pipeline; it becomes
 * text only at the edges (reports, mails), here.
 *
 * @module
 */

/** The store's currency. */
export const CURRENCY = "EUR";

/**
 * Formats cents with thousands separators and two decimals.
 *
 * @example
 * ```ts
 * import { formatCents } from "./money.ts";
 * console.log(formatCents(-123456)); // "-1,234.56"
 * ```
 *
 * @param cents an integer amount
 * @returns the amount as text, without the currency
 */
export function formatCents(cents: number): string {
  const sign = cents < 0 ? "-" : "";
  const abs = Math.abs(cents);
  const units = Math.floor(abs / 100).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${sign}${units}.${(abs % 100).toString().padStart(2, "0")}`;
}

/**
 * Formats cents with the currency: `EUR 1,234.56`.
 *
 * @param cents an integer amount
 * @returns the amount with its currency
 */
export function formatMoney(cents: number): string {
  return `${CURRENCY} ${formatCents(cents)}`;
}

/**
 * Formats a rate in basis points as a percentage: 450 → `4.5%`.
 *
 * @param bps basis points (1 bp = 0.01 %)
 * @returns the percentage
 */
export function formatBps(bps: number): string {
  return `${(bps / 100).toFixed(bps % 100 === 0 ? 0 : bps % 10 === 0 ? 1 : 2)}%`;
}
