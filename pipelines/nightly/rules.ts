/**
 * The commission rules, as data: change a rate here, not a branch in code. Rates are in
 * basis points (1 bp = 0.01 %, so 300 bp = 3 %).
 *
 * - A sale earns its category's `baseBps` on the part of it that keeps the salesperson's
 *   month-to-date net sales at or below their monthly quota, and `acceleratedBps` on the
 *   part above. A sale that crosses the quota is split at it.
 * - A return is clawed back at its category's `baseBps`, whatever the original sale
 *   earned, and lowers the month-to-date net sales.
 * - Month to date: net sales (sales less returns) from the 1st of the sales day's month.
 *
 * @module
 */

/** The commission rates of one product category. */
export interface CategoryRate {
  /** The category, as in the products table. */
  readonly category: string;
  /** Rate up to the monthly quota, in basis points. */
  readonly baseBps: number;
  /** Rate above the monthly quota, in basis points. */
  readonly acceleratedBps: number;
}

/** Commission rates by category: high-margin categories pay more. */
export const RATES: readonly CategoryRate[] = [
  { category: "Electronics", baseBps: 300, acceleratedBps: 450 },
  { category: "Appliances", baseBps: 500, acceleratedBps: 750 },
  { category: "Accessories", baseBps: 800, acceleratedBps: 1200 },
  { category: "Services", baseBps: 1000, acceleratedBps: 1500 },
];

/** The ledger accounts a commission is booked to. */
export const ACCOUNTS = {
  /** Debited: what the commissions cost the store. */
  expense: "6400 Commission expense",
  /** Credited: what the store owes its salespeople until payday. */
  payable: "2410 Commissions payable",
} as const;
