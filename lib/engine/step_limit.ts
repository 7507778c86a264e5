/**
 * A worker's step limit: how many steps may run at once, shared by all the runs it drives.
 * A run that finds the limit reached waits to be woken when a step ends.
 *
 * @module
 */

/** Something that waits for the step limit to let one more step run. */
export interface StepLimitWaiter {
  /** Called when a step may start again. */
  wake(): void;
}

/** A counting bound on running steps, with a wake-up list. */
export class StepLimit {
  readonly #max: number;
  #used = 0;
  readonly #waiters = new Set<StepLimitWaiter>();

  /**
   * Creates the bound.
   *
   * @param max steps that may run at once
   */
  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) {
      throw new RangeError(`Invalid step concurrency: must be a positive integer, got ${max}`);
    }
    this.#max = max;
  }

  /** Steps running now. */
  get used(): number {
    return this.#used;
  }

  /** Counts one more running step, if the limit allows it. */
  tryAcquire(): boolean {
    if (this.#used >= this.#max) return false;
    this.#used++;
    return true;
  }

  /** Counts one step less and wakes the waiters. */
  release(): void {
    this.#used--;
    if (this.#waiters.size === 0) return;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const w of waiters) w.wake();
  }

  /** Registers a waiter to wake on the next release. */
  waitFor(waiter: StepLimitWaiter): void {
    this.#waiters.add(waiter);
  }

  /** Forgets a waiter that no longer waits. */
  forget(waiter: StepLimitWaiter): void {
    this.#waiters.delete(waiter);
  }
}
