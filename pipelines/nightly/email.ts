/**
 * Stage 4, `email`: one mail per manager with their report attached, a fan-out with one
 * item each. The Message-ID derives from the item's idempotency key, which stays the same
 * across retries, resumes and crash recoveries; a resume after a crash sends only the
 * mails whose item has no checkpoint yet (see `mail.ts` for the one narrow gap).
 *
 * @module
 */
import { join } from "node:path";
import { type ItemContext, step } from "../../lib/mod.ts";
import { mailFrom, outDir } from "./config.ts";
import { longDate, shortDate } from "./dates.ts";
import { fileSafe } from "./files.ts";
import { deliver, Delivery, type Mail } from "./mail.ts";
import { formatMoney } from "./money.ts";
import { simulateOutage } from "./outage.ts";
import { type Report, reports } from "./reports.ts";

/** Retries of one mail: a mail server that is down often comes back within minutes. */
export const EMAIL_RETRY = { attempts: 3, delay: "1s", maxDelay: "1m" } as const;

/** The step: one item per report. */
export const email = step("email", {
  needs: { reports },
  items: ({ reports }) => reports,
  concurrency: 2,
  retry: EMAIL_RETRY,
  timeout: "2m",
  output: Delivery,
}, async (report, ctx) => {
  await simulateOutage(ctx, "email", EMAIL_RETRY.attempts);
  const pdf = await ctx.readArtifact(report.artifact);
  const outboxFile = join(
    outDir(),
    "outbox",
    ctx.run.logicalDate,
    `${fileSafe(report.manager.id)}.eml`,
  );
  const delivery = await deliver(reportMail(report, pdf, ctx), outboxFile);
  ctx.log.info("mail delivered", { to: delivery.to, via: delivery.via, where: delivery.where });
  return delivery;
});

/**
 * The mail that carries a report.
 *
 * @param report the rendered report
 * @param pdf its bytes
 * @param ctx the item's context: run id and idempotency key
 * @returns the mail
 */
export function reportMail(report: Report, pdf: Uint8Array, ctx: ItemContext<unknown>): Mail {
  const from = mailFrom();
  const { manager, team } = report;
  const domain = from.match(/@([^>\s]+)>?\s*$/)?.[1] ?? "kvflow.localhost";
  return {
    from,
    to: `${manager.name} <${manager.email}>`,
    subject: `Nightly report ${manager.region}, ${shortDate(report.date)}: net sales ${
      formatMoney(team.netCents)
    }`,
    text: [
      `Hello ${manager.name.split(" ")[0]},`,
      "",
      `attached is the nightly report for the ${manager.region} region: sales of ${
        longDate(report.date)
      }.`,
      "",
      `Team net sales:  ${formatMoney(team.netCents)}`,
      `Commissions:     ${formatMoney(team.commissionCents)}`,
      `Above quota:     ${team.aboveQuota} of ${team.salespeople} salespeople this month`,
      "",
      `Report ${report.reportId}, from run ${ctx.run.id} of the kvflow nightly pipeline.`,
      "",
    ].join("\n"),
    messageId: `<${ctx.idempotencyKey.replaceAll(":", ".")}@${domain}>`,
    headers: { "X-Kvflow-Run": ctx.run.id, "X-Kvflow-Report": report.reportId },
    attachments: [{
      filename: `nightly-${report.date}-${report.artifact}`,
      content: pdf,
      contentType: "application/pdf",
    }],
  };
}
