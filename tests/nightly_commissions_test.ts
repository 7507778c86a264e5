/**
 * The nightly pipeline's commission rules against hand-computed cases, and the sample
 * store's determinism. Rates (rules.ts): Electronics 3 % / 4.5 %, Appliances 5 % / 7.5 %,
 * Accessories 8 % / 12 %, Services 10 % / 15 % (base / above quota).
 *
 * @module
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { NonRetryableError } from "../lib/mod.ts";
import { journalEntry } from "../pipelines/nightly/accounting.ts";
import { computeCommissions, roundHalfAwayFromZero } from "../pipelines/nightly/commissions.ts";
import { type Night, readNight, type SaleLine } from "../pipelines/nightly/pull_sales.ts";
import { createSampleStore, growSampleStore } from "../pipelines/nightly/sample_store.ts";

const CATEGORY_OF: Record<string, string> = {
  Phone: "Electronics",
  Headphones: "Electronics",
  Blender: "Appliances",
  "Espresso machine": "Appliances",
  Cable: "Accessories",
  Warranty: "Services",
};

function line(
  at: string,
  product: string,
  amountCents: number,
  kind: SaleLine["kind"] = "sale",
): SaleLine {
  return {
    id: `${kind}-${at}`,
    at: `2026-10-31 ${at}`,
    kind,
    salespersonId: "S1",
    product,
    category: CATEGORY_OF[product] ?? product,
    quantity: 1,
    amountCents,
    returnOf: null,
  };
}

function nightOf(
  lines: SaleLine[],
  person: { quota: number; monthToDate: number } = { quota: 1_000_000, monthToDate: 0 },
): Night {
  return {
    date: "2026-10-31",
    managers: [{ id: "m", name: "Ada Berg", email: "ada@store.example", region: "North" }],
    salespeople: [{
      id: "S1",
      name: "Lena Fischer",
      managerId: "m",
      monthlyQuotaCents: person.quota,
      monthToDateCents: person.monthToDate,
    }],
    lines,
  };
}

Deno.test("commissions: each category earns its base rate below the quota, each line rounded half away from zero", () => {
  const [c] = computeCommissions(nightOf([
    line("10:00", "Phone", 64_900), // 3 % = 1,947.00 cents
    line("11:00", "Blender", 8_900), // 5 % = 445.00
    line("12:00", "Cable", 1_990), // 8 % = 159.20 → 159
    line("13:00", "Warranty", 4_900), // 10 % = 490.00
    line("14:00", "Headphones", 17_950), // 3 % = 538.50 → 539 (a half goes up)
    line("15:00", "Headphones", 17_950, "return"), // -538.50 → -539 (and down)
  ]));
  assert.deepEqual(c.lines.map((l) => l.commissionCents), [1947, 445, 159, 490, 539, -539]);
  assert.equal(c.commissionCents, 1947 + 445 + 159 + 490);
  assert.equal(c.salesCents, 64_900 + 8_900 + 1_990 + 4_900 + 17_950);
  assert.equal(c.returnsCents, 17_950);
  assert.equal(c.netCents, 64_900 + 8_900 + 1_990 + 4_900);
  assert.ok(c.lines.every((l) => l.acceleratedCents === 0));
});

Deno.test("commissions: a sale that crosses the monthly quota inside the night is split at the quota", () => {
  // Quota 5,000.00; 4,800.00 sold this month before the night.
  const [c] = computeCommissions(nightOf([
    line("10:00", "Cable", 10_000), // all below: 8 % of 100.00 = 800
    line("11:00", "Phone", 64_900), // 100.00 at 3 % + 549.00 at 4.5 % = 300 + 2,470.50 → 2,771
    line("12:00", "Warranty", 4_900), // all above: 15 % of 49.00 = 735
  ], { quota: 500_000, monthToDate: 480_000 }));
  assert.deepEqual(
    c.lines.map((l) => [l.baseCents, l.acceleratedCents, l.commissionCents]),
    [[10_000, 0, 800], [10_000, 54_900, 2771], [0, 4_900, 735]],
  );
  assert.equal(c.commissionCents, 800 + 2771 + 735);
  assert.equal(c.monthToDateCents, 480_000 + 10_000 + 64_900 + 4_900);
});

Deno.test("commissions: a return is clawed back at the base rate and lowers the month to date below the quota", () => {
  // Quota 5,000.00; 5,050.00 sold this month: above the quota before the night.
  const [c] = computeCommissions(nightOf([
    line("09:30", "Headphones", 17_950, "return"), // 3 % (not 4.5 %) of -179.50 → -539
    // month to date now 4,870.50: 129.50 at 5 % + 319.50 at 7.5 % = 647.50 + 2,396.25 → 3,044
    line("10:00", "Espresso machine", 44_900),
  ], { quota: 500_000, monthToDate: 505_000 }));
  assert.deepEqual(c.lines.map((l) => l.commissionCents), [-539, 3044]);
  assert.deepEqual(
    c.lines.map((l) => [l.baseCents, l.acceleratedCents]),
    [[-17_950, 0], [12_950, 31_950]],
  );
  assert.equal(c.commissionCents, 2505);
  assert.equal(c.netCents, 44_900 - 17_950);
  assert.equal(c.monthToDateCents, 505_000 - 17_950 + 44_900);
});

Deno.test("commissions: a night without lines gives every salesperson a zero record, not an error", () => {
  const [c] = computeCommissions(nightOf([]));
  assert.deepEqual(
    [c.salesCents, c.returnsCents, c.netCents, c.commissionCents, c.lines.length],
    [0, 0, 0, 0, 0],
  );
});

Deno.test("commissions: a category without a rate fails at once, naming the rules file", () => {
  assert.throws(
    () => computeCommissions(nightOf([line("10:00", "Toys", 1_000)])),
    (error: unknown) =>
      error instanceof NonRetryableError &&
      /No commission rate for category 'Toys'.*pipelines\/nightly\/rules\.ts/.test(error.message),
  );
});

Deno.test("roundHalfAwayFromZero() rounds halves away from zero and never gives -0", () => {
  assert.equal(roundHalfAwayFromZero(15_000, 10_000), 2);
  assert.equal(roundHalfAwayFromZero(-15_000, 10_000), -2);
  assert.equal(roundHalfAwayFromZero(14_999, 10_000), 1);
  assert.equal(roundHalfAwayFromZero(-14_999, 10_000), -1);
  assert.ok(Object.is(roundHalfAwayFromZero(-4_999, 10_000), 0));
});

Deno.test("journalEntry(): expense to payable, reversed for a net clawback, keyed by pipeline, date and salesperson", () => {
  const [earned] = computeCommissions(nightOf([line("10:00", "Phone", 64_900)]));
  const [clawed] = computeCommissions(nightOf([line("10:00", "Phone", 64_900, "return")]));
  const run = { pipeline: "nightly", logicalDate: "2026-11-01" };
  const a = journalEntry(earned, "2026-10-31", run);
  const b = journalEntry(clawed, "2026-10-31", run);
  assert.equal(a.idempotencyKey, "nightly/2026-11-01/S1");
  assert.deepEqual([a.debitAccount, a.creditAccount, a.amountCents], [
    "6400 Commission expense",
    "2410 Commissions payable",
    1947,
  ]);
  assert.deepEqual([b.debitAccount, b.creditAccount, b.amountCents], [
    "2410 Commissions payable",
    "6400 Commission expense",
    1947,
  ]);
});

Deno.test("the sample store gives a night the same rows whatever order its days were added in", () => {
  const a = new DatabaseSync(":memory:");
  const b = new DatabaseSync(":memory:");
  try {
    createSampleStore(a);
    createSampleStore(b);
    assert.equal(growSampleStore(a, "2026-10-31"), 60);
    assert.equal(growSampleStore(b, "2026-12-15"), 60); // from 2026-10-17
    assert.equal(growSampleStore(b, "2026-10-31"), 45); // 2026-09-02 to 2026-10-16
    assert.equal(growSampleStore(b, "2026-10-31"), 0);
    const night = readNight(a, "2026-10-31");
    assert.deepEqual(readNight(b, "2026-10-31"), night);
    assert.equal(night.managers.length, 4);
    assert.equal(night.salespeople.length, 20);
    assert.ok(night.lines.length > 10, `${night.lines.length} lines`);
    const times = night.lines.map((l) => l.at);
    assert.deepEqual(times, [...times].sort());
    assert.ok(times.every((t) => t.startsWith("2026-10-31 ")));
  } finally {
    a.close();
    b.close();
  }
});
