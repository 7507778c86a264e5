/**
 * What one process knows of its run limits' keys, so that a claim under a limit that is
 * not reached commits without reading first (`claimSeen` in `commands.ts`).
 *
 * A run under a limit may start when a slot is free and no run waits ahead of it in its
 * key's queue (`flow.ts`). Every commit that takes a slot of a key or puts a run in its
 * queue also writes the key's **mark** (`keys.limitQueueMark`), and the mark is listed with
 * the queue in one read. So a claim whose commit checks the mark's versionstamp as it was
 * when this process read the queue empty and then the slots knows that since then no run
 * joined the queue and no slot was taken: the slots free at that read are free still. The
 * claim takes one with no check of its own, and its commit writes the mark too.
 *
 * The **view** of a key is that mark and the slots held at the read, with the slots this
 * process's claims took since (and less those its runs freed since). A grouped commit
 * checks a mark once for all the claims of the key in it (`CommitBatch.shared`), so a
 * burst of claims of one key costs one check per commit, not one per claim. The view
 * follows its own claims: when a commit of them succeeds, its versionstamp is the mark
 * now (the commit's check says no other process wrote it between).
 *
 * What this process takes or queues another way (a claim that read, a step's start under
 * a limit of the same scope) ends the view until that commit is done, and the key is
 * read again after. A pick that fails its commit (another process took a slot or queued a
 * run) fails every claim sharing that commit, each then committed alone; so picks of that
 * key stop for a second.
 *
 * Marks are kept only where every take writes them: scopes without a `/`. A step limit's
 * default scope, `<pipeline>/<step>`, has one, so a step limit shares its slots with a run
 * limit only through a scope someone named, and a step's start writes the mark only then.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import type { Kv, KvCheck, KvEntry } from "../kv/kv.ts";
import { marked, readSlots, releaseTake, reserveTake, takenNow } from "./slots.ts";

/** A limit key: its scope, key and slots. */
export interface LimitKey {
  scope: string;
  key: string;
  max: number;
}

/** The head of a limit key's queue, with its mark, as one read found them. */
export interface QueueHead {
  /** The versionstamp of the key's mark (null: nothing ever wrote it). */
  mark: string | null;
  /** The first queued runs, in order: values are run ids. */
  entries: KvEntry<string>[];
}

/** The mark and the first `n` entries of a limit key's queue, in one list. */
export async function readQueue(
  kv: Kv,
  scope: string,
  key: string,
  n: number,
): Promise<QueueHead> {
  const head: QueueHead = { mark: null, entries: [] };
  // the mark's key sorts before every entry's (a string part before a number)
  const iter = kv.list<string>({ prefix: keys.limitQueuePrefix(scope, key) }, { limit: n + 1 });
  for await (const e of iter) {
    if (keys.isLimitQueueMark(e.key)) head.mark = e.versionstamp;
    else if (head.entries.length < n) head.entries.push(e);
  }
  return head;
}

/** A slot picked from a view, reserved in this process until {@linkcode ViewPick.done}. */
export interface ViewPick {
  index: number;
  /** The check of the key's mark the claim's commit makes (asked when it is put together). */
  check(): KvCheck;
  /** The commit that held the claim succeeded, at `versionstamp`. */
  committed(versionstamp: string): void;
  /** Its commit is done (`took`: it succeeded): ends the reservation. */
  done(took: boolean): void;
}

interface View {
  /** The key's mark as this process last knew it (null: absent). */
  mark: string | null;
  /** Slots held at the read, less those this process's runs freed since. */
  held: Set<number>;
}

/** Bound on the keys remembered; past it they start again empty. */
const MAX_KEYS = 10_000;

/** After a failed pick, how long picks of the key stop. */
const PICK_OFF_MS = 1_000;

