/**
 * The store's SQLite database (through `node:sqlite`), opened one way everywhere: every
 * failure becomes a message naming what to fix.
 *
 * @module
 */
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { NonRetryableError } from "../../lib/mod.ts";
import { salesDbLocation } from "./config.ts";
import { createSampleStore, isSampleStore } from "./sample_store.ts";
import { TABLES } from "./schema.ts";

// SQLITE_BUSY and SQLITE_LOCKED: another writer; trying again later helps.
const TRANSIENT = new Set([5, 6]);

/**
 * Opens the sales database for `fn` and closes it after. With `KVFLOW_SALES_DB` unset, the
 * sample store in `data/store.db` is created on first use.
 *
 * @example
 * ```ts ignore
 * import { withSalesDb } from "./sales_db.ts";
 * const count = withSalesDb((db) => db.prepare("SELECT count(*) AS n FROM sales").get());
 * ```
 *
 * @param fn what to do with the open database
 * @returns what `fn` returns
 * @throws {NonRetryableError} when the database is missing, is not SQLite, or lacks a table,
 * naming the file and what to fix; a busy database throws a plain (retryable) error
 */
export function withSalesDb<T>(fn: (db: DatabaseSync) => T): T {
  const { path, configured } = salesDbLocation();
  const where = configured ? `${path} (KVFLOW_SALES_DB)` : path;
  if (!exists(path)) {
    if (configured) {
      throw new NonRetryableError(
        `Sales database not found: ${where}. Point KVFLOW_SALES_DB at a SQLite file with the tables ${TABLES}, or unset it to use the sample store`,
      );
    }
    Deno.mkdirSync(dirname(path), { recursive: true });
  }
  let db: DatabaseSync | undefined;
  try {
    db = new DatabaseSync(path);
    db.exec("PRAGMA busy_timeout = 5000");
    if (!configured && !isSampleStore(db)) createSampleStore(db);
    return fn(db);
  } catch (error) {
    const sqlite = error as { errcode?: number; message?: string };
    if (error instanceof NonRetryableError || typeof sqlite.errcode !== "number") throw error;
    const message = `Cannot use the sales database ${where}: ${sqlite.message}`;
    if (TRANSIENT.has(sqlite.errcode & 0xff)) throw new Error(message, { cause: error });
    throw new NonRetryableError(
      `${message}. It must be a SQLite file with the tables ${TABLES}${
        configured
          ? "; fix or replace the file KVFLOW_SALES_DB names"
          : `; delete ${path} to recreate the sample store`
      }`,
      { cause: error },
    );
  } finally {
    db?.close();
  }
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
