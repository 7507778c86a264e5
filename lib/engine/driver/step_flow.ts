/**
 * Step-level flow control (DESIGN §11): a step's concurrency limit (at most `max` attempts
 * running at once per key, across workers and runs) and its throttle (at most `max`
 * attempt starts per period per key).
 *
 * A limited or throttled task that is ready computes its key, then takes a slot and/or a
 * throttle entry in ONE commit, fenced by the run's lease, that also records the task's
 * start (`running`, with `slot: [scope, key, index]`): a slot is never held without a
 * running task naming it, so `healSlots` can free one whose task no longer runs. The slot
 * is freed in the commit that records the attempt's end (`RunRecords.setTask`), or by the
 * takeover of a dead holder (`RunRecords.recoverCrash`), or by a cancel.
 *
 * A task that finds every slot taken (after healing) or its throttle spent waits here: it
 * holds no worker step slot, and is tried again on a timer with backoff, at once when
 * this process frees a slot of the same key ({@linkcode SlotNotifier}), or when its
 * throttle entry frees up.
 *
 * @module
 */
import { flowKey, type Limit, type Throttle } from "../../define/flow.ts";
import * as keys from "../../kv/keys.ts";
import type { ErrorInfo } from "../../model/errors.ts";
import type { SlotHolder, TaskRecord } from "../../model/records.ts";
import { pendingTask, startAttempt } from "../../model/transitions.ts";
import { healSlots, pickThrottle, readSlots, readThrottle } from "../../store/slots.ts";
import { takeThrottle } from "../../store/slots.ts";
import type { Kv, KvEntry } from "../../kv/kv.ts";
import type { Clock } from "../../model/clock.ts";
import type { Checkpoints } from "./checkpoints.ts";
import type { StepNode } from "./graph.ts";

/** First wait of a task that found its limit full, ms; it doubles up to the next. */
const FIRST_BACKOFF_MS = 50;
/** Longest wait between two tries of a task that finds its limit full, ms. */
const MAX_BACKOFF_MS = 1_000;
/** How often a process heals the slots of one key at most, ms. */
const HEAL_EVERY_MS = 1_000;
/** How long a key found full is taken to stay full in a process without a free, ms. */
const FULL_FOR_MS = 100;

/**
 * Tells the tasks of this process waiting for a slot of a (scope, key) that one was freed
 * here. One per worker, shared by every run it drives.
 */
export class SlotNotifier {
  readonly #listeners = new Map<string, Set<() => void>>();
  /** When a take of this process last found a (scope, key) full, by key; a free clears it. */
  readonly #full = new Map<string, number>();
  /** When this process last healed the slots of a (scope, key), by key. */
  readonly #healed = new Map<string, number>();

  /**
   * Whether (scope, key) is known full: a take of this process found it so within
   * {@linkcode FULL_FOR_MS} and none of its slots freed here since. A task woken by its
   * timer then waits again without reading KV: many waiting tasks cost a few reads a
   * second, not one each per try. (A free in another process is seen once that passed.)
   */
  knownFull(scope: string, key: string, now: number): boolean {
    const at = this.#full.get(`${scope}\u0000${key}`);
    return at !== undefined && at + FULL_FOR_MS > now;
  }

