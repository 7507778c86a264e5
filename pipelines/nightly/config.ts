/**
 * The nightly pipeline's settings, read from the environment when a step runs (so a
 * resume after fixing a variable sees the fix). Unset means the embedded default: the
 * sample store in `data/store.db`, `.eml` files in `out/outbox/`, and a ledger table.
 *
 * | variable                | default         | meaning                                            |
 * | ----------------------- | --------------- | -------------------------------------------------- |
 * | `KVFLOW_SALES_DB`       | `data/store.db` | the store's SQLite database                        |
 * | `KVFLOW_SMTP_URL`       | unset: outbox   | `smtp://user:password@host:port` (or `smtps://`)   |
 * | `KVFLOW_MAIL_FROM`      | see below       | the sender of report mails                         |
 * | `KVFLOW_ACCOUNTING_URL` | unset: ledger   | the accounting API endpoint journal entries go to  |
 * | `KVFLOW_OUT_DIR`        | `out`           | where reports and the outbox are written           |
 * | `KVFLOW_ACCOUNTING_RATE`| `10`            | journal entries started per second, all workers    |
 *
 * `KVFLOW_ACCOUNTING_RATE` is read once, when the pipeline is loaded: it sets the throttle
 * of `update-accounting` (a worker restart picks up a change).
 *
 * @module
 */

/** The sample store's database, created and seeded on first use. */
export const DEFAULT_SALES_DB = "data/store.db";

/** The sender when `KVFLOW_MAIL_FROM` is unset. */
export const DEFAULT_MAIL_FROM = "Nightly reports <reports@store.example>";

/** Where the sales database is, and whether a person chose it. */
export interface SalesDbLocation {
  /** The file. */
  path: string;
  /** True when `KVFLOW_SALES_DB` names it: then it must exist. */
  configured: boolean;
}

/** The sales database: `KVFLOW_SALES_DB`, else the sample store. */
export function salesDbLocation(): SalesDbLocation {
  const path = env("KVFLOW_SALES_DB");
  return path ? { path, configured: true } : { path: DEFAULT_SALES_DB, configured: false };
}

/** The SMTP server's URL, when mail goes out over SMTP. */
export function smtpUrl(): string | undefined {
  return env("KVFLOW_SMTP_URL");
}

/** The sender of report mails. */
export function mailFrom(): string {
  return env("KVFLOW_MAIL_FROM") ?? DEFAULT_MAIL_FROM;
}

/** The accounting API's journal-entry endpoint, when entries are POSTed. */
export function accountingUrl(): string | undefined {
  return env("KVFLOW_ACCOUNTING_URL");
}

/** The directory reports and the outbox are written under. */
export function outDir(): string {
  return env("KVFLOW_OUT_DIR") ?? "out";
}

/** Journal entries started per second when `KVFLOW_ACCOUNTING_RATE` is unset. */
export const DEFAULT_ACCOUNTING_RATE = 10;

/**
 * How many journal entries may start per second, across all workers: the throttle of
 * `update-accounting`, so the accounting API is not flooded.
 *
 * @throws {TypeError} when `KVFLOW_ACCOUNTING_RATE` is not a whole number from 1 to 1000
 */
export function accountingRate(): number {
  const raw = env("KVFLOW_ACCOUNTING_RATE");
  if (raw === undefined) return DEFAULT_ACCOUNTING_RATE;
  const rate = Number(raw.trim());
  if (!/^\d+$/.test(raw.trim()) || !Number.isInteger(rate) || rate < 1 || rate > 1000) {
    throw new TypeError(
      `Invalid KVFLOW_ACCOUNTING_RATE of pipeline 'nightly': must be a whole number of journal entries per second from 1 to 1000, got ${
        JSON.stringify(raw)
      }`,
    );
  }
  return rate;
}

function env(name: string): string | undefined {
  return Deno.env.get(name) || undefined;
}
