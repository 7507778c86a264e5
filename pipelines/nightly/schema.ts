/**
 * The store database's schema: the contract for a database `KVFLOW_SALES_DB` points at.
 *
 * @module
 */

/**
 * The tables the pipeline reads. Amounts are integer cents; times are the store's local
 * time as `YYYY-MM-DD HH:MM`. A return names the salesperson it is charged to and the
 * product, so a return of a sale older than the data kept still counts.
 */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS managers (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  email TEXT NOT NULL,
  region TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS salespeople (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  manager_id TEXT NOT NULL REFERENCES managers (id),
  monthly_quota_cents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  category TEXT NOT NULL,
  price_cents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sales (
  id TEXT PRIMARY KEY,
  sold_at TEXT NOT NULL,
  salesperson_id TEXT NOT NULL REFERENCES salespeople (id),
  product_id TEXT NOT NULL REFERENCES products (id),
  quantity INTEGER NOT NULL,
  amount_cents INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sales_by_time ON sales (sold_at);
CREATE TABLE IF NOT EXISTS returns (
  id TEXT PRIMARY KEY,
  returned_at TEXT NOT NULL,
  sale_id TEXT,
  salesperson_id TEXT NOT NULL REFERENCES salespeople (id),
  product_id TEXT NOT NULL REFERENCES products (id),
  quantity INTEGER NOT NULL,
  amount_cents INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS returns_by_time ON returns (returned_at);
`;

/** The tables the pipeline reads, for messages. */
export const TABLES = "managers, salespeople, products, sales and returns";
