import assert from "node:assert/strict";
import type { Schedule } from "../../lib/define/schedule.ts";
import {
  nextTicks,
  previousTicks,
  tickDate,
  tickRunId,
  ticksBetween,
} from "../../lib/engine/scheduler.ts";

const berlin = (cron: string): Schedule => ({
  cron,
  timezone: "Europe/Berlin",
  catchup: "latest",
  catchupLimit: 10,
  overlap: "skip",
  maxActive: 1,
  deadline: null,
});
const utc = (iso: string): number => Date.parse(iso);
const iso = (ticks: number[]): string[] => ticks.map((t) => new Date(t).toISOString());
const HOUR = 3_600_000;

// 2026 in Europe/Berlin: on 29 March 02:00 CET (01:00Z) becomes 03:00 CEST; on 25 October
// 03:00 CEST (01:00Z) becomes 02:00 CET, so 02:00–03:00 local happens twice.

Deno.test("ticksBetween(): a daily 03:00 Berlin job is 23 real hours apart over the spring-forward night", () => {
  const ticks = ticksBetween(
    berlin("0 3 * * *"),
    utc("2026-03-27T12:00Z"),
    utc("2026-03-31T12:00Z"),
    10,
  );
  assert.deepEqual(iso(ticks), [
    "2026-03-28T02:00:00.000Z", // 03:00 CET
    "2026-03-29T01:00:00.000Z", // 03:00 CEST
    "2026-03-30T01:00:00.000Z",
    "2026-03-31T01:00:00.000Z",
  ]);
  assert.equal(ticks[1] - ticks[0], 23 * HOUR);
});

Deno.test("ticksBetween(): a daily 02:30 Berlin job runs at 03:00 on the day 02:30 does not exist", () => {
  const ticks = ticksBetween(
    berlin("30 2 * * *"),
    utc("2026-03-27T12:00Z"),
    utc("2026-03-30T12:00Z"),
    10,
  );
  assert.deepEqual(iso(ticks), [
    "2026-03-28T01:30:00.000Z", // 02:30 CET
    "2026-03-29T01:00:00.000Z", // 03:00 CEST, the first minute after the gap
    "2026-03-30T00:30:00.000Z", // 02:30 CEST
  ]);
});

Deno.test("ticksBetween(): a daily 02:30 Berlin job runs once on the day 02:30 happens twice, the first time", () => {
  const ticks = ticksBetween(
    berlin("30 2 * * *"),
    utc("2026-10-23T12:00Z"),
    utc("2026-10-26T12:00Z"),
    10,
  );
  assert.deepEqual(iso(ticks), [
    "2026-10-24T00:30:00.000Z", // 02:30 CEST
    "2026-10-25T00:30:00.000Z", // the first 02:30 (CEST); not 01:30Z (CET)
    "2026-10-26T01:30:00.000Z", // 02:30 CET
  ]);
});

Deno.test("ticksBetween(): an hourly Berlin job ticks once per real hour across both changes", () => {
  const hourly = berlin("0 * * * *");
  const spring = ticksBetween(hourly, utc("2026-03-28T21:30Z"), utc("2026-03-29T03:30Z"), 100);
  const fall = ticksBetween(hourly, utc("2026-10-24T21:30Z"), utc("2026-10-25T03:30Z"), 100);
  for (
    const [ticks, first] of [[spring, "2026-03-28T22:00Z"], [fall, "2026-10-24T22:00Z"]] as const
  ) {
    assert.deepEqual(ticks, Array.from({ length: 6 }, (_, i) => utc(first) + i * HOUR));
  }
});

Deno.test("ticksBetween() excludes the start, includes the end, and stops at max", () => {
  const daily = berlin("0 3 * * *");
  const tick = utc("2026-03-29T01:00Z");
  assert.deepEqual(ticksBetween(daily, tick, tick + 2 * 86_400_000, 10), [
    tick + 86_400_000,
    tick + 2 * 86_400_000,
  ]);
  assert.deepEqual(ticksBetween(daily, tick - 1, tick, 10), [tick]);
  assert.deepEqual(ticksBetween(daily, tick - 1, tick - 1 + 86_400_000 * 30, 2).length, 2);
  assert.deepEqual(ticksBetween(daily, tick, tick + 86_400_000 - 1, 10), []);
  assert.deepEqual(ticksBetween(daily, tick - 1, tick + 86_400_000 * 30, 0), []);
});

Deno.test("nextTicks() gives the next n ticks strictly after the moment, across a DST change", () => {
  assert.deepEqual(iso(nextTicks(berlin("0 3 * * *"), utc("2026-10-24T01:00Z"), 3)), [
    "2026-10-25T02:00:00.000Z", // 03:00 CET, the first day after the change
    "2026-10-26T02:00:00.000Z",
    "2026-10-27T02:00:00.000Z",
  ]);
});

Deno.test("previousTicks() gives the latest ticks at or before the moment, newest first", () => {
  const daily = berlin("0 3 * * *");
  const tick = utc("2026-03-29T01:00Z"); // 03:00 CEST
  const expected = [
    "2026-03-29T01:00:00.000Z",
    "2026-03-28T02:00:00.000Z",
    "2026-03-27T02:00:00.000Z",
  ];
  assert.deepEqual(iso(previousTicks(daily, tick, 3)), expected);
  assert.deepEqual(iso(previousTicks(daily, tick + 999, 3)), expected);
  assert.deepEqual(iso(previousTicks(daily, tick - 1, 2)), expected.slice(1));
});

Deno.test("previousTicks() of an hourly Berlin job counts the repeated hour of the fall-back night", () => {
  const ticks = previousTicks(berlin("0 * * * *"), utc("2026-10-25T02:10Z"), 4);
  assert.deepEqual(iso(ticks), [
    "2026-10-25T02:00:00.000Z", // 03:00 CET
    "2026-10-25T01:00:00.000Z", // 02:00 CET, the second 02:00
    "2026-10-25T00:00:00.000Z", // 02:00 CEST
    "2026-10-24T23:00:00.000Z", // 01:00 CEST
  ]);
});

Deno.test("tickDate() is the tick's calendar date in the schedule's zone, not in UTC", () => {
  assert.equal(tickDate(berlin("30 0 * * *"), utc("2026-10-24T22:30Z")), "2026-10-25"); // 00:30 CEST
  assert.equal(tickDate(berlin("30 0 * * *"), utc("2026-03-28T23:30Z")), "2026-03-29"); // 00:30 CET
  assert.equal(
    tickDate({ ...berlin("0 0 * * *"), timezone: "UTC" }, utc("2026-10-24T22:30Z")),
    "2026-10-24",
  );
});

Deno.test("tickRunId() is the pipeline and the tick's UTC time, and sorts like the ticks", () => {
  assert.equal(tickRunId("nightly", utc("2026-03-29T01:00:00Z")), "nightly.20260329T010000Z");
  const ticks = [utc("2026-03-29T01:00Z"), utc("2025-12-31T23:59:59Z"), utc("2026-03-28T02:00Z")];
  const ids = ticks.map((t) => tickRunId("nightly", t));
  assert.deepEqual(
    [...ids].sort(),
    [...ticks].sort((a, b) => a - b).map((t) => tickRunId("nightly", t)),
  );
});
