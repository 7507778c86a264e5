/**
 * The sample store, so `deno task run nightly` does the whole job on a fresh machine:
 * four regions with a manager each, twenty salespeople, eleven products in four
 * categories, and sales and returns for every day.
 *
 * A day's rows are a pure function of its date (a random generator seeded with the date),
 * so every machine sees the same night, and a sample database grows on demand: before a
 * night is read, the 60 days up to it are added if missing. Whatever order nights are
 * asked in, each day holds the same rows.
 *
 * @module
 */
import type { DatabaseSync } from "node:sqlite";
import { addDays, daysBetween } from "./dates.ts";
import { SCHEMA } from "./schema.ts";

/** Days of history a sample database holds before any night it is asked for. */
export const SAMPLE_DAYS = 60;

/** The longest a customer keeps a purchase before returning it, in days. */
const RETURN_WINDOW = 14;

const MANAGERS = [
  ["ada.berg", "Ada Berg", "North"],
  ["bruno.costa", "Bruno Costa", "South"],
  ["chiara.engel", "Chiara Engel", "East"],
  ["dev.patel", "Dev Patel", "West"],
] as const;

const SALESPEOPLE = [
  "Lena Fischer",
  "Omar Haddad",
  "Mia Jensen",
  "Noah Keller",
  "Sofia Lund",
  "Elias Maier",
  "Hannah Novak",
  "Luca Rossi",
  "Emma Schulz",
  "Jonas Weber",
  "Clara Brandt",
  "Felix Dahl",
  "Ida Eriksen",
  "Paul Frank",
  "Nora Gruber",
  "Theo Hansen",
  "Lea Ivanova",
  "Max Jung",
  "Zoe Krause",
  "Ben Lorenz",
];

/** Product, category, price in cents, and how often it sells relative to the others. */
const PRODUCTS = [
  ["P01", "Laptop 14-inch", "Electronics", 89_900, 6],
  ["P02", "Smartphone", "Electronics", 64_900, 8],
  ["P03", "Noise-cancelling headphones", "Electronics", 17_900, 10],
  ["P04", "Espresso machine", "Appliances", 44_900, 5],
  ["P05", "Robot vacuum", "Appliances", 32_900, 5],
  ["P06", "Blender", "Appliances", 8_900, 8],
  ["P07", "USB-C cable", "Accessories", 1_990, 16],
  ["P08", "Phone case", "Accessories", 2_490, 14],
  ["P09", "Laptop bag", "Accessories", 5_900, 10],
  ["P10", "Extended warranty", "Services", 7_900, 10],
  ["P11", "Setup service", "Services", 4_900, 8],
] as const;

/** A sale as the generator makes it, with the day (if any) its customer returns it. */
interface SampleSale {
  id: string;
  soldAt: string;
  salespersonId: string;
  productId: string;
  quantity: number;
  amountCents: number;
  returnedAfterDays: number | null;
}

/**
 * Creates the schema and the catalog (managers, salespeople, products) when missing, and
 * marks the database as a sample store, which lets it grow with {@linkcode growSampleStore}.
 *
 * @param db an open database
 */
export function createSampleStore(db: DatabaseSync): void {
  // Write-ahead logging: readers do not wait for the ledger's writes, and commits are cheap.
  db.exec("PRAGMA journal_mode = WAL");
  transaction(db, () => {
    db.exec(SCHEMA);
    db.exec("CREATE TABLE IF NOT EXISTS sample_days (day TEXT PRIMARY KEY)");
    const manager = db.prepare("INSERT OR IGNORE INTO managers VALUES (?, ?, ?, ?)");
    for (const [id, name, region] of MANAGERS) {
      manager.run(id, name, `${id}@store.example`, region);
    }
    const salesperson = db.prepare("INSERT OR IGNORE INTO salespeople VALUES (?, ?, ?, ?)");
    for (const [i, name] of SALESPEOPLE.entries()) {
      // Quotas from EUR 5,000 to EUR 9,000 a month, so some cross theirs mid-month.
      salesperson.run(salespersonId(i), name, MANAGERS[i % MANAGERS.length][0], quotaCents(i));
    }
    const product = db.prepare("INSERT OR IGNORE INTO products VALUES (?, ?, ?, ?)");
    for (const [id, name, category, price] of PRODUCTS) product.run(id, name, category, price);
  });
}

/**
 * Adds the sales and returns of the {@linkcode SAMPLE_DAYS} days up to `night` that a
 * sample store lacks. A database that is not a sample store is left alone.
 *
 * @param db an open database
 * @param night the last day to cover, `YYYY-MM-DD`
 * @returns how many days were added
 */
