/**
 * Stage 1, `pull-sales`: yesterday's sales, relative to the run's logical date (never to
 * the clock, so a rerun or a backfill reads the same night), with what the next stages
 * need to know about it: the teams, and each salesperson's month-to-date sales before it.
 *
 * @module
 */
import { z } from "zod";
import type { DatabaseSync } from "node:sqlite";
import { step } from "../../lib/mod.ts";
import { addDays, monthStart } from "./dates.ts";
import { withSalesDb } from "./sales_db.ts";
import { growSampleStore } from "./sample_store.ts";

const Cents = z.number().int();

/** A manager: one report and one mail each. */
export const Manager = z.object({
  id: z.string(),
  name: z.string(),
  email: z.string(),
  region: z.string(),
});
/** A manager. */
export type Manager = z.infer<typeof Manager>;

/** A salesperson, with the month's sales so far. */
export const Salesperson = z.object({
  id: z.string(),
  name: z.string(),
  managerId: z.string(),
  monthlyQuotaCents: Cents,
  /** Net sales (sales less returns) of the month before the night. */
  monthToDateCents: Cents,
});
/** A salesperson. */
export type Salesperson = z.infer<typeof Salesperson>;

/** One sale or return of the night. `amountCents` is positive for both. */
export const SaleLine = z.object({
  id: z.string(),
  at: z.string(),
  kind: z.enum(["sale", "return"]),
  salespersonId: z.string(),
  product: z.string(),
  category: z.string(),
  quantity: z.number().int(),
  amountCents: Cents,
  /** For a return, the sale it returns, when known. */
  returnOf: z.string().nullable(),
});
/** A sale or return. */
export type SaleLine = z.infer<typeof SaleLine>;

/** Everything pull-sales hands on: the night's lines, in time order, and who sold them. */
export const Night = z.object({
  /** The sales day, `YYYY-MM-DD`: the day before the logical date. */
  date: z.string(),
  managers: z.array(Manager),
  salespeople: z.array(Salesperson),
  lines: z.array(SaleLine),
});
/** A night of sales. */
export type Night = z.infer<typeof Night>;

/** The step: reads the night before the logical date. */
export const pullSales = step("pull-sales", {
  output: Night,
  retry: { attempts: 3, delay: "2s" },
  timeout: "1m",
}, (_inputs, ctx) => {
  const date = addDays(ctx.run.logicalDate, -1);
  const night = withSalesDb((db) => {
    const added = growSampleStore(db, date);
    if (added > 0) ctx.log.info("sample store grew", { days: added, through: date });
    return readNight(db, date);
  });
  ctx.log.info("night loaded", { date, lines: night.lines.length });
  return night;
});

/**
 * Reads one night from an open sales database.
 *
 * @param db the store's database
 * @param date the sales day, `YYYY-MM-DD`
 * @returns the night; a day without sales has no lines and is a valid, empty night
 */
export function readNight(db: DatabaseSync, date: string): Night {
  const next = addDays(date, 1);
  const managers = db.prepare("SELECT id, name, email, region FROM managers ORDER BY id")
    .all().map((r) => Manager.parse(r));
  const monthToDate = new Map(
    db.prepare(`
      SELECT salesperson_id AS id, SUM(amount) AS cents FROM (
        SELECT salesperson_id, amount_cents AS amount FROM sales
          WHERE sold_at >= :from AND sold_at < :to
        UNION ALL
        SELECT salesperson_id, -amount_cents FROM returns
          WHERE returned_at >= :from AND returned_at < :to
      ) GROUP BY salesperson_id`).all({ from: monthStart(date), to: date })
      .map((r) => [r.id as string, Number(r.cents)]),
  );
  const salespeople = db.prepare(`
    SELECT id, name, manager_id AS managerId, monthly_quota_cents AS monthlyQuotaCents
    FROM salespeople ORDER BY id`).all()
    .map((r) => Salesperson.parse({ ...r, monthToDateCents: monthToDate.get(String(r.id)) ?? 0 }));
  const lines = db.prepare(`
    SELECT s.id AS id, s.sold_at AS at, 'sale' AS kind, s.salesperson_id AS salespersonId,
      p.name AS product, p.category, s.quantity, s.amount_cents AS amountCents, NULL AS returnOf
    FROM sales s JOIN products p ON p.id = s.product_id
    WHERE s.sold_at >= :from AND s.sold_at < :to
    UNION ALL
    SELECT r.id, r.returned_at, 'return', r.salesperson_id, p.name, p.category, r.quantity,
      r.amount_cents, r.sale_id
    FROM returns r JOIN products p ON p.id = r.product_id
    WHERE r.returned_at >= :from AND r.returned_at < :to
    ORDER BY at, id`).all({ from: date, to: next }).map((r) => SaleLine.parse(r));
  return { date, managers, salespeople, lines };
}
