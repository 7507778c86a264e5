/**
 * What a worker knows of the step-limit keys its runs take slots of: which slots its tasks
 * hold or are taking, whether a key was found full, when it was healed, and which tasks
 * wait for a free here. One {@linkcode SlotNotifier} per worker, shared by every run it
 * drives (`step_flow.ts` takes and waits through it).
 *
 * @module
 */
import { releaseTakeOf, reserveTakeOf, takeId, takenNow, takesOf } from "../../store/slots.ts";
/** How often a process heals the slots of one key at most, ms. */
const HEAL_EVERY_MS = 1_000;
/**
 * Smallest limit whose slots a take may pick without reading KV first (see
 * `SlotNotifier.blindPick`): with few slots per key, workers would meet at once.
 */
const BLIND_MIN = 16;
/** How long blind picks of a key stay off after one met another process's slot, ms. */
const BLIND_OFF_MS = 1_000;
/** How long a key found full is taken to stay full in a process without a free, ms. */
const FULL_FOR_MS = 100;

/** What a process knows of one (scope, key) of a step limit. */
class KeyState {
  /** When a take of this process last found the key full; a free here clears it. */
  fullAt = -Infinity;
  /** When this process last healed the key's slots. */
  healedAt = -Infinity;
  /** Until when blind picks of the key are off: one of them met another's slot. */
  blindOffUntil = 0;
  /** The slots that tasks of this process hold or are taking. */
  readonly held = new HeldSlots();
  /** Tasks waiting for a free of a slot here, longest waiting first. */
  listeners: Set<() => void> | undefined;

  /** @param takeId the key's id among the takes of this process (`store/slots.ts`) */
  constructor(readonly takeId: string) {}

  /** Whether it holds nothing worth keeping: nothing held or taken, nobody waiting. */
  get idle(): boolean {
    return !this.held.busy && !this.listeners;
  }
}

/** How many keys a notifier knows before it forgets the idle ones. */
const KEYS_KEPT = 10_000;

/**
 * Tells the tasks of this process waiting for a slot of a (scope, key) that one was freed
 * here. One per worker, shared by every run it drives.
 */
export class SlotNotifier {
  readonly #keys = new Map<string, KeyState>();
  /** How many keys it may know before it forgets the idle ones again. */
  #sweepAt = KEYS_KEPT;

  #state(scope: string, key: string): KeyState {
    const id = `${scope}\u0000${key}`;
    let state = this.#keys.get(id);
    if (!state) {
      if (this.#keys.size >= this.#sweepAt) {
        for (const [k, s] of this.#keys) if (s.idle) this.#keys.delete(k);
        // keys that stay busy are not scanned again at every new one
        this.#sweepAt = Math.max(KEYS_KEPT, 2 * this.#keys.size);
      }
      this.#keys.set(id, state = new KeyState(takeId("slot", scope, key)));
    }
    return state;
  }

  /**
   * Whether (scope, key) is known full: a take of this process found it so within
   * {@linkcode FULL_FOR_MS} and none of its slots freed here since. A task woken by its
   * timer then waits again without reading KV: many waiting tasks cost a few reads a
   * second, not one each per try. (A free in another process is seen once that passed.)
   */
  knownFull(scope: string, key: string, now: number): boolean {
    return this.#state(scope, key).fullAt + FULL_FOR_MS > now;
  }

  /** A take found (scope, key) full. */
  full(scope: string, key: string, now: number): void {
    this.#state(scope, key).fullAt = now;
  }

  /**
   * Whether a task that found (scope, key) full should heal its slots now: at most once
   * per {@linkcode HEAL_EVERY_MS} per key in a process, since a heal reads every holder
   * and many waiting tasks would otherwise each do it at every try.
   */
  mayHeal(scope: string, key: string, now: number): boolean {
    const state = this.#state(scope, key);
    if (state.healedAt + HEAL_EVERY_MS > now) return false;
    state.healedAt = now;
    return true;
  }

