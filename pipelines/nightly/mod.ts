/**
 * The nightly store pipeline: every night, yesterday's sales become commissions, a PDF
 * report per manager, a mail per manager with the report attached, and journal entries
 * in the accounting system.
 *
 * ```
 * pull-sales ─► commissions ─┬─► reports (one per manager) ─► email (one per manager)
 *                            └─► update-accounting (one per salesperson)
 *                   approval ─┘  (waits for finance only with --param approval=required)
 * ```
 *
 * On a fresh machine it runs on embedded defaults (a seeded sample store, an outbox of
 * `.eml` files, a ledger table); `config.ts` lists the variables that connect it to real
 * systems instead. Try `deno task run nightly`, then `--param simulateOutage=email` for a
 * failure, an alert and a resume.
 *
 * @module
 */
import { z } from "zod";
import { pipeline, type ScheduleOptions } from "../../lib/mod.ts";
import { updateAccounting } from "./accounting.ts";
import { approval } from "./approval.ts";
import { commissions } from "./commissions.ts";
import { email } from "./email.ts";
import { OUTAGES } from "./outage.ts";
import { pullSales } from "./pull_sales.ts";
import { reports } from "./reports.ts";

export { approval, commissions, email, pullSales, reports, updateAccounting };

/**
 * When the pipeline runs: 03:00 every day in the store's timezone (`KVFLOW_TZ`), and after
 * downtime only the latest missed night. The logical date of a run is its tick's date, so
 * the 03:00 run of 2 November reports the sales of 1 November.
 */
export const schedule: ScheduleOptions = {
  cron: "0 3 * * *",
  timezone: Deno.env.get("KVFLOW_TZ") ?? "Europe/Berlin",
  catchup: "latest",
  overlap: "skip",
};

/**
 * The params. The night comes from the run's logical date (`--date`, or the schedule
 * tick), so there is no date param that could disagree with it.
 */
export const Params = z.object({
  /** Demo switch: that system is down for the run's first round of attempts. */
  simulateOutage: z.enum(OUTAGES).optional(),
  /**
   * `required`: the journal entries wait for `nightly.approved` (or `nightly.rejected`)
   * with the run's logical date as `date` (see `approval.ts`). Default: no gate.
   */
  approval: z.enum(["required", "none"]).optional(),
});

/** The pipeline, as `pipelines/mod.ts` registers it. */
export default pipeline("nightly", {
  description:
    "Yesterday's sales → commissions → a PDF report and a mail per manager, and journal entries",
  params: Params,
  schedule,
  steps: [pullSales, commissions, reports, email, approval, updateAccounting],
});
