import assert from "node:assert/strict";
import { formatMs, toMs } from "../../lib/define/duration.ts";

Deno.test("toMs() reads milliseconds and each unit: ms, s, m, h, d", () => {
  assert.equal(toMs(0), 0);
  assert.equal(toMs(500), 500);
  assert.equal(toMs(12.5), 12.5);
  assert.equal(toMs("500ms"), 500);
  assert.equal(toMs("2s"), 2000);
  assert.equal(toMs("5m"), 5 * 60 * 1000);
  assert.equal(toMs("1h"), 60 * 60 * 1000);
  assert.equal(toMs("1d"), 24 * 60 * 60 * 1000);
  assert.equal(toMs("0s"), 0);
});

Deno.test("toMs() reads decimals and ignores surrounding spaces", () => {
  assert.equal(toMs("1.5s"), 1500);
  assert.equal(toMs("0.25h"), 15 * 60 * 1000);
  assert.equal(toMs(" 2s " as "2s"), 2000);
});

Deno.test("toMs() refuses negative, non-finite and malformed durations with a TypeError naming the option", () => {
  const bad: unknown[] = [
    -1,
    NaN,
    Infinity,
    "2",
    "2 s",
    "2w",
    "-2s",
    "",
    "s",
    ".5s",
    "1e3ms",
    null,
  ];
  for (const value of bad) {
    assert.throws(
      () => toMs(value as number, "timeout of step 'x'"),
      (e: unknown) =>
        e instanceof TypeError && e.message.startsWith("Cannot use timeout of step 'x': "),
      JSON.stringify(value),
    );
  }
});

Deno.test("formatMs() shows ms under a second, seconds with decimals under a minute", () => {
  assert.equal(formatMs(0), "0ms");
  assert.equal(formatMs(850), "850ms");
  assert.equal(formatMs(41.4), "41ms");
  assert.equal(formatMs(1000), "1.00s");
  assert.equal(formatMs(2920), "2.92s");
  assert.equal(formatMs(10_000), "10.0s");
  assert.equal(formatMs(12_345), "12.3s");
});

Deno.test("formatMs() shows minutes and seconds under an hour, hours and minutes above", () => {
  assert.equal(formatMs(60_000), "1m 0s");
  assert.equal(formatMs(200_000), "3m 20s");
  assert.equal(formatMs(3_600_000), "1h 0m");
  assert.equal(formatMs(3_720_000 + 59_000), "1h 2m");
  assert.equal(formatMs(26 * 3_600_000), "26h 0m");
});

Deno.test("formatMs() shows days and hours from two days on (a wait may last a year)", () => {
  assert.equal(formatMs(48 * 3_600_000 - 60_000), "47h 59m");
  assert.equal(formatMs(48 * 3_600_000), "2d 0h");
  assert.equal(formatMs(365 * 86_400_000), "365d 0h");
  assert.equal(formatMs(3 * 86_400_000 + 5 * 3_600_000 + 59 * 60_000), "3d 5h");
});

Deno.test("formatMs() rounds to what it shows before it picks the form, so no form overflows", () => {
  assert.equal(formatMs(999.6), "1.00s");
  assert.equal(formatMs(9_996), "10.0s");
  assert.equal(formatMs(59_999), "1m 0s");
  assert.equal(formatMs(119_999), "2m 0s");
  assert.equal(formatMs(3_599_999), "1h 0m");
  assert.equal(formatMs(119_499), "1m 59s");
});
