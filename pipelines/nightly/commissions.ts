/**
 * Stage 2, `commissions`: what each salesperson earned on the night, by the rules in
 * `rules.ts`.
 *
 * Rounding: a line's exact commission is `cents × basis points`, an integer in units of
 * 1/10,000 cent. Each line is rounded once to whole cents, half away from zero, and a
 * salesperson's commission is the sum of their rounded lines. So every total in a report
 * adds up from the lines printed above it, and a return claws back exactly what the same
 * sale earned at the base rate.
 *
 * @module
 */
import { z } from "zod";
import { NonRetryableError, step } from "../../lib/mod.ts";
import { type Night, pullSales, type SaleLine } from "./pull_sales.ts";
import { type CategoryRate, RATES } from "./rules.ts";

const Cents = z.number().int();

/** One line of the night with what it earned. */
export const CommissionLine = z.object({
  id: z.string(),
  at: z.string(),
  kind: z.enum(["sale", "return"]),
  product: z.string(),
  category: z.string(),
  quantity: z.number().int(),
  /** Signed: negative for a return. */
  amountCents: Cents,
  /** The part of the amount paid at the base rate (signed). */
  baseCents: Cents,
  /** The part paid at the accelerated rate, above the quota. */
  acceleratedCents: Cents,
  baseBps: z.number().int(),
  acceleratedBps: z.number().int(),
  /** Rounded to whole cents; negative for a clawback. */
  commissionCents: Cents,
});
/** A line with its commission. */
export type CommissionLine = z.infer<typeof CommissionLine>;

/** A salesperson's night. */
export const Commission = z.object({
  salespersonId: z.string(),
  name: z.string(),
  managerId: z.string(),
  salesCents: Cents,
  returnsCents: Cents,
  netCents: Cents,
  monthlyQuotaCents: Cents,
  /** Month-to-date net sales after the night. */
  monthToDateCents: Cents,
  commissionCents: Cents,
  lines: z.array(CommissionLine),
});
/** A salesperson's commission for the night. */
export type Commission = z.infer<typeof Commission>;

/** The step: one commission record per salesperson, in the order pull-sales lists them. */
export const commissions = step("commissions", {
  needs: { night: pullSales },
  output: z.array(Commission),
}, ({ night }) => computeCommissions(night));

/**
 * Computes every salesperson's commission for a night.
 *
 * @example
 * ```ts
 * import { computeCommissions } from "./commissions.ts";
 * const [ada] = computeCommissions({
 *   date: "2026-10-31",
 *   managers: [],
 *   salespeople: [{ id: "S1", name: "Ada", managerId: "m", monthlyQuotaCents: 100_00, monthToDateCents: 0 }],
 *   lines: [{ id: "1", at: "2026-10-31 10:00", kind: "sale", salespersonId: "S1", product: "Cable",
 *     category: "Accessories", quantity: 1, amountCents: 19_90, returnOf: null }],
 * });
 * console.log(ada.commissionCents); // 159: 8 % of 19.90 is 1.592
 * ```
 *
 * @param night the night, as pull-sales reads it
 * @param rates the rate table; default {@linkcode RATES}
 * @returns one record per salesperson, lines in time order
 * @throws {NonRetryableError} when a line's category has no rate
 */
export function computeCommissions(
  night: Night,
  rates: readonly CategoryRate[] = RATES,
): Commission[] {
  const rateOf = new Map(rates.map((r) => [r.category, r]));
  return night.salespeople.map((person) => {
    let monthToDate = person.monthToDateCents;
    const lines = night.lines.filter((l) => l.salespersonId === person.id).map((line) => {
      const rate = rateOf.get(line.category);
      if (!rate) {
        throw new NonRetryableError(
          `No commission rate for category '${line.category}' (line ${line.id}): add it to RATES in pipelines/nightly/rules.ts`,
        );
      }
      const earned = lineCommission(line, rate, monthToDate, person.monthlyQuotaCents);
      monthToDate += earned.amountCents;
      return earned;
    });
    const sum = (pick: (l: CommissionLine) => number) => lines.reduce((a, l) => a + pick(l), 0);
    const salesCents = sum((l) => (l.kind === "sale" ? l.amountCents : 0));
    const returnsCents = sum((l) => (l.kind === "return" ? -l.amountCents : 0));
    return {
      salespersonId: person.id,
      name: person.name,
      managerId: person.managerId,
      salesCents,
      returnsCents,
      netCents: salesCents - returnsCents,
      monthlyQuotaCents: person.monthlyQuotaCents,
      monthToDateCents: monthToDate,
      commissionCents: sum((l) => l.commissionCents),
      lines,
    };
  });
}

/**
 * One line's commission, given the month-to-date net sales before it.
 *
 * @param line a sale or a return
 * @param rate its category's rates
 * @param monthToDate net sales of the month before this line
 * @param quota the salesperson's monthly quota
 * @returns the line with its split and its rounded commission
 */
export function lineCommission(
  line: SaleLine,
  rate: CategoryRate,
  monthToDate: number,
  quota: number,
): CommissionLine {
  const amount = line.kind === "sale" ? line.amountCents : -line.amountCents;
  const baseCents = amount < 0 ? amount : Math.min(amount, Math.max(0, quota - monthToDate));
  const acceleratedCents = amount - baseCents;
  const exact = baseCents * rate.baseBps + acceleratedCents * rate.acceleratedBps;
  return {
    id: line.id,
    at: line.at,
    kind: line.kind,
    product: line.product,
    category: line.category,
    quantity: line.quantity,
    amountCents: amount,
    baseCents,
    acceleratedCents,
    baseBps: rate.baseBps,
    acceleratedBps: rate.acceleratedBps,
    commissionCents: roundHalfAwayFromZero(exact, 10_000),
  };
}

/**
 * Divides integers and rounds to the nearest integer, halves away from zero, so that
 * `-x` rounds to minus what `x` rounds to.
 *
 * @param numerator an integer
 * @param denominator a positive integer
 * @returns the rounded quotient
 */
export function roundHalfAwayFromZero(numerator: number, denominator: number): number {
  const rounded = Math.floor((Math.abs(numerator) * 2 + denominator) / (2 * denominator));
  // `0 - rounded` rather than `-rounded`: a clawback that rounds to nothing is 0, not -0.
  return numerator < 0 ? 0 - rounded : rounded;
}