  /** A take found (scope, key) full. */
  full(scope: string, key: string, now: number): void {
    if (this.#full.size > 10_000) this.#full.clear();
    this.#full.set(`${scope}\u0000${key}`, now);
  }

  /**
   * Whether a task that found (scope, key) full should heal its slots now: at most once
   * per {@linkcode HEAL_EVERY_MS} per key in a process, since a heal reads every holder
   * and many waiting tasks would otherwise each do it at every try.
   */
  mayHeal(scope: string, key: string, now: number): boolean {
    const id = `${scope}\u0000${key}`;
    if ((this.#healed.get(id) ?? -Infinity) + HEAL_EVERY_MS > now) return false;
    if (this.#healed.size > 10_000) this.#healed.clear();
    this.#healed.set(id, now);
    return true;
  }

  /** Slots and throttle entries that a commit of this process in flight is taking. */
  readonly #taking = new Set<string>();

  /**
   * Marks a slot (`kind` "slot") or throttle entry ("throttle") as being taken by a commit
   * of this process: such commits may share one grouped KV commit, where two checks that
   * the same key is free would both pass. Returns false when another has it.
   */
  reserve(kind: string, scope: string, key: string, index: number): boolean {
    const id = `${kind}\u0000${scope}\u0000${key}\u0000${index}`;
    if (this.#taking.has(id)) return false;
    this.#taking.add(id);
    return true;
  }

  /** Ends a {@linkcode reserve}: its commit is done. */
  unreserve(kind: string, scope: string, key: string, index: number): void {
    this.#taking.delete(`${kind}\u0000${scope}\u0000${key}\u0000${index}`);
  }

  /** Whether a commit of this process in flight is taking that slot or entry. */
  reserved(kind: string, scope: string, key: string, index: number): boolean {
    return this.#taking.has(`${kind}\u0000${scope}\u0000${key}\u0000${index}`);
  }

  /** Calls `fn` once, at the next free of a slot of (scope, key); returns a canceller. */
  listen(scope: string, key: string, fn: () => void): () => void {
    const id = `${scope}\u0000${key}`;
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, set = new Set());
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.#listeners.get(id) === set) this.#listeners.delete(id);
    };
  }

  /**
   * A slot of (scope, key) was freed: wakes the task that waited longest for one (one
   * slot, one taker: the others would only find it taken; their timers still run).
   */
  notify(scope: string, key: string): void {
    const id = `${scope}\u0000${key}`;
    this.#full.delete(id);
    const set = this.#listeners.get(id);
    if (!set) return;
    const [first] = set;
    set.delete(first);
    if (set.size === 0) this.#listeners.delete(id);
    first();
  }
}

/** A task in flow control: taking its slot or throttle entry, or waiting for one. */
interface FlowTask {
  node: StepNode;
  index: number;
  limit: Limit | null;
  throttle: Throttle | null;
  /** Its keys, once computed. */
  limitKey?: string;
  throttleKey?: string;
  /** The next wait when its limit is full, ms. */
  backoff: number;
  /** When it came, in this run: waiting tasks try again in that order. */
  seq: number;
}

/** What step flow control needs from its driver. */
export interface StepFlowHost {
  kv: Kv;
  clock: Clock;
  runId: string;
  pipeline: string;
  checkpoints: Checkpoints;
  notifier: SlotNotifier;
  /** Its steps' limits and throttles. */
  steps: ReadonlyMap<string, { limit: Limit | null; throttle: Throttle | null }>;
  /** Whether the driver still drives the run. */
  acting(): boolean;
  /** The input of a task's key function: the step's inputs object, or the item. */
  input(node: StepNode, index: number): Promise<unknown>;
  /** The task's record now. */
  record(node: StepNode, index: number): TaskRecord;
  /** The task's start, with its slot, is durable: the driver runs its body. */
  started(node: StepNode, index: number, record: TaskRecord): void;
  /** The task cannot start (its key function failed): it fails with `error`. */
  failed(node: StepNode, index: number, error: ErrorInfo): void;
  /**
   * The task gives back the worker step slot it held: it waits, or (`dropped`) the driver
   * left the run and it is dropped.
   */
  release(node: StepNode, index: number, dropped: boolean): void;
  /** A waiting task may try again: the driver's walk calls {@linkcode StepFlow.take}. */
  wake(): void;
}

/** The flow-controlled tasks of one run. */
export class StepFlow {
  readonly #host: StepFlowHost;
  /** Tasks taking a slot or waiting for one, by task id. */
  readonly #tasks = new Map<string, FlowTask>();
  /** Waiting tasks whose wait ended: to take again. */
  #ready: FlowTask[] = [];
  readonly #cancels = new Map<string, () => void>();
  #seq = 0;
  #taking = 0;
  /**
   * The tasks waiting for a throttle key's next free entry, by key, with their one timer:
   * they try again together, in the order they came, so a throttle keeps their order.
   */
  readonly #gates = new Map<string, { tasks: FlowTask[]; cancel: () => void }>();
  /** The take in progress: the next waits for it. */
  #queue: Promise<void> = Promise.resolve();

  /** @param host what it needs from the driver */
  constructor(host: StepFlowHost) {
    this.#host = host;
  }

  /** Whether a step has a limit or a throttle (waits never do: they take no step slot). */
  limited(node: StepNode): boolean {
    if (node.def.wait) return false;
    const flow = this.#host.steps.get(node.def.name);
    return !!flow && (flow.limit !== null || flow.throttle !== null);
  }

  /** Whether the task is in flow control now (the walk must not start it again). */
  has(node: StepNode, index: number): boolean {
    return this.#tasks.has(taskId(node, index));
  }

  /**
   * How many tasks are taking a slot now: a stop waits for them as for running attempts,
   * so a start committed meanwhile is handed back, not left `running`.
   */
  get taking(): number {
    return this.#taking;
  }

  /** How many tasks are in flow control. */
  get size(): number {
    return this.#tasks.size;
  }

  /** The waiting tasks that may try again, taken from the list. */
  ready(): { node: StepNode; index: number }[] {
    const ready = this.#ready;
    this.#ready = [];
    return ready.sort((a, b) => a.seq - b.seq);
  }

  /** Puts back a task from {@linkcode ready} that cannot try again yet (no worker slot). */
  later(task: { node: StepNode; index: number }): void {
    const found = this.#tasks.get(taskId(task.node, task.index));
    if (found) this.#ready.push(found);
  }

  /**
   * Starts a task under its limit and throttle: the caller took a worker step slot for it
   * (and counted a fan-out item as running). Resolves once it started, waits or failed.
   */
  async take(node: StepNode, index: number): Promise<void> {
    const host = this.#host;
    const id = taskId(node, index);
    let task = this.#tasks.get(id);
    if (!task) {
      const flow = host.steps.get(node.def.name)!;
      task = {
        node,
        index,
        limit: flow.limit,
        throttle: flow.throttle,
        backoff: 0,
        seq: this.#seq++,
      };
      this.#tasks.set(id, task);
    }
    // One take at a time per run: tasks start in the order the walk chose them, and
    // siblings do not race each other for the same slot or throttle entry.
    const taking = this.#queue.then(() => this.#take(task));
    this.#queue = taking.catch(() => {});
    this.#taking++;
    try {
      await taking;
    } catch (error) {
      // KV failed: the driver finds out through its own commits; the task is dropped
      this.#drop(task);
      throw error;
    } finally {
      this.#taking--;
    }
  }

  async #take(task: FlowTask): Promise<void> {
    const host = this.#host;
    const { node, index } = task;
    const id = taskId(node, index);
    const where = `step '${node.def.name}' of pipeline '${host.pipeline}'`;
    if (task.limitKey === undefined && task.throttleKey === undefined) {
      try {
        const input = await host.input(node, index);
        if (task.limit) task.limitKey = flowKey(`limit key of ${where}`, task.limit.key, input);
        if (task.throttle) {
          task.throttleKey = flowKey(`throttle key of ${where}`, task.throttle.key, input);
        }
      } catch (error) {
        if (!host.acting()) return this.#drop(task);
        this.#tasks.delete(id);
        const message = error instanceof Error ? error.message : String(error);
        host.failed(node, index, { name: "FlowKeyError", message, retryable: false });
        return;
      }
    }
    for (let tries = 0; tries < 20; tries++) {
      if (!host.acting()) return this.#drop(task);
      let slot = -1;
      if (task.limit) {
        const { scope, max } = task.limit;
        if (host.notifier.knownFull(scope, task.limitKey!, Date.now())) {
          this.#wait(task, { scope, key: task.limitKey! });
          return;
        }
        const busy = (i: number) => host.notifier.reserved("slot", scope, task.limitKey!, i);
        slot = await probeSlots(host.kv, scope, task.limitKey!, max, busy);
        if (slot < 0) {
          let held = await readSlots(host.kv, scope, task.limitKey!);
          slot = anyFreeSlot(held, max, busy);
          if (slot < 0 && host.notifier.mayHeal(scope, task.limitKey!, Date.now())) {
            held = await healSlots(host.kv, held);
            slot = anyFreeSlot(held, max, busy);
          }
        }
        if (slot < 0) {
          host.notifier.full(scope, task.limitKey!, Date.now());
          this.#wait(task, { scope, key: task.limitKey! });
          return;
        }
      }
      let pick: ReturnType<typeof pickThrottle> | undefined;
      const now = host.clock.now();
      if (task.throttle) {
        const { scope, max, perMs } = task.throttle;
        // a rate against a service is in wall time, also on a test kit's clock
        const wall = Date.now();
        const entries = await readThrottle(host.kv, scope, task.throttleKey!);
        pick = pickThrottle(
          entries,
          max,
          perMs,
          wall,
          (i) => host.notifier.reserved("throttle", scope, task.throttleKey!, i),
        );
        if ("until" in pick) {
          this.#waitThrottle(task, pick.until - Date.now());
          return;
        }
      }
      if (!host.acting()) return this.#drop(task);
      const before = host.record(node, index);
      const record: TaskRecord = startAttempt(before, now);
      if (task.limit) record.slot = [task.limit.scope, task.limitKey!, slot];
      const holder: SlotHolder = {
        run: host.runId,
        step: node.def.name,
        item: index,
        attempt: record.attempt,
        at: now,
      };
      // Reserved in this process while the commit is in flight: it may share a grouped
      // commit with other runs' takes, which must not check the same slot or entry.
      const reserved: [string, string, string, number][] = [];
      if (task.limit) {
        if (!host.notifier.reserve("slot", task.limit.scope, task.limitKey!, slot)) continue;
        reserved.push(["slot", task.limit.scope, task.limitKey!, slot]);
      }
      if (pick && !("until" in pick)) {
        const entry = ["throttle", task.throttle!.scope, task.throttleKey!, pick.index] as const;
        if (!host.notifier.reserve(...entry)) {
          for (const r of reserved) host.notifier.unreserve(...r);
          continue;
        }
        reserved.push([...entry]);
      }
      let outcome: "ok" | "conflict" | "lost";
      try {
        outcome = await host.checkpoints.commitFenced(
          (op) => {
            if (task.limit) {
              const k = keys.slot(task.limit.scope, task.limitKey!, slot);
              op.check({ key: k, versionstamp: null }).set(k, holder);
            }
            if (pick && !("until" in pick)) {
              takeThrottle(op, task.throttle!.scope, task.throttleKey!, pick, Date.now());
            }
            op.set(index < 0 ? node.key : keys.item(host.runId, node.def.name, index), record);
          },
          false,
          { checks: 2, mutations: 3 },
        );
      } finally {
        for (const r of reserved) host.notifier.unreserve(...r);
      }
      if (outcome === "lost") return this.#drop(task);
      if (outcome === "ok") {
        this.#tasks.delete(id);
        host.started(node, index, record);
        return;
      }
      // conflict: another holder took that slot or entry first: look again
    }
    this.#wait(task, undefined);
  }

  /** The task waits: for a freed slot of its key, a timer, or `ms`. */
  #wait(task: FlowTask, slotOf: { scope: string; key: string } | undefined, ms?: number): void {
    const host = this.#host;
    const id = taskId(task.node, task.index);
    host.release(task.node, task.index, false);
    let delay = ms;
    if (delay === undefined) {
      task.backoff = Math.min(
        MAX_BACKOFF_MS,
        task.backoff === 0 ? FIRST_BACKOFF_MS : task.backoff * 2,
      );
      delay = task.backoff;
    }
    let done = false;
    const go = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      unlisten?.();
      this.#cancels.delete(id);
      if (!host.acting()) {
        this.#tasks.delete(id);
        return;
      }
      this.#ready.push(task);
      host.wake();
    };
    const timer = setTimeout(go, Math.max(0, delay));
    const unlisten = slotOf ? host.notifier.listen(slotOf.scope, slotOf.key, go) : undefined;
    this.#cancels.set(id, () => {
      done = true;
      clearTimeout(timer);
      unlisten?.();
    });
  }

  /** The task waits for its throttle key's next free entry, with the others waiting for it. */
  #waitThrottle(task: FlowTask, ms: number): void {
    const host = this.#host;
    host.release(task.node, task.index, false);
    const id = `${task.throttle!.scope}\u0000${task.throttleKey}`;
    const gate = this.#gates.get(id);
    if (gate) {
      gate.tasks.push(task);
      return;
    }
    const tasks = [task];
    const timer = setTimeout(() => {
      this.#gates.delete(id);
      if (!host.acting()) {
        for (const t of tasks) this.#tasks.delete(taskId(t.node, t.index));
        return;
      }
      this.#ready.push(...tasks);
      host.wake();
    }, Math.max(0, ms));
    this.#gates.set(id, { tasks, cancel: () => clearTimeout(timer) });
  }

  /** Drops a task that held a worker step slot: the driver left the run. */
  #drop(task: FlowTask): void {
    this.#tasks.delete(taskId(task.node, task.index));
    this.#host.release(task.node, task.index, true);
  }

  /** Stops every wait: the driver left the run (what KV holds of the tasks stays). */
  stop(): void {
    for (const cancel of this.#cancels.values()) cancel();
    this.#cancels.clear();
    for (const gate of this.#gates.values()) gate.cancel();
    this.#gates.clear();
    this.#tasks.clear();
    this.#ready = [];
  }
}

/** The record a fan-out item or plain step has before its first start. */
export function taskRecord(node: StepNode, index: number): TaskRecord {
  return index < 0
    ? node.record
    : node.fan!.records.get(index) ?? pendingTask(node.record.generation);
}

/** Slots a take looks at first, picked at random, before it lists them all. */
const PROBES = 4;

/**
 * A free slot among {@linkcode PROBES} picked at random, or -1: one read of a few keys,
 * where listing a key's slots reads every one held (up to `max`). Only for a `max` well
 * above the probes; a small limit is listed at once.
 */
async function probeSlots(
  kv: Kv,
  scope: string,
  key: string,
  max: number,
  busy: (index: number) => boolean,
): Promise<number> {
  if (max <= 2 * PROBES) return -1;
  const picked = new Set<number>();
  while (picked.size < PROBES) picked.add(Math.floor(Math.random() * max));
  const indices = [...picked];
  const got = await kv.getMany(indices.map((i) => keys.slot(scope, key, i)));
  const free = got.findIndex((e, i) => e.versionstamp === null && !busy(indices[i]));
  return free < 0 ? -1 : indices[free];
}

/**
 * A free slot below `max` picked at random, or -1 when all are held: takers of many runs
 * and workers reading the same slots at once then rarely pick the same one.
 */
function anyFreeSlot(
  held: readonly KvEntry<SlotHolder>[],
  max: number,
  busy: (index: number) => boolean,
): number {
  if (held.length >= max) return -1;
  const taken = new Set(held.map((e) => e.key[e.key.length - 1] as number));
  const free: number[] = [];
  for (let i = 0; i < max; i++) if (!taken.has(i) && !busy(i)) free.push(i);
  return free.length === 0 ? -1 : free[Math.floor(Math.random() * free.length)];
}

function taskId(node: StepNode, index: number): string {
  return `${node.def.name}\u0000${index}`;
}
