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
import type { Kv, KvCheck, KvEntry, KvEntryMaybe } from "../../kv/kv.ts";
import type { KvWrite } from "../../kv/commit.ts";
import type { LimitViews } from "../../store/limit_view.ts";
import { marked } from "../../store/slots.ts";
import type { Clock } from "../../model/clock.ts";
import type { Checkpoints } from "./checkpoints.ts";
import { knownInputs, type StepNode } from "./graph.ts";
import type { SlotNotifier } from "./slot_notifier.ts";

/** First wait of a task that found its limit full, ms; it doubles up to the next. */
const FIRST_BACKOFF_MS = 50;
/** Longest wait between two tries of a task that finds its limit full, ms. */
const MAX_BACKOFF_MS = 1_000;

/** A take's progress towards queueing its start. */
interface Prepared {
  /** Whether it queued its start (or gave up). */
  done: boolean;
  /** Resolves once the take begun before it did. */
  turn: Promise<void>;
  /** Tells the take begun after it that this one did. */
  markQueued: () => void;
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
  /**
   * Where it is: `queued` for the throttle turn, `taking` (in a take), `gate` (waiting for
   * its throttle's next entry), `slot` (waiting for a slot of its limit) or `ready` (its
   * wait ended: the driver's next walk takes it again).
   */
  state: "queued" | "taking" | "gate" | "slot" | "ready";
}

/** What step flow control needs from its driver. */
export interface StepFlowHost {
  kv: Kv;
  clock: Clock;
  runId: string;
  pipeline: string;
  checkpoints: Checkpoints;
  notifier: SlotNotifier;
  /** The store's views of run-limit keys, which a take in a scope they share must end. */
  views: LimitViews;
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
  /** KV failed under a take: the driver leaves the run. */
  broke(error: unknown): void;
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
  /** Tasks {@linkcode startNow} started whose commit is in flight. */
  #startingNow = 0;
  /**
   * The tasks waiting for a throttle key's next free entry, by key, with their one timer:
   * they try again together, in the order they came, so a throttle keeps their order.
   */
  readonly #gates = new Map<string, { tasks: FlowTask[]; cancel: () => void }>();
  /**
   * Takes that have not yet queued their start (computing a key, reading slots): the
   * driver leaves the flush of what it queued to the last of them, so a start goes into
   * the commit of the result that made it ready.
   */
  #preparing = 0;
  /**
   * Throttled takes go one at a time, lowest `seq` first: whether one holds the turn, and
   * those waiting for it, in `seq` order.
   */
  #turnHeld = false;
  readonly #turns: { task: FlowTask; go: () => void }[] = [];
  /** Resolves once the last take begun has queued its start or given up. */
  #lastQueued: Promise<void> = Promise.resolve();

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

  /** How many takes have not queued their start yet (see `#preparing`). */
  get preparing(): number {
    return this.#preparing;
  }

