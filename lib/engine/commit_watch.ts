/**
 * Wakes a worker within milliseconds of a commit by another process to the same local KV
 * file (a new run, a resume, an event, a freed limit slot): a write to the file makes
 * the worker look at the head of the due-index soon. Only a hint: the sweep stays the
 * guarantee, and a watch that fails leaves the worker polling as before.
 *
 * A busy file (another process's steps, or this worker's own) is written thousands of
 * times a second, so looks are coalesced: one at a time, never two starting closer than
 * a gap, and a write heard during a look makes one more look after it. The gap doubles,
 * up to {@linkcode MAX_GAP_MS}, after each look that found nothing to wake, and falls
 * back to {@linkcode MIN_GAP_MS} after one that did: an idle worker beside a busy file
 * looks about 40 times a second, not at every commit. And since a commit may become
 * visible a while after its last write is heard, looks go on until
 * {@linkcode FOLLOW_MS} after the last write heard: a lone commit costs about eight looks.
 * A write heard after {@linkcode QUIET_MS} of none starts a new burst at once, even in a
 * spaced gap (at most once per {@linkcode FOLLOW_MS}): a worker whose own commits just
 * spaced its looks still looks at another process's commit within a few ms.
 *
 * A worker with no room for another run has nothing to look for: while it is full the
 * watch is not armed again (arming one costs the worker's thread about half a
 * millisecond, and a busy worker hears each of its own commits), and once it has room it
 * looks at once, since writes meanwhile were not heard.
 *
 * @module
 */
import { nextWrite } from "../platform/file_watch.ts";

/** After the first write of a commit, wait this long: it may not be visible yet. */
export const SETTLE_MS = 1;
/** The shortest time between the starts of two looks. */
export const MIN_GAP_MS = 2;
/** The longest, reached while looks keep finding nothing. */
export const MAX_GAP_MS = 25;
/**
 * Looks go on this long after the last write heard. SQLite's last write of a commit
 * comes before its fsync, and the commit is visible only after it: on a slow disk, many
 * ms later, and nothing is heard then.
 */
export const FOLLOW_MS = 50;
/** A write after this long without one starts a new burst, even within a gap. */
export const QUIET_MS = 10;
/** Within this long of a lone write, looks that find nothing keep the shortest gap. */
export const FIRST_FOLLOW_MS = 10;

/** One armed watch: whether and when its write came. */
interface Armed {
  /** True at a write, false when closed or failed. */
  done: Promise<boolean>;
  heardAt: number | null;
  armedAt: number;
}

/** Looks at the due-index soon after each write to a KV file. */
export class CommitWatch {
  readonly #file: string;
  readonly #look: () => Promise<number>;
  readonly #stop = new AbortController();
  readonly #running: Promise<void>;
  readonly #wanted: () => boolean;
  /** Resolves the wait of a watch paused while the worker was full. */
  #resume: (() => void) | undefined;
  #failure: unknown;
  #looks = 0;