export function growSampleStore(db: DatabaseSync, night: string): number {
  if (!isSampleStore(db)) return 0;
  const from = addDays(night, 1 - SAMPLE_DAYS);
  const have = new Set(
    db.prepare("SELECT day FROM sample_days WHERE day BETWEEN ? AND ?").all(from, night)
      .map((row) => row.day as string),
  );
  const missing = daysBetween(from, night).filter((day) => !have.has(day));
  if (missing.length === 0) return 0;
  const sale = db.prepare("INSERT OR IGNORE INTO sales VALUES (?, ?, ?, ?, ?, ?)");
  const ret = db.prepare("INSERT OR IGNORE INTO returns VALUES (?, ?, ?, ?, ?, ?, ?)");
  const mark = db.prepare("INSERT OR IGNORE INTO sample_days VALUES (?)");
  transaction(db, () => {
    for (const day of missing) {
      for (const s of salesOf(day)) {
        sale.run(s.id, s.soldAt, s.salespersonId, s.productId, s.quantity, s.amountCents);
      }
      for (const [n, s] of returnsOf(day).entries()) {
        const at = `${day} ${clock(random(`return ${s.id}`), 10, 18)}`;
        const id = `R${day.replaceAll("-", "")}-${String(n + 1).padStart(3, "0")}`;
        ret.run(id, at, s.id, s.salespersonId, s.productId, s.quantity, s.amountCents);
      }
      mark.run(day);
    }
  });
  return missing.length;
}

/**
 * Tells a sample store (which may grow) from any other database (which is only read).
 *
 * @param db an open database
 * @returns whether {@linkcode createSampleStore} made it
 */
export function isSampleStore(db: DatabaseSync): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sample_days'")
    .get() !== undefined;
}

/** The sales of one day: a pure function of the date. */
function salesOf(day: string): SampleSale[] {
  const next = random(`sales ${day}`);
  const sunday = new Date(`${day}T00:00:00Z`).getUTCDay() === 0;
  const drafts: Omit<SampleSale, "id">[] = [];
  for (const i of SALESPEOPLE.keys()) {
    // 0–3 sales a day, one fewer on Sundays.
    const count = Math.max(0, pick(next(), [25, 35, 25, 15]) - (sunday ? 1 : 0));
    for (let n = 0; n < count; n++) {
      const [productId, , category, price] = PRODUCTS[pick(next(), PRODUCTS.map((p) => p[4]))];
      const quantity = category === "Accessories" ? 1 + pick(next(), [70, 20, 10]) : 1;
      drafts.push({
        soldAt: `${day} ${clock(next, 9, 19)}`,
        salespersonId: salespersonId(i),
        productId,
        quantity,
        amountCents: price * quantity,
        // About one sale in 25 comes back, 1 to 14 days later.
        returnedAfterDays: next() < 0.04 ? 1 + Math.floor(next() * RETURN_WINDOW) : null,
      });
    }
  }
  drafts.sort((a, b) =>
    a.soldAt.localeCompare(b.soldAt) || a.salespersonId.localeCompare(b.salespersonId)
  );
  return drafts.map((d, n) => ({
    id: `S${day.replaceAll("-", "")}-${String(n + 1).padStart(3, "0")}`,
    ...d,
  }));
}

/** The sales returned on `day`: those of the last 14 days that the generator sends back then. */
function returnsOf(day: string): SampleSale[] {
  const returned: SampleSale[] = [];
  for (let back = RETURN_WINDOW; back >= 1; back--) {
    for (const s of salesOf(addDays(day, -back))) {
      if (s.returnedAfterDays === back) returned.push(s);
    }
  }
  return returned;
}

function salespersonId(index: number): string {
  return `S${String(index + 1).padStart(2, "0")}`;
}

function quotaCents(index: number): number {
  return 500_000 + ((index * 3) % 5) * 100_000;
}

/** A time of day from `fromHour`:00 to `toHour`:59 as `HH:MM`. */
function clock(next: () => number, fromHour: number, toHour: number): string {
  const minutes = fromHour * 60 + Math.floor(next() * (toHour - fromHour + 1) * 60);
  return `${String(Math.floor(minutes / 60)).padStart(2, "0")}:${
    String(minutes % 60).padStart(2, "0")
  }`;
}

/** An index into `weights`, drawn with those relative weights. */
function pick(r: number, weights: readonly number[]): number {
  let left = r * weights.reduce((a, b) => a + b, 0);
  for (const [i, w] of weights.entries()) {
    left -= w;
    if (left < 0) return i;
  }
  return weights.length - 1;
}

/** A generator of numbers in [0, 1) seeded by `seed` (mulberry32 over an FNV-1a hash). */
function random(seed: string): () => number {
  let state = 0x811c9dc5;
  for (let i = 0; i < seed.length; i++) state = Math.imul(state ^ seed.charCodeAt(i), 0x01000193);
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

function transaction(db: DatabaseSync, fn: () => void): void {
  db.exec("BEGIN IMMEDIATE");
  try {
    fn();
    db.exec("COMMIT");
  } catch (error) {
    db.exec("ROLLBACK");
    throw error;
  }
}
