/**
 * An example pipeline: orders of the logical date are summed per customer, an exchange
 * rate is fetched from a flaky source (it fails its first attempt and is retried), and
 * one invoice per customer is rendered in a fan-out, each stored as an artifact.
 *
 * Try a failure and a resume: `EXAMPLE_FAIL=invoices deno task run example` fails the
 * invoices step until its retries run out; `deno task resume <run id>` (without the
 * variable, as after a fix) finishes the run without re-running the steps that succeeded.
 *
 * @module
 */
import { z } from "zod";
import { NonRetryableError, pipeline, step } from "../../lib/mod.ts";

const Order = z.object({ customer: z.string(), cents: z.number().int() });
type Order = z.infer<typeof Order>;

/** Orders of the run's logical date: deterministic, so a rerun sees the same data. */
export const fetchOrders = step("fetch-orders", {
  output: z.array(Order),
}, (_inputs, ctx) => {
  const customers = Number(ctx.run.params.customers ?? 3);
  const seed = Number(ctx.run.logicalDate.replaceAll("-", ""));
  const orders: Order[] = [];
  for (let i = 0; i < customers * 4; i++) {
    orders.push({
      customer: `customer-${(i % customers) + 1}`,
      cents: ((seed + i * 7919) % 9000) + 100,
    });
  }
  ctx.log.info("loaded orders", { count: orders.length, date: ctx.run.logicalDate });
  return orders;
});

/** Totals per customer, in cents. */
export const totals = step("totals", { needs: { orders: fetchOrders } }, ({ orders }) => {
  const sums = new Map<string, number>();
  for (const o of orders) sums.set(o.customer, (sums.get(o.customer) ?? 0) + o.cents);
  return [...sums].map(([customer, cents]) => ({ customer, cents }));
});

/** An exchange rate from a source that times out on the first attempt of each run. */
export const exchangeRate = step("exchange-rate", {
  retry: { attempts: 3, delay: "200ms" },
}, (_inputs, ctx) => {
  if (ctx.attempt === 1) throw new Error("Rate service timed out (simulated; retrying)");
  return { currency: "EUR", perUsd: 0.92 };
});

/** One invoice per customer: a fan-out, each item checkpointed on its own. */
export const invoices = step("invoices", {
  needs: { totals, rate: exchangeRate },
  items: ({ totals }) => totals,
  concurrency: 2,
  retry: { attempts: 2, delay: "100ms" },
}, async (total, ctx) => {
  if (Deno.env.get("EXAMPLE_FAIL") === "invoices") {
    throw new Error(`Invoice renderer unavailable for ${total.customer} (EXAMPLE_FAIL is set)`);
  }
  if (total.cents < 0) throw new NonRetryableError(`Negative total for ${total.customer}`);
  const euros = (total.cents * ctx.inputs.rate.perUsd / 100).toFixed(2);
  const text = `Invoice ${ctx.idempotencyKey}\n${total.customer}: ${euros} EUR\n`;
  const ref = await ctx.artifact(`invoice-${total.customer}.txt`, text);
  return { customer: total.customer, euros, artifact: ref.name };
});

/** A one-line summary of the night. */
export const summary = step("summary", { needs: { invoices } }, ({ invoices }, ctx) => {
  ctx.log.info("invoices ready", { count: invoices.length });
  return `${invoices.length} invoices for ${ctx.run.logicalDate}`;
});

export default pipeline("example", {
  description: "Orders → totals → invoices per customer, with a flaky exchange rate",
  params: z.object({ customers: z.coerce.number().int().min(1).max(1000).default(3) }),
  steps: [fetchOrders, totals, exchangeRate, invoices, summary],
});
