/**
 * A worker's blind pick of a large limit's slot (`SlotNotifier.blindPick`): the first
 * slot from the worker's starting point that none of its tasks holds or is taking (nor a
 * run claim of the process), checked against a plain scan over random holds and frees.
 *
 * @module
 */
import assert from "node:assert/strict";
import { SlotNotifier } from "../../lib/engine/driver/slot_notifier.ts";
import { releaseTake, reserveTake } from "../../lib/store/slots.ts";

/** What the pick must be: a plain scan from `start`, wrapping, or -1 past half held. */
function expected(held: Set<number>, taking: Set<number>, start: number, max: number): number {
  if (2 * (held.size + taking.size) >= max) return -1;
  for (let n = 0; n < max; n++) {
    const i = (start + n) % max;
    if (!held.has(i) && !taking.has(i)) return i;
  }
  return -1;
}

Deno.test("a blind pick is the first slot from the worker's start that it neither holds nor is taking", () => {
  for (const max of [16, 33, 100, 1000]) {
    const notifier = new SlotNotifier();
    const scope = `s${max}`;
    const now = Date.now();
    // the first pick with nothing held is the worker's starting point
    const start = notifier.blindPick(scope, "k", max, now);
    assert.ok(start >= 0 && start < max);
    const held = new Set<number>();
    const taking = new Set<number>();
    const steps = new Set<number>();
    const claims = new Set<number>();
    let seed = max;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let round = 0; round < 3000; round++) {
      const pick = notifier.blindPick(scope, "k", max, now);
      assert.equal(pick, expected(held, taking, start, max), `max ${max}, round ${round}`);
      const roll = random();
      if (pick >= 0 && roll < 0.1) {
        // a run claim of this process takes a slot of the same scope and key
        const claimed = Math.floor(random() * max);
        if (reserveTake("slot", scope, "k", claimed)) {
          claims.add(claimed);
          taking.add(claimed);
        }
      } else if (claims.size > 0 && roll < 0.15) {
        const [index] = claims;
        releaseTake("slot", scope, "k", index);
        claims.delete(index);
        taking.delete(index);
      } else if (pick >= 0 && roll < 0.5) {
        // a take of this process reserves it, then (mostly) holds it
        assert.ok(notifier.reserve("slot", scope, "k", pick));
        taking.add(pick);
        steps.add(pick);
      } else if (steps.size > 0 && roll < 0.7) {
        const [index] = steps;
        notifier.unreserve("slot", scope, "k", index);
        steps.delete(index);
        taking.delete(index);
        if (random() < 0.8) {
          notifier.holding(scope, "k", index);
          held.add(index);
        }
      } else if (held.size > 0) {
        const index = [...held][Math.floor(random() * held.size)];
        notifier.notify(scope, "k", index);
        held.delete(index);
      }
    }
    for (const index of steps) notifier.unreserve("slot", scope, "k", index);
    for (const index of claims) releaseTake("slot", scope, "k", index);
  }
});

Deno.test("a notifier that knows many keys forgets the idle ones, not one whose slot it holds or is taking", () => {
  const notifier = new SlotNotifier();
  const now = Date.now();
  const held = notifier.pickNow("s", "held", 16, now);
  notifier.pickedNow("s", "held", held, "held", now);
  const taking = notifier.pickNow("s", "taking", 16, now);
  const missed = notifier.pickNow("s", "missed", 16, now);
  notifier.pickedNow("s", "missed", missed, "missed", now);
  // picks of a key whose pick met another's slot are off for a second
  assert.equal(notifier.pickNow("s", "missed", 16, now), -1);
  for (let i = 0; i < 10_001; i++) notifier.full("s", `other-${i}`, now);
  assert.ok(notifier.knownFull("s", "other-10000", now));
  // the first keys, idle, were forgotten
  assert.ok(!notifier.knownFull("s", "other-0", now));
  // the held and taken slots are still known: the next pick of each key is another slot
  assert.notEqual(notifier.pickNow("s", "held", 16, now), held);
  assert.notEqual(notifier.pickNow("s", "taking", 16, now), taking);
  // a missed pick's key held nothing: forgotten, its picks are on again
  assert.equal(notifier.pickNow("s", "missed", 16, now), missed);
});