  /** How many tasks are in flow control (started at once, their commit in flight, too). */
  get size(): number {
    return this.#tasks.size + this.#startingNow;
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
        state: "taking",
      };
      this.#tasks.set(id, task);
    }
    // Takes of one run go on together: what they take is reserved in this process, so
    // siblings never check the same slot or throttle entry in one commit. A throttle's
    // takes go one after another, in `seq` order: a take that lost its entry to another
    // process tries again, and its siblings must not pass it (a throttled API is called in
    // item order; `#behind` keeps that order across waits).
    this.#taking++;
    const throttled = task.throttle !== null;
    if (throttled) await this.#turn(task);
    task.state = "taking";
    this.#preparing++;
    // they prepare together but queue their starts in the order they began, so the bodies
    // start in the order the walk chose them
    let markQueued!: () => void;
    const queued = new Promise<void>((resolve) => markQueued = resolve);
    const prepared: Prepared = { done: false, turn: this.#lastQueued, markQueued };
    this.#lastQueued = queued;
    try {
      await this.#take(task, prepared);
    } catch (error) {
      // KV failed: the driver finds out through its own commits; the task is dropped
      this.#drop(task);
      throw error;
    } finally {
      this.#taking--;
      if (!prepared.done) this.#prepared(prepared);
      if (throttled) this.#passTurn();
    }
  }

  /**
   * Starts a task under a limit alone at once, as {@linkcode take} would but without its
   * waits, when nothing stands in the way: no take of this run is still preparing (starts
   * go in the walk's order), the task's input is known, its key computes, and a pick
   * without a read finds a slot (`SlotNotifier.blindPick`: a large limit far from full
   * here). Its start goes into the commit the walk's flush makes. The caller took a worker
   * step slot for it, as for {@linkcode take}.
   *
   * @returns false when it did not start it: the caller takes it
   */
  startNow(node: StepNode, index: number): boolean {
    const host = this.#host;
    const flow = host.steps.get(node.def.name)!;
    const limit = flow.limit;
    if (this.#preparing > 0 || flow.throttle !== null || limit === null) return false;
    const input = index < 0 ? knownInputs(node) : node.fan!.values[index];
    if (input === undefined) return false;
    let key: string;
    try {
      key = flowKey("limit key", limit.key, input);
    } catch {
      // the take computes it again and fails the task with the full message
      return false;
    }
    const { scope } = limit;
    const slot = host.notifier.pickNow(scope, key, limit.max, Date.now());
    if (slot < 0) return false;
    const { record, checks, writes } = this.#start(
      node,
      index,
      host.clock.now(),
      { limit, key, slot },
      undefined,
    );
    const other = marked(scope) ? host.views.other({ scope, key }) : noop;
    // counted as taking until its commit is done: a stop waits for it
    this.#taking++;
    this.#startingNow++;
    host.checkpoints.conditional(checks, writes).then((committed) => {
      this.#taking--;
      this.#startingNow--;
      other();
      const outcome = !host.acting() ? "dropped" : committed ? "held" : "missed";
      host.notifier.pickedNow(scope, key, slot, outcome, Date.now());
      if (outcome === "dropped") return host.release(node, index, true);
      if (outcome === "held") return host.started(node, index, record);
      // another process holds that slot: look again, as a take does
      return this.take(node, index);
    }).catch(host.broke);
    return true;
  }

  /** Resolves when `task` holds the throttle turn: at once when nobody holds it. */
  async #turn(task: FlowTask): Promise<void> {
    if (!this.#turnHeld) {
      this.#turnHeld = true;
      return;
    }
    task.state = "queued";
    await new Promise<void>((go) => {
      const turns = this.#turns;
      let at = turns.length;
      while (at > 0 && turns[at - 1].task.seq > task.seq) at--;
      turns.splice(at, 0, { task, go });
    });
  }

  /** The throttle turn goes to the waiting take of lowest `seq`, or to nobody. */
  #passTurn(): void {
    const next = this.#turns.shift();
    if (next) next.go();
    else this.#turnHeld = false;
  }

  /**
   * Where a task of the same throttle key that came before `task` waits — in its gate, or
   * to be taken again (`ready`, or `queued` behind the turn `task` holds) — or undefined.
   * `task` must not take an entry before it. One waiting for a limit slot does not hold it
   * back: that wait may be long, and it is not the throttle's.
   */
  #behind(task: FlowTask): "gate" | "ready" | undefined {
    let found: "gate" | "ready" | undefined;
    for (const other of this.#tasks.values()) {
      if (
        other.seq >= task.seq || other.throttleKey !== task.throttleKey ||
        other.throttle?.scope !== task.throttle!.scope
      ) continue;
      if (other.state === "gate") return "gate";
      if (other.state === "ready" || other.state === "queued") found = "ready";
    }
    return found;
  }

  /** A take queued its start, or gave up: the last one flushes what the driver queued. */
  #prepared(prepared: Prepared): void {
    prepared.done = true;
    prepared.markQueued();
    if (--this.#preparing === 0) this.#host.checkpoints.flush().catch(() => {});
  }

  async #take(task: FlowTask, prepared: Prepared): Promise<void> {
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
      if (task.throttle) {
        // one that came before waits: this one waits with it, and they go in their order
        const behind = this.#behind(task);
        if (behind === "gate") return this.#waitThrottle(task, 0);
        if (behind === "ready") return this.#again(task);
      }
      let slot = -1;
      let blind = -1;
      if (task.limit) {
        const { scope, max } = task.limit;
        if (host.notifier.knownFull(scope, task.limitKey!, Date.now())) {
          this.#wait(task, { scope, key: task.limitKey! });
          return;
        }
        const busy = host.notifier.reservedOf("slot", scope, task.limitKey!);
        blind = host.notifier.blindPick(scope, task.limitKey!, max, Date.now());
        slot = blind >= 0 ? blind : await probeSlots(host.kv, scope, task.limitKey!, max, busy);
        if (slot < 0) {
          let held = await readSlots(host.kv, scope, task.limitKey!);
          slot = anyFreeSlot(held, max, busy);
          if (slot < 0 && host.notifier.mayHeal(scope, task.limitKey!, Date.now())) {
            held = await healSlots(host.kv, held, host.clock.now());
            slot = anyFreeSlot(held, max, busy);
          }
        }
        if (slot < 0) {
          host.notifier.full(scope, task.limitKey!, Date.now());
          this.#wait(task, { scope, key: task.limitKey! });
          return;
        }
      }
      let pick: ThrottleTake | undefined;
      const now = host.clock.now();
      if (task.throttle) {
        const { scope, max, perMs } = task.throttle;
        // a rate against a service is in wall time, also on a test kit's clock
        const wall = Date.now();
        const entries = await readThrottle(host.kv, scope, task.throttleKey!);
        const found = pickThrottle(
          entries,
          max,
          perMs,
          wall,
          host.notifier.reservedOf("throttle", scope, task.throttleKey!),
        );
        if ("until" in found) {
          this.#waitThrottle(task, found.until - Date.now());
          return;
        }
        pick = { scope, key: task.throttleKey!, ...found };
      }
      if (!host.acting()) return this.#drop(task);
      const { record, checks, writes } = this.#start(
        node,
        index,
        now,
        task.limit && { limit: task.limit, key: task.limitKey!, slot },
        pick,
      );
      // Reserved in this process while the commit is in flight: it may share a grouped
      // commit with other runs' takes, which must not check the same slot or entry.
      const reserved: ["slot" | "throttle", string, string, number][] = [];
      if (task.limit) {
        if (!host.notifier.reserve("slot", task.limit.scope, task.limitKey!, slot)) continue;
        reserved.push(["slot", task.limit.scope, task.limitKey!, slot]);
      }
      if (pick) {
        const entry = ["throttle", task.throttle!.scope, task.throttleKey!, pick.index] as const;
        if (!host.notifier.reserve(...entry)) {
          for (const r of reserved) host.notifier.unreserve(...r);
          continue;
        }
        reserved.push([...entry]);
      }
      // a scope a run limit may share (one named without a `/`): the take moves its key's
      // mark, so run claims that knew the key read it again (`store/limit_view.ts`)
      const other = task.limit && marked(task.limit.scope)
        ? host.views.other({ scope: task.limit.scope, key: task.limitKey! })
        : noop;
      let committed: boolean;
      try {
        // after the takes begun before it (their starts, or their giving up)
        if (!prepared.done) await prepared.turn;
        if (!host.acting()) return this.#drop(task);
        const conditional = host.checkpoints.conditional(checks, writes);
        // a failed flush tells the driver itself
        if (!prepared.done) this.#prepared(prepared);
        else host.checkpoints.flush().catch(() => {});
        committed = await conditional;
      } finally {
        other();
        for (const r of reserved) host.notifier.unreserve(...r);
      }
      if (!host.acting()) return this.#drop(task);
      if (committed) {
        this.#tasks.delete(id);
        if (task.limit) host.notifier.holding(task.limit.scope, task.limitKey!, slot);
        host.started(node, index, record);
        return;
      }
      if (blind >= 0) host.notifier.blindMissed(task.limit!.scope, task.limitKey!, Date.now());
      // conflict: another holder took that slot or entry first: look again
    }
    this.#wait(task, undefined);
  }

  /**
   * A task's start with what it takes: the record it starts with (naming its slot), and
   * the checks and writes that go with it into the run's next checkpoint commit — the
   * slot checked free and written with its holder, the key's mark moved in a scope a run
   * limit may share, the throttle entry checked unchanged and stamped.
   */
  #start(
    node: StepNode,
    index: number,
    now: number,
    slot: { limit: Limit; key: string; slot: number } | null,
    pick: ThrottleTake | undefined,
  ): { record: TaskRecord; checks: KvCheck[]; writes: KvWrite[] } {
    const host = this.#host;
    const record: TaskRecord = startAttempt(host.record(node, index), now);
    const checks: KvCheck[] = [];
    const writes: KvWrite[] = [];
    if (slot) {
      const { scope } = slot.limit;
      record.slot = [scope, slot.key, slot.slot];
      const holder: SlotHolder = {
        run: host.runId,
        step: node.def.name,
        item: index,
        attempt: record.attempt,
        at: now,
      };
      const k = keys.slot(scope, slot.key, slot.slot);
      checks.push({ key: k, versionstamp: null });
      writes.push([k, holder]);
      if (marked(scope)) writes.push([keys.limitQueueMark(scope, slot.key), now]);
    }
    if (pick) {
      const k = keys.throttleSlot(pick.scope, pick.key, pick.index);
      checks.push({ key: k, versionstamp: pick.entry.versionstamp });
      writes.push([k, Date.now()]);
    }
    writes.push([index < 0 ? node.key : keys.item(host.runId, node.def.name, index), record]);
    return { record, checks, writes };
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
    task.state = "slot";
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
      task.state = "ready";
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
    task.state = "gate";
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
      for (const t of tasks) t.state = "ready";
      this.#ready.push(...tasks);
      host.wake();
    }, Math.max(0, ms));
    this.#gates.set(id, { tasks, cancel: () => clearTimeout(timer) });
  }

  /**
   * The task gives back its worker step slot and is taken again with the driver's next
   * walk, which takes waiting tasks in `seq` order: one that came before it goes first.
   */
  #again(task: FlowTask): void {
    const host = this.#host;
    host.release(task.node, task.index, false);
    task.state = "ready";
    this.#ready.push(task);
    // after this take ends and gives up its turn
    queueMicrotask(() => host.wake());
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

/** Slots a take looks at first, picked at random, before it lists them all (one read). */
const PROBES = 10;

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

/** A throttle entry a start takes. */
interface ThrottleTake {
  scope: string;
  key: string;
  index: number;
  entry: KvEntryMaybe<number>;
}

function noop(): void {}

function taskId(node: StepNode, index: number): string {
  return `${node.def.name}\u0000${index}`;
}