  /**
   * Marks a slot (`kind` "slot") or throttle entry ("throttle") as being taken by a commit
   * of this process (`reserveTake` in `store/slots.ts`, shared with run claims). Returns
   * false when another has it.
   */
  reserve(kind: "slot" | "throttle", scope: string, key: string, index: number): boolean {
    if (kind === "throttle") return reserveTakeOf(takeId(kind, scope, key), index);
    const state = this.#state(scope, key);
    if (!reserveTakeOf(state.takeId, index)) return false;
    state.held.reserve(index);
    return true;
  }

  /** Ends a {@linkcode reserve}: its commit is done. */
  unreserve(kind: "slot" | "throttle", scope: string, key: string, index: number): void {
    if (kind === "throttle") return releaseTakeOf(takeId(kind, scope, key), index);
    this.#unreserve(this.#state(scope, key), index);
  }

  #unreserve(state: KeyState, index: number): void {
    releaseTakeOf(state.takeId, index);
    state.held.unreserve(index);
  }

  /**
   * Whether a commit of this process in flight is taking an index of (scope, key): a live
   * view, asked again at each pick.
   */
  reservedOf(kind: "slot" | "throttle", scope: string, key: string): (index: number) => boolean {
    return takenNow(kind, scope, key);
  }

  /** A take of this process now holds slot `index` of (scope, key). */
  holding(scope: string, key: string, index: number): void {
    this.#state(scope, key).held.add(index);
  }

  /**
   * A slot of a large limit to try without reading KV, or -1: the first index from this
   * process's own starting point that no task here holds or is taking. Workers start at
   * different points, so until their takes meet, a pick finds the slot free; a pick that
   * finds it taken turns blind picks of that key off for a second ({@linkcode blindMissed}).
   */
  blindPick(scope: string, key: string, max: number, now: number): number {
    return this.#blindPick(this.#state(scope, key), max, now);
  }

  #blindPick(state: KeyState, max: number, now: number): number {
    if (max < BLIND_MIN || state.blindOffUntil > now) return -1;
    const mine = state.held;
    // every take of this process in flight (its own reserved in `mine` too; a run claim's
    // only there)
    const taking = takesOf(state.takeId);
    // past half of the slots held here, what others hold matters: read instead
    if (2 * (mine.size + (taking?.size ?? 0)) >= max) return -1;
    return mine.firstFree(this.#start % max, max, taking);
  }

  /**
   * {@linkcode knownFull}, {@linkcode blindPick} and {@linkcode reserve} at once: a slot of
   * (scope, key) picked without a read and reserved, or -1.
   */
  pickNow(scope: string, key: string, max: number, now: number): number {
    const state = this.#state(scope, key);
    if (state.fullAt + FULL_FOR_MS > now) return -1;
    const index = this.#blindPick(state, max, now);
    if (index < 0 || !reserveTakeOf(state.takeId, index)) return -1;
    state.held.reserve(index);
    return index;
  }

  /**
   * Ends a {@linkcode pickNow}: its commit is done. `held`: a task here holds the slot now;
   * `missed`: it met another's slot, and blind picks of the key go off as in
   * {@linkcode blindMissed}; `dropped`: its driver left the run, and a takeover frees it.
   */
  pickedNow(
    scope: string,
    key: string,
    index: number,
    outcome: "held" | "missed" | "dropped",
    now: number,
  ): void {
    const state = this.#state(scope, key);
    this.#unreserve(state, index);
    if (outcome === "held") state.held.add(index);
    else if (outcome === "missed") state.blindOffUntil = now + BLIND_OFF_MS;
  }

  /** A blind pick of (scope, key) found its slot taken by another process. */
  blindMissed(scope: string, key: string, now: number): void {
    this.#state(scope, key).blindOffUntil = now + BLIND_OFF_MS;
  }

  /** Where this process's blind picks start, the same for every key. */
  readonly #start = Math.floor(Math.random() * 1_000_000);

  /** Calls `fn` once, at the next free of a slot of (scope, key); returns a canceller. */
  listen(scope: string, key: string, fn: () => void): () => void {
    const state = this.#state(scope, key);
    const set = state.listeners ??= new Set();
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0 && state.listeners === set) state.listeners = undefined;
    };
  }

  /**
   * A slot of (scope, key) was freed: wakes the task that waited longest for one (one
   * slot, one taker: the others would only find it taken; their timers still run).
   */
  notify(scope: string, key: string, index?: number): void {
    const state = this.#keys.get(`${scope}\u0000${key}`);
    if (!state) return;
    if (index !== undefined) state.held.delete(index);
    state.fullAt = -Infinity;
    const set = state.listeners;
    if (!set) return;
    const [first] = set;
    set.delete(first);
    if (set.size === 0) state.listeners = undefined;
    first();
  }
}

