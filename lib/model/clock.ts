/**
 * Time as the engine sees it: when work is due, and waiting until then. Tests replace it
 * with a clock they control (see `lib/testing/mod.ts`), so a retry due in five minutes runs
 * at once. Time limits of step bodies (timeouts) and lease renewal stay on wall time.
 *
 * @module
 */

/** A source of the current time and of wake-ups at a later time. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /**
   * Calls `fn` once `ms` milliseconds have passed on this clock.
   *
   * @returns a function that cancels the call
   */
  after(ms: number, fn: () => void): () => void;
  /**
   * Milliseconds on a clock that only goes forward, for spans measured within this
   * process, which a correction of the wall clock must not shorten. Without it, spans are
   * measured with {@linkcode Clock.now}.
   */
  elapsed?(): number;
}

/** Wall-clock time. */
export const systemClock: Clock = {
  now: () => Date.now(),
  elapsed: () => performance.now(),
  after(ms, fn) {
    const timer = setTimeout(fn, Math.max(0, ms));
    return () => clearTimeout(timer);
  },
};

/**
 * Resolves once `ms` have passed on `clock` (default wall time), or at once when `signal`
 * aborts, and then leaves no timer behind.
 */
export function sleep(ms: number, signal?: AbortSignal, clock: Clock = systemClock): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      cancel();
      signal?.removeEventListener("abort", done);
      resolve();
    };
    let cancel = () => {};
    cancel = clock.after(Math.max(0, ms), done);
    signal?.addEventListener("abort", done, { once: true });
  });
}
