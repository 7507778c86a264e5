/**
 * A worker's bound on steps running at once, shared by all the runs it drives. A run
 * that finds no free slot waits to be woken when one frees up.
 *
 * @module
 */

/** Something that waits for a free slot. */
export interface SlotWaiter {
  /** Called when a slot may be free. */
  wake(): void;
}

/** A counting bound with a wake-up list. */
export class Slots {
  readonly #max: number;
  #used = 0;
  readonly #waiters = new Set<SlotWaiter>();

  /**
   * Creates the bound.
   *
   * @param max slots in all
   */
  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) {
      throw new RangeError(`Invalid step concurrency: must be a positive integer, got ${max}`);
    }
    this.#max = max;
  }

  /** Slots in use. */
  get used(): number {
    return this.#used;
  }

  /** Takes a slot if one is free. */
  tryAcquire(): boolean {
    if (this.#used >= this.#max) return false;
    this.#used++;
    return true;
  }

  /** Frees a slot and wakes the waiters. */
  release(): void {
    this.#used--;
    if (this.#waiters.size === 0) return;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const w of waiters) w.wake();
  }

  /** Registers a waiter to wake on the next release. */
  waitFor(waiter: SlotWaiter): void {
    this.#waiters.add(waiter);
  }

  /** Forgets a waiter that no longer waits. */
  forget(waiter: SlotWaiter): void {
    this.#waiters.delete(waiter);
  }
}