/**
 * The slots of one (scope, key) held by this process, as bits: the first free one from a
 * point is found a word (32 slots) at a time, not a slot at a time, since a worker may
 * hold hundreds of one key's slots and picks one at every start.
 */
class HeldSlots {
  /** Held slots. */
  #bits = new Uint32Array(1);
  /** Slots a take of this process is taking (its commit in flight). */
  #taking = new Uint32Array(1);
  #size = 0;
  /** Slots it is taking. */
  #takingCount = 0;

  /** Whether it holds or is taking any slot. */
  get busy(): boolean {
    return this.#size > 0 || this.#takingCount > 0;
  }

  /** How many it holds. */
  get size(): number {
    return this.#size;
  }

  add(index: number): void {
    this.#grow(index);
    const word = index >>> 5;
    const bit = 1 << (index & 31);
    if ((this.#bits[word] & bit) === 0) this.#size++;
    this.#bits[word] |= bit;
  }

  delete(index: number): void {
    const word = index >>> 5;
    if (word >= this.#bits.length) return;
    const bit = 1 << (index & 31);
    if ((this.#bits[word] & bit) !== 0) this.#size--;
    this.#bits[word] &= ~bit;
  }

  reserve(index: number): void {
    this.#grow(index);
    const word = index >>> 5;
    const bit = 1 << (index & 31);
    if ((this.#taking[word] & bit) === 0) this.#takingCount++;
    this.#taking[word] |= bit;
  }

  unreserve(index: number): void {
    const word = index >>> 5;
    if (word >= this.#taking.length) return;
    const bit = 1 << (index & 31);
    if ((this.#taking[word] & bit) !== 0) this.#takingCount--;
    this.#taking[word] &= ~bit;
  }

  #grow(index: number): void {
    const word = index >>> 5;
    if (word < this.#bits.length) return;
    const length = Math.max(word + 1, 2 * this.#bits.length);
    const bits = new Uint32Array(length);
    bits.set(this.#bits);
    this.#bits = bits;
    const taking = new Uint32Array(length);
    taking.set(this.#taking);
    this.#taking = taking;
  }

  /**
   * The first index below `max`, from `start` on and then from 0, that it neither holds
   * nor is taking, and that is not in `claims` (what else of this process is taking);
   * -1 when there is none.
   */
  firstFree(start: number, max: number, claims: ReadonlySet<number> | undefined): number {
    const found = this.#scan(start, max, claims);
    return found >= 0 ? found : this.#scan(0, start, claims);
  }

  /** The first free index in [from, to), or -1. */
  #scan(from: number, to: number, claims: ReadonlySet<number> | undefined): number {
    const bits = this.#bits;
    const taking = this.#taking;
    for (let i = from; i < to;) {
      const word = i >>> 5;
      // free bits of this word at or after i
      const used = word < bits.length ? bits[word] | taking[word] : 0;
      const free = ~used & (~0 << (i & 31));
      if (free === 0) {
        i = (word + 1) << 5;
        continue;
      }
      const index = (word << 5) + 31 - Math.clz32(free & -free);
      if (index >= to) return -1;
      if (!claims?.has(index)) return index;
      i = index + 1;
    }
    return -1;
  }
}
