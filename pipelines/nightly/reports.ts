/**
 * Stage 3, `reports`: one PDF per manager, a fan-out with one item each, so a failure
 * re-renders only the reports that failed. Each PDF is stored with the run as an artifact
 * (the email stage reads it from there) and written to `out/reports/<date>/<manager>.pdf`.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import { step } from "../../lib/mod.ts";
import { commissions } from "./commissions.ts";
import { outDir } from "./config.ts";
import { fileSafe, writeFileAtomic } from "./files.ts";
import { Manager, pullSales } from "./pull_sales.ts";
import { renderReport } from "./report_pdf.ts";

/** A rendered report and the team figures its mail quotes. */
export const Report = z.object({
  manager: Manager,
  /** The sales day. */
  date: z.string(),
  /** `nightly/<logical date>/<manager id>`, printed in the footer. */
  reportId: z.string(),
  /** The run artifact holding the PDF. */
  artifact: z.string(),
  /** Where the PDF was written. */
  file: z.string(),
  team: z.object({
    salespeople: z.number().int(),
    aboveQuota: z.number().int(),
    netCents: z.number().int(),
    commissionCents: z.number().int(),
  }),
});
/** A rendered report. */
export type Report = z.infer<typeof Report>;

/** The step: one item per manager. */
export const reports = step("reports", {
  needs: { night: pullSales, commissions },
  items: ({ night }) => night.managers,
  concurrency: 4,
  timeout: "2m",
  output: Report,
}, async (manager, ctx) => {
  const { night } = ctx.inputs;
  const team = ctx.inputs.commissions.filter((c) => c.managerId === manager.id);
  const reportId = `${ctx.run.pipeline}/${ctx.run.logicalDate}/${manager.id}`;
  const pdf = await renderReport({
    manager,
    date: night.date,
    logicalDate: ctx.run.logicalDate,
    reportId,
    team,
  });
  const name = `${fileSafe(manager.id)}.pdf`;
  const file = join(outDir(), "reports", ctx.run.logicalDate, name);
  await writeFileAtomic(file, pdf);
  await ctx.artifact(name, pdf, { contentType: "application/pdf" });
  ctx.log.info("report written", { manager: manager.id, file, bytes: pdf.length });
  return {
    manager,
    date: night.date,
    reportId,
    artifact: name,
    file,
    team: {
      salespeople: team.length,
      aboveQuota: team.filter((c) => c.monthToDateCents > c.monthlyQuotaCents).length,
      netCents: team.reduce((sum, c) => sum + c.netCents, 0),
      commissionCents: team.reduce((sum, c) => sum + c.commissionCents, 0),
    },
  };
});
