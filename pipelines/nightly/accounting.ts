/**
 * Stage 5, `update-accounting`: one journal entry per salesperson whose commission for
 * the night is not zero — commission expense debited, commissions payable credited (the
 * other way round for a net clawback). A fan-out, so a refused or failed entry is retried
 * alone and the entries already posted stay checkpointed.
 *
 * @module
 */
import { step } from "../../lib/mod.ts";
import { approval, checkApproval } from "./approval.ts";
import { type Commission, commissions } from "./commissions.ts";
import { type JournalEntry, Posting, postJournalEntry } from "./ledger.ts";
import { simulateOutage } from "./outage.ts";
import { pullSales } from "./pull_sales.ts";
import { ACCOUNTS } from "./rules.ts";
import { accountingRate } from "./config.ts";

/** Retries of one entry: an accounting API's hiccups are short. */
export const ACCOUNTING_RETRY = { attempts: 5, delay: "500ms", maxDelay: "30s" } as const;

/**
 * The accounting API's rate limit: journal entries started per second, across every
 * worker and run (`KVFLOW_ACCOUNTING_RATE`, see `config.ts`). Entries over it wait.
 */
export const ACCOUNTING_THROTTLE = {
  max: accountingRate(),
  per: "1s",
  scope: "accounting-api",
} as const;

/**
 * The step: one item per salesperson with a commission, once the night is approved (or
 * needs no approval). A rejected night fails here, before any entry is posted.
 */
export const updateAccounting = step("update-accounting", {
  needs: { night: pullSales, commissions, approval },
  items: ({ commissions, approval }) => {
    checkApproval(approval);
    return commissions.filter((c) => c.commissionCents !== 0);
  },
  concurrency: 4,
  retry: ACCOUNTING_RETRY,
  throttle: ACCOUNTING_THROTTLE,
  timeout: "1m",
  output: Posting,
}, async (commission, ctx) => {
  await simulateOutage(ctx, "accounting", ACCOUNTING_RETRY.attempts);
  const entry = journalEntry(commission, ctx.inputs.night.date, {
    pipeline: ctx.run.pipeline,
    logicalDate: ctx.run.logicalDate,
  });
  const posting = await postJournalEntry(entry, { runId: ctx.run.id, signal: ctx.signal });
  ctx.log.info("journal entry", { key: posting.idempotencyKey, result: posting.result });
  return posting;
});

/**
 * The journal entry of a salesperson's commission for a night.
 *
 * @param commission the salesperson's night; its commission must not be zero
 * @param date the sales day
 * @param run the pipeline and logical date, which with the salesperson make the key
 * @returns the entry
 */
export function journalEntry(
  commission: Commission,
  date: string,
  run: { pipeline: string; logicalDate: string },
): JournalEntry {
  const clawback = commission.commissionCents < 0;
  return {
    idempotencyKey: `${run.pipeline}/${run.logicalDate}/${commission.salespersonId}`,
    date,
    description:
      `Commission of ${commission.name} (${commission.salespersonId}) on sales of ${date}`,
    salespersonId: commission.salespersonId,
    debitAccount: clawback ? ACCOUNTS.payable : ACCOUNTS.expense,
    creditAccount: clawback ? ACCOUNTS.expense : ACCOUNTS.payable,
    amountCents: Math.abs(commission.commissionCents),
  };
}
