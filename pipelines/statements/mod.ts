/**
 * `customer-statement`: renders and mails one customer's statement, started by the event
 * `statement.requested`. It shows flow control on a registry pipeline:
 *
 * - a burst of requests for one customer gives one run, with the last request's month,
 *   once the requests have been quiet for 5 s (at most a minute after the first);
 * - at most one run per customer at a time, and at most 20 runs started a minute;
 * - the PDF renderer takes two statements at once, across every worker and pipeline that
 *   names the scope `pdf-renderer`, and the mail server four, ten a second (`smtp`);
 * - requests come in with priority 2, ahead of the nightly's runs when workers are busy.
 *
 * @module
 */
import { z } from "zod";
import { pipeline, step } from "../../lib/mod.ts";

const params = z.object({
  customer: z.string().min(1).max(100),
  month: z.string().regex(/^\d{4}-\d{2}$/, "use YYYY-MM").optional(),
});

type Params = z.infer<typeof params>;

const gather = step("gather", (_inputs, ctx) => {
  const { customer, month } = params.parse(ctx.run.params);
  const period = month ?? ctx.run.logicalDate.slice(0, 7);
  // a stand-in for the accounting system's ledger of this customer's month
  const lines = 3 + (customer.length % 5);
  ctx.log.info("gathered", { customer, period, lines });
  return { customer, period, lines };
});

const render = step("render", {
  needs: { gather },
  limit: { max: 2, scope: "pdf-renderer" },
}, async ({ gather }, ctx) => {
  // a stand-in for the PDF renderer, which takes a second a statement
  await new Promise((resolve) => setTimeout(resolve, 1000));
  ctx.log.info("rendered", { pages: Math.ceil(gather.lines / 4) });
  return { file: `statement-${gather.customer}-${gather.period}.pdf` };
});

const mail = step("mail", {
  needs: { gather, render },
  limit: { max: 4, scope: "smtp" },
  throttle: { max: 10, per: "1s", scope: "smtp" },
}, ({ gather, render }, ctx) => {
  ctx.log.info("mailed", { to: `billing@${gather.customer}.example`, file: render.file });
  return { to: `billing@${gather.customer}.example`, file: render.file };
});

export default pipeline("customer-statement", {
  description: "Renders and mails a customer's statement; started by statement.requested",
  params,
  on: {
    "statement.requested": {
      params: (data) => ({ customer: data?.customer, month: data?.month }),
      priority: 2,
    },
  },
  limit: { key: (p: Params) => p.customer, max: 1 },
  throttle: { max: 20, per: "1m" },
  debounce: { key: (p: Params) => p.customer, quiet: "5s", maxWait: "1m" },
  steps: [gather, render, mail],
  result: mail,
});
