/**
 * A binary min-heap: the driver keeps the fan-out items waiting for a retry in one, so
 * finding the next retry due costs O(log n) however many items a step has.
 *
 * @module
 */

/** A binary min-heap ordered by `before`. */
export class MinHeap<T> {
  readonly #items: T[] = [];
  readonly #before: (a: T, b: T) => boolean;

  /**
   * Creates an empty heap.
   *
   * @param before whether `a` comes out before `b`
   */
  constructor(before: (a: T, b: T) => boolean) {
    this.#before = before;
  }

  /** How many entries it holds. */
  get size(): number {
    return this.#items.length;
  }

  /** The first entry, left in place; undefined when empty. */
  peek(): T | undefined {
    return this.#items[0];
  }

  /** Adds an entry. */
  push(item: T): void {
    const items = this.#items;
    let i = items.push(item) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(items[i], items[parent])) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }

  /** Removes and returns the first entry; undefined when empty. */
  pop(): T | undefined {
    const items = this.#items;
    const first = items[0];
    const last = items.pop();
    if (items.length === 0 || last === undefined) return first;
    items[0] = last;
    let i = 0;
    while (true) {
      const left = 2 * i + 1;
      const right = left + 1;
      let least = i;
      if (left < items.length && this.#before(items[left], items[least])) least = left;
      if (right < items.length && this.#before(items[right], items[least])) least = right;
      if (least === i) return first;
      [items[i], items[least]] = [items[least], items[i]];
      i = least;
    }
  }
}
