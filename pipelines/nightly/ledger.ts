/**
 * Posting one journal entry: to the accounting API when `KVFLOW_ACCOUNTING_URL` is set,
 * else to the `journal_entries` table of the store's database.
 *
 * Exactly once, both ways, through the entry's idempotency key, which names the business
 * fact (pipeline, logical date, salesperson) rather than the run: a retry, a resume, a
 * rerun and a second run for the same night all post under the same key. The API gets it
 * as the `Idempotency-Key` header and answers a repeat with the original result; the
 * ledger table holds it under a UNIQUE constraint, so a repeat inserts nothing.
 *
 * @module
 */
import { z } from "zod";
import { NonRetryableError } from "../../lib/mod.ts";
import { accountingUrl } from "./config.ts";
import { withSalesDb } from "./sales_db.ts";

/** A journal entry: one amount, debited to one account and credited to another. */
export const JournalEntry = z.object({
  idempotencyKey: z.string(),
  /** The day the commission was earned. */
  date: z.string(),
  description: z.string(),
  salespersonId: z.string(),
  debitAccount: z.string(),
  creditAccount: z.string(),
  amountCents: z.number().int().positive(),
});
/** A journal entry. */
export type JournalEntry = z.infer<typeof JournalEntry>;

/** How an entry was posted. */
export const Posting = z.object({
  idempotencyKey: z.string(),
  via: z.enum(["api", "ledger"]),
  /** `posted` the first time; `already posted` when the key was there before. */
  result: z.enum(["posted", "already posted"]),
  /** The API's URL, or the ledger table. */
  where: z.string(),
});
/** How an entry was posted. */
export type Posting = z.infer<typeof Posting>;

const API_TIMEOUT_MS = 10_000;

const LEDGER = `
CREATE TABLE IF NOT EXISTS journal_entries (
  idempotency_key TEXT NOT NULL UNIQUE,
  entry_date TEXT NOT NULL,
  description TEXT NOT NULL,
  salesperson_id TEXT NOT NULL,
  debit_account TEXT NOT NULL,
  credit_account TEXT NOT NULL,
  amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
  run_id TEXT NOT NULL,
  posted_at TEXT NOT NULL
)`;

/** Options of {@linkcode postJournalEntry}. */
export interface PostOptions {
  /** The run posting it: recorded, never part of what the API compares. */
  runId: string;
  /** Aborts the request. */
  signal: AbortSignal;
}

/**
 * Posts a journal entry once.
 *
 * @param entry the entry
 * @param options the posting run and an abort signal
 * @returns how it was posted
 * @throws {NonRetryableError} when the API refuses it (4xx other than 408 and 429), or the
 * key was posted before with a different amount or accounts
 * @throws {Error} (retryable) on 5xx, 408, 429, a timeout or a network failure
 */
export async function postJournalEntry(
  entry: JournalEntry,
  options: PostOptions,
): Promise<Posting> {
  const url = accountingUrl();
  return url ? await postToApi(entry, url, options) : postToLedger(entry, options.runId);
}

async function postToApi(entry: JournalEntry, url: string, options: PostOptions): Promise<Posting> {
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "idempotency-key": entry.idempotencyKey,
        "x-kvflow-run": options.runId,
      },
      body: JSON.stringify(entry),
      signal: AbortSignal.any([options.signal, AbortSignal.timeout(API_TIMEOUT_MS)]),
    });
  } catch (error) {
    if (options.signal.aborted) throw error;
    const why = error instanceof DOMException && error.name === "TimeoutError"
      ? `no answer within ${API_TIMEOUT_MS / 1000} s`
      : error instanceof Error
      ? error.message
      : String(error);
    throw new Error(`Cannot reach the accounting API at ${url}: ${why}`, { cause: error });
  }
  const body = (await response.text()).slice(0, 300);
  const answer = `HTTP ${response.status}${body ? `: ${body}` : ""}`;
  if (response.ok) {
    return { idempotencyKey: entry.idempotencyKey, via: "api", result: "posted", where: url };
  }
  if (response.status >= 500 || response.status === 408 || response.status === 429) {
    throw new Error(
      `Accounting API at ${url} failed journal entry ${entry.idempotencyKey}: ${answer}`,
    );
  }
  throw new NonRetryableError(
    `Accounting API at ${url} refused journal entry ${entry.idempotencyKey}: ${answer}. Check KVFLOW_ACCOUNTING_URL and what the API expects, then resume`,
  );
}

function postToLedger(entry: JournalEntry, runId: string): Posting {
  return withSalesDb((db) => {
    db.exec(LEDGER);
    const inserted = db.prepare(`
      INSERT INTO journal_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (idempotency_key) DO NOTHING`).run(
      entry.idempotencyKey,
      entry.date,
      entry.description,
      entry.salespersonId,
      entry.debitAccount,
      entry.creditAccount,
      entry.amountCents,
      runId,
      new Date().toISOString(),
    );
    const posting = {
      idempotencyKey: entry.idempotencyKey,
      via: "ledger" as const,
      where: "journal_entries",
    };
    if (inserted.changes === 1) return { ...posting, result: "posted" as const };
    const before = db.prepare(`
      SELECT debit_account AS debitAccount, credit_account AS creditAccount,
        amount_cents AS amountCents, run_id AS runId
      FROM journal_entries WHERE idempotency_key = ?`).get(entry.idempotencyKey)!;
    const same = before.amountCents === entry.amountCents &&
      before.debitAccount === entry.debitAccount && before.creditAccount === entry.creditAccount;
    if (!same) {
      throw new NonRetryableError(
        `Journal entry ${entry.idempotencyKey} was posted by run ${before.runId} as ${before.amountCents} cents ${before.debitAccount} / ${before.creditAccount}; this run computes ${entry.amountCents} cents ${entry.debitAccount} / ${entry.creditAccount}. The sales data changed since: post a correcting entry by hand`,
      );
    }
    return { ...posting, result: "already posted" as const };
  });
}