/** The run-limit keys one process (one store) knows; see the module's description. */
export class LimitViews {
  /** What it did: reads of keys, picks whose commit held, picks whose commit failed. */
  readonly stats = { reads: 0, picks: 0, missed: 0 };
  readonly #views = new Map<string, View>();
  /** Reads of a key in flight: claims of a key that come together share one. */
  readonly #reading = new Map<string, Promise<void>>();
  /** Slots this process's claims took, by key, with the sequence number of the take. */
  readonly #mine = new Map<string, Map<number, number>>();
  /** Takes and queueings of this process in flight another way, by key. */
  readonly #others = new Map<string, number>();
  /** How many such takes and queueings began or ended, by key: a read they overlap is old. */
  readonly #changes = new Map<string, number>();
  /** Until when picks of a key are off. */
  readonly #off = new Map<string, number>();
  #seq = 0;
  /** The last claim waiting for a read: the next waits for it too. */
  #waiting: Promise<void> = Promise.resolve();

  /**
   * A slot of `limit` to take without a read or a check of its own, or null when this
   * process does not know the key to be unreached (then the claim reads). Reads the key
   * once, for all the claims asking at once, when it has no view of it.
   */
  async pick(kv: Kv, limit: LimitKey, now: number): Promise<ViewPick | null> {
    const id = viewId(limit.scope, limit.key);
    if (!marked(limit.scope) || (this.#off.get(id) ?? 0) > now) return null;
    if (!this.#views.has(id) && !this.#others.has(id)) {
      let reading = this.#reading.get(id);
      if (!reading) {
        reading = this.#read(kv, limit).finally(() => this.#reading.delete(id));
        this.#reading.set(id, reading);
      }
      // Claims that wait for reads go on in the order they came, not key by key as their
      // reads end: a sweep's claims come in the order the runs were created, which is the
      // order of their records in KV, and a commit of runs close together there writes
      // fewer pages (key by key, 56 KiB a step against 33 for 2,000 runs over 200 keys).
      // A failed read leaves the claim to read for itself.
      const turn = Promise.all([this.#waiting, reading.catch(() => {})]).then(() => {});
      this.#waiting = turn;
      await turn;
    }
    const view = this.#views.get(id);
    if (!view) return null;
    const mine = this.#mine.get(id);
    const busy = takenNow("slot", limit.scope, limit.key);
    for (let i = 0; i < limit.max; i++) {
      if (view.held.has(i) || mine?.has(i) || busy(i)) continue;
      if (!reserveTake("slot", limit.scope, limit.key, i)) continue;
      return this.#picked(limit, id, view, i);
    }
    return null;
  }

  #picked(limit: LimitKey, id: string, view: View, index: number): ViewPick {
    const picked = view.mark;
    const key = keys.limitQueueMark(limit.scope, limit.key);
    // the mark this claim checks: the view's now, while the view it was picked from goes
    // on (it moves only with this process's own claims, none of which takes this slot);
    // else the mark it was picked at, which then fails the commit if anything changed
    const checked = () => this.#views.get(id) === view ? view.mark : picked;
    return {
      index,
      check: () => ({ key, versionstamp: checked() }),
      committed: (versionstamp) => {
        // each claim of the key in the commit says so: the first moves the mark
        if (this.#views.get(id) !== view || this.#others.has(id)) return;
        view.mark = versionstamp;
      },
      done: (took) => {
        if (took) this.#took(id, index);
        else this.#missed(id, Date.now());
        this.stats[took ? "picks" : "missed"]++;
        releaseTake("slot", limit.scope, limit.key, index);
      },
    };
  }

  /**
   * This process is about to take a slot of `limit` or queue a run of it another way (a
   * claim that read, a step's start): the view ends until the returned function is
   * called, once that commit is done. A claim's take that succeeded says so with
   * `took`.
   */
  other(limit: { scope: string; key: string }): (took?: number) => void {
    const id = viewId(limit.scope, limit.key);
    if (!marked(limit.scope)) return () => {};
    this.#views.delete(id);
    this.#changed(id);
    this.#others.set(id, (this.#others.get(id) ?? 0) + 1);
    let open = true;
    return (took) => {
      if (!open) return;
      open = false;
      if (took !== undefined) this.#took(id, took);
      const n = this.#others.get(id)! - 1;
      if (n > 0) this.#others.set(id, n);
      else this.#others.delete(id);
      // its commit may have moved the mark: read again
      this.#views.delete(id);
      this.#changed(id);
    };
  }

  /**
   * Whether runs may wait in `limit`'s queue: false only when the key's mark is as this
   * process last knew it with the queue empty (nothing can have joined since). A run's
   * end asks before it reads the queue to wake the next. The marks of the keys asked about
   * at about the same time are read together, ten to a read.
   */
  mayBeQueued(kv: Kv, limit: { scope: string; key: string }): Promise<boolean> {
    const id = viewId(limit.scope, limit.key);
    if (!this.#views.has(id)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const asked = this.#asked.get(id);
      if (asked) asked.answers.push(resolve);
      else this.#asked.set(id, { limit, answers: [resolve] });
      this.#asking ??= setTimeout(() => this.#answer(kv), 0);
    });
  }

  /** Keys {@linkcode mayBeQueued} was asked about since the last read of marks. */
  #asked = new Map<
    string,
    { limit: { scope: string; key: string }; answers: ((maybe: boolean) => void)[] }
  >();
  #asking: ReturnType<typeof setTimeout> | undefined;

  #answer(kv: Kv): void {
    this.#asking = undefined;
    const asked = [...this.#asked];
    this.#asked = new Map();
    for (let i = 0; i < asked.length; i += 10) {
      const part = asked.slice(i, i + 10);
      const views = part.map(([id]) => this.#views.get(id));
      kv.getMany(part.map(([, { limit }]) => keys.limitQueueMark(limit.scope, limit.key))).then(
        (marks) =>
          part.forEach(([, { answers }], j) => {
            const maybe = views[j] === undefined || views[j]!.mark !== marks[j].versionstamp;
            for (const answer of answers) answer(maybe);
          }),
        () => part.forEach(([, { answers }]) => answers.forEach((answer) => answer(true))),
      );
    }
  }

  /** A run of this process that held slot `index` of `limit` ended and freed it. */
  freed(limit: { scope: string; key: string }, index: number): void {
    const id = viewId(limit.scope, limit.key);
    const mine = this.#mine.get(id);
    mine?.delete(index);
    if (mine?.size === 0) this.#mine.delete(id);
    this.#views.get(id)?.held.delete(index);
  }

  #changed(id: string): void {
    if (this.#changes.size >= MAX_KEYS) this.#changes.clear();
    this.#changes.set(id, (this.#changes.get(id) ?? 0) + 1);
  }

  #took(id: string, index: number): void {
    let mine = this.#mine.get(id);
    if (!mine) {
      if (this.#mine.size >= MAX_KEYS) this.#mine.clear();
      this.#mine.set(id, mine = new Map());
    }
    mine.set(index, ++this.#seq);
  }

  #missed(id: string, now: number): void {
    this.#views.delete(id);
    if (this.#off.size >= MAX_KEYS) this.#off.clear();
    this.#off.set(id, now + PICK_OFF_MS);
  }

  async #read(kv: Kv, limit: LimitKey): Promise<void> {
    const id = viewId(limit.scope, limit.key);
    const seq = this.#seq;
    const changes = this.#changes.get(id);
    this.stats.reads++;
    // the mark first, then the slots: a take after the mark's read either shows in the
    // slots or moved the mark (and fails the claims that check it)
    const queue = await readQueue(kv, limit.scope, limit.key, 1);
    if (queue.entries.length > 0) return;
    const slots = await readSlots(kv, limit.scope, limit.key);
    // another take or queueing of this process began or ended meanwhile: its commit
    // moves the mark
    if (this.#changes.get(id) !== changes) return;
    const held = new Set(slots.map((e) => e.key[e.key.length - 1] as number));
    // a slot taken here before the read and not held at it was freed elsewhere (a cancel)
    const mine = this.#mine.get(id);
    for (const [index, at] of mine ?? []) if (at <= seq && !held.has(index)) mine!.delete(index);
    if (this.#views.size >= MAX_KEYS) this.#views.clear();
    this.#views.set(id, { mark: queue.mark, held });
  }
}

function viewId(scope: string, key: string): string {
  return `${scope}\u0000${key}`;
}
