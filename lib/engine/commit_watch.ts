/**
 * Wakes a worker within milliseconds of a commit by another process to the same local KV
 * file (a new run, a resume, an event, a freed limit slot): each write to the file makes
 * the worker look at the head of the due-index soon. Only a hint: the sweep stays the
 * guarantee, and a watch that fails leaves the worker polling as before.
 *
 * A commit makes several writes, and a busy file (another process's steps, or this
 * worker's own) makes thousands a second, so looks are coalesced: at most one in flight
 * and one queued, never two starting closer than a gap. The gap doubles, up to
 * {@linkcode MAX_GAP_MS}, after each look that found nothing to wake, and falls back to
 * {@linkcode MIN_GAP_MS} after one that did: an idle worker beside a busy file looks
 * about 40 times a second, not at every commit.
 *
 * @module
 */
import { type CommitWatcher, watchCommits } from "../platform/file_watch.ts";

/** After the first write of a commit, wait this long: it may not be visible yet. */
export const SETTLE_MS = 1;
/** The shortest time between the starts of two looks. */
export const MIN_GAP_MS = 2;
/** The longest, reached while looks keep finding nothing. */
export const MAX_GAP_MS = 25;

/**
 * Where the watch is: `idle` until a write is heard; `waiting` for its look's timer;
 * `looking`; `again` when a write came during the look, so another follows it.
 */
type WatchState = "idle" | "waiting" | "looking" | "again" | "closed";

/** Looks at the due-index soon after each write to a KV file. */
export class CommitWatch {
  readonly #look: () => Promise<number>;
  readonly #watcher: CommitWatcher;
  #state: WatchState = "idle";
  #timer: ReturnType<typeof setTimeout> | undefined;
  #looking: Promise<void> = Promise.resolve();
  #lastLookAt = -Infinity;
  #gapMs = MIN_GAP_MS;
  #looks = 0;

  /**
   * Starts watching.
   *
   * @param file the local KV file
   * @param look looks at the due-index and wakes what it may; resolves to how many runs
   *   it woke
   * @param onError told once if the watch fails; looks then stop (the sweep goes on)
   */
  constructor(file: string, look: () => Promise<number>, onError: (error: unknown) => void) {
    this.#look = look;
    this.#watcher = watchCommits(file, () => this.#heard(), onError);
  }

  /** Looks made so far (for benchmarks). */
  get looks(): number {
    return this.#looks;
  }

  /** Stops watching and waits for a look in flight. */
  async close(): Promise<void> {
    this.#state = "closed";
    clearTimeout(this.#timer);
    await this.#watcher.close();
    await this.#looking;
  }

  #heard(): void {
    if (this.#state === "idle") this.#wait();
    else if (this.#state === "looking") this.#state = "again";
  }

  #wait(): void {
    this.#state = "waiting";
    const delay = Math.max(SETTLE_MS, this.#lastLookAt + this.#gapMs - performance.now());
    this.#timer = setTimeout(() => this.#start(), delay);
  }

  #start(): void {
    if (this.#state !== "waiting") return;
    this.#state = "looking";
    this.#lastLookAt = performance.now();
    this.#looks++;
    this.#looking = this.#look().then(
      (woken) => {
        this.#gapMs = woken > 0 ? MIN_GAP_MS : Math.min(this.#gapMs * 2, MAX_GAP_MS);
      },
      // the look logs its own failures; the next write or the sweep looks again
      () => {},
    ).finally(() => {
      if (this.#state === "again") this.#wait();
      else if (this.#state === "looking") this.#state = "idle";
    });
  }
}