  /**
   * Starts watching.
   *
   * @param file the local KV file
   * @param look looks at the due-index and wakes what it may; resolves to how many runs
   *   it woke
   * @param onError told once if the watch fails; looks then stop (the sweep goes on)
   * @param wanted whether a look could wake anything now (false while the worker is
   *   full); after it was false, {@linkcode want} says it may be true again
   */
  constructor(
    file: string,
    look: () => Promise<number>,
    onError: (error: unknown) => void,
    wanted: () => boolean = () => true,
  ) {
    this.#file = file;
    this.#look = look;
    this.#wanted = wanted;
    this.#running = this.#watch().then(() => {
      if (this.#failure !== undefined && !this.#stop.signal.aborted) onError(this.#failure);
    });
  }

  /** Looks made so far (for benchmarks). */
  get looks(): number {
    return this.#looks;
  }

  /** Stops watching and waits for a look in flight. */
  async close(): Promise<void> {
    this.#stop.abort();
    this.#resume?.();
    await this.#running;
  }

  /** The worker may have room again: a watch paused while it was full goes on. */
  want(): void {
    this.#resume?.();
  }

  /** Resolves once {@linkcode want} or {@linkcode close} is called. */
  #untilWanted(): Promise<void> {
    return new Promise((resolve) => {
      this.#resume = () => {
        this.#resume = undefined;
        resolve();
      };
    });
  }

  #arm(): Armed {
    const armed: Armed = {
      done: Promise.resolve(false),
      heardAt: null,
      armedAt: performance.now(),
    };
    armed.done = nextWrite(this.#file, this.#stop.signal).then((heard) => {
      if (heard) armed.heardAt = performance.now();
      return heard;
    }, (error) => {
      this.#failure ??= error;
      return false;
    });
    return armed;
  }

  async #watch(): Promise<void> {
    const signal = this.#stop.signal;
    let armed = this.#arm();
    while ((await armed.done) && !signal.aborted && this.#failure === undefined) {
      if (!this.#wanted()) {
        // full: not armed again until there is room; then a look at once
        while (!this.#wanted() && !signal.aborted) await this.#untilWanted();
        if (signal.aborted) break;
        armed = this.#arm();
      }
      // a burst: look until no write was heard for FOLLOW_MS
      let lastHeardAt = armed.heardAt ?? performance.now();
      let cutAt = -Infinity;
      let gapMs = MIN_GAP_MS;
      let delay = SETTLE_MS;
      while (!signal.aborted && this.#failure === undefined) {
        // the worker filled up: the write heard (or the next) pauses the watch above
        if (!this.#wanted()) break;
        // writes from here on are heard, the look below does not see them all
        if (armed.heardAt !== null) armed = this.#arm();
        // A write after QUIET_MS of none (this worker's own commits over, say) is most
        // likely a new commit by another process: a new burst, looked at after SETTLE_MS
        // rather than after the spaced gap; at most once per FOLLOW_MS, so that commits at
        // a steady pace cost at most the looks of lone commits FOLLOW_MS apart.
        const cut = performance.now() - cutAt >= FOLLOW_MS ? newBurst(armed) : undefined;
        if (await sleepUntilWrite(delay, signal, cut)) {
          cutAt = lastHeardAt = armed.heardAt!;
          gapMs = MIN_GAP_MS;
          delay = SETTLE_MS;
          continue;
        }
        if (signal.aborted) break;
        const startedAt = performance.now();
        this.#looks++;
        // the look logs its own failures; the next write or the sweep looks again
        const woken = await this.#look().catch(() => 0);
        const quiet = armed.heardAt === null;
        // a lone commit not visible yet: look again soon; writes still coming: space the looks
        gapMs = woken > 0 || quiet && performance.now() - lastHeardAt < FIRST_FOLLOW_MS
          ? MIN_GAP_MS
          : Math.min(gapMs * 2, MAX_GAP_MS);
        if (!quiet) lastHeardAt = armed.heardAt!;
        else if (performance.now() - lastHeardAt >= FOLLOW_MS) break;
        delay = Math.max(SETTLE_MS, startedAt + gapMs - performance.now());
      }
    }
  }
}

/** Resolves true at the watch's write if it came after QUIET_MS without one. */
async function newBurst(armed: Armed): Promise<boolean> {
  return await armed.done && armed.heardAt! - armed.armedAt >= QUIET_MS;
}

/**
 * Waits `ms`, or less when `signal` aborts or `write` comes.
 *
 * @returns true when `write` came first with a write heard
 */
function sleepUntilWrite(
  ms: number,
  signal: AbortSignal,
  write?: Promise<boolean>,
): Promise<boolean> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (heard: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener("abort", aborted);
      resolve(heard);
    };
    const aborted = () => done(false);
    const timer = setTimeout(aborted, ms);
    signal.addEventListener("abort", aborted, { once: true });
    write?.then((heard) => heard && done(true));
  });
}
