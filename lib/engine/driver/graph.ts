/**
 * A run's step graph as the driver walks it: one node per step in topological order, and
 * the open list of the nodes that may act. Pure: no KV, no timers; the driver owns the
 * records' writes, this module only which step may act when.
 *
 * @module
 */
import type { ResolvedRetry } from "../../define/retry.ts";
import type { AnyStep } from "../../define/step.ts";
import type { StepStatus, TaskRecord } from "../../model/records.ts";
import { type FanState, nextRetry } from "./fan_out.ts";
import type { KvKey } from "../../kv/kv.ts";

/** A step of the run, with what the driver knows about it. */
export interface StepNode {
  def: AnyStep;
  /** The nodes of the steps it needs, in `def.needs` order. */
  needs: StepNode[];
  /** The nodes of the steps that need it. */
  dependents: StepNode[];
  /** Its position in topological order. */
  at: number;
  /** Whether it is meant to be in the open list. */
  open: boolean;
  /** Whether it is in that list now (a walk drops those no longer open at its end). */
  listed: boolean;
  /** Its step record's key, with its id in the checkpoint queue and its size (made once). */
  key: KvKey;
  keyId: string;
  keyBytes: number;
  /** The size of its attempt records' keys, once known. */
  attemptKeyBytes?: number;
  /** The input names of its needs, in `needs` order, once known. */
  inputNames?: string[];
  record: TaskRecord;
  retry: ResolvedRetry;
  timeoutMs: number;
  output?: { value: unknown };
  fan?: FanState;
  expanding?: boolean;
}

/** What a node needs of a step, besides its definition and the nodes it needs. */
export type NodeInit = Pick<
  StepNode,
  "record" | "retry" | "timeoutMs" | "key" | "keyId" | "keyBytes"
>;

/** How far the steps a node needs are: all succeeded, one still to end, or one failed or skipped. */
export type Readiness = "ready" | "waiting" | "blocked";

/** The nodes of a run's steps and the list of those that may act. */
export class StepGraph {
  readonly #nodes = new Map<string, StepNode>();
  /** The nodes in topological order. */
  readonly order: StepNode[] = [];
  /**
   * The nodes a walk looks at, in topological order: every node that has not ended and
   * may act — a step whose needs all ended, a retrying or fan-out step, one expanding its
   * items. A pending step whose needs have not all ended joins when one of them ends (see
   * {@linkcode StepGraph.openDependents}), so a long chain does not rescan its future at
   * every step either.
   */
  readonly #open: StepNode[] = [];
  /** While a walk is on: the index it is at (an insertion before it walks again). */
  #walkAt = -1;
  #rescan = false;

  /**
   * Adds a step; the steps it needs must have been added before.
   *
   * @returns its node
   */
  add(def: AnyStep, init: NodeInit): StepNode {
    const needs = Object.values(def.needs).map((n) => this.#nodes.get(n.name)!);
    const open = !isEnded(init.record.status);
    const node: StepNode = {
      def,
      needs,
      dependents: [],
      at: this.order.length,
      open,
      listed: open,
      ...init,
    };
    for (const need of needs) need.dependents.push(node);
    this.#nodes.set(def.name, node);
    this.order.push(node);
    // the first walk drops those that cannot act yet
    if (open) this.#open.push(node);
    return node;
  }

  /** The node of a step, by name. */
  node(name: string): StepNode | undefined {
    return this.#nodes.get(name);
  }

  /** The open nodes, in topological order (those closed during a walk until it ends). */
  get openNodes(): readonly StepNode[] {
    return this.#open;
  }

  /** Starts a walk of the open list. */
  startWalk(): void {
    this.#rescan = false;
    this.#walkAt = -1;
  }

  /** The walk's next open node, or undefined at the list's end. */
  nextOpen(): StepNode | undefined {
    const open = this.#open;
    while (++this.#walkAt < open.length) {
      const node = open[this.#walkAt];
      if (node.open) return node;
    }
    return undefined;
  }

  /** Whether the walk must go again: a node opened behind it. */
  walkAgain(): boolean {
    return this.#rescan;
  }

  /**
   * Ends the walk: drops the nodes closed during it from the list.
   *
   * @returns whether a node is expanding its items
   */
  endWalk(): boolean {
    this.#walkAt = -1;
    const open = this.#open;
    let kept = 0;
    let expanding = false;
    for (let i = 0; i < open.length; i++) {
      const node = open[i];
      if (!node.open) {
        node.listed = false;
        continue;
      }
      open[kept++] = node;
      if (node.expanding) expanding = true;
    }
    open.length = kept;
    return expanding;
  }

  /** Opens the nodes of the steps that need `node`, which ended: they may run or be skipped. */
  openDependents(node: StepNode): void {
    for (const d of node.dependents) this.open(d);
  }

  /**
   * Puts a node (back) in the open list, in topological order, unless it has ended. When
   * a walk already passed its place, the walk goes again.
   */
  open(node: StepNode): void {
    if (node.open || isEnded(node.record.status)) return;
    node.open = true;
    const open = this.#open;
    const walking = this.#walkAt >= 0 && this.#walkAt < open.length;
    if (node.listed) {
      if (walking && node.at <= open[this.#walkAt].at) this.#rescan = true;
      return;
    }
    node.listed = true;
    let at = open.length;
    if (at > 0 && open[at - 1].at > node.at) {
      let lo = 0;
      while (lo < at) {
        const mid = (lo + at) >> 1;
        if (open[mid].at > node.at) at = mid;
        else lo = mid + 1;
      }
      open.splice(at, 0, node);
    } else {
      open.push(node);
    }
    if (walking && at <= this.#walkAt) {
      this.#walkAt++;
      this.#rescan = true;
    }
  }

  /**
   * The earliest time a retrying step or item is due, or a waiting one's sleep ends or
   * timeout passes (unless `waits` is false), or Infinity when none is.
   */
  earliestRetry(now: number, waits = true): number {
    let nextAt = Infinity;
    // retrying steps and fan-outs are open: their needs all succeeded
    for (let i = 0; i < this.#open.length; i++) {
      const s = this.#open[i];
      const status = s.record.status;
      if (status === "retrying" || (waits && status === "waiting")) {
        nextAt = Math.min(nextAt, s.record.nextAt ?? now);
      }
      if (s.fan && (waits || s.fan.counts.waiting === 0)) {
        nextAt = Math.min(nextAt, nextRetry(s.fan));
      }
    }
    return nextAt;
  }

  /** Whether every step succeeded (or was skipped by a wait's timeout, which is no failure). */
  allSucceeded(): boolean {
    return this.order.every((s) =>
      s.record.status === "succeeded" || (s.record.status === "skipped" && s.record.timedOut)
    );
  }

  /**
   * Whether a step or fan-out item waits (sleep, event, child); with `deliveries`, only
   * one that waits for a delivery (an event or a child's end), not a sleep.
   */
  anyWaiting(deliveries = false): boolean {
    for (const s of this.#open) {
      if (s.fan && s.fan.counts.waiting > 0) return true; // children
      if (s.record.status === "waiting" && (!deliveries || s.record.wait?.kind !== "sleep")) {
        return true;
      }
    }
    return false;
  }

  /** The first failed step, in topological order. */
  firstFailed(): StepNode | undefined {
    return this.order.find((s) => s.record.status === "failed");
  }
}

/** How far the steps `node` needs are (see {@linkcode Readiness}). */
export function readiness(node: StepNode): Readiness {
  let ready: Readiness = "ready";
  for (const need of node.needs) {
    const s = need.record.status;
    if (s === "failed" || s === "skipped") return "blocked";
    if (s !== "succeeded") ready = "waiting";
  }
  return ready;
}

/** The first step `node` needs that failed or was skipped. */
export function blockingNeed(node: StepNode): StepNode | undefined {
  return node.needs.find((n) => n.record.status === "failed" || n.record.status === "skipped");
}

/**
 * A step's inputs when the outputs of all its needs are in memory already (the usual case
 * in a driver that ran them), without an await; undefined when one must be read.
 */
export function knownInputs(node: StepNode): Record<string, unknown> | undefined {
  const needs = node.needs;
  if (needs.length === 0) return {};
  // `needs` is in `def.needs` order
  const names = node.inputNames ??= Object.keys(node.def.needs);
  const inputs: Record<string, unknown> = {};
  for (let i = 0; i < needs.length; i++) {
    const output = needs[i].output;
    if (!output) return undefined;
    inputs[names[i]] = output.value;
  }
  return inputs;
}

/** Whether a step has ended for good in this driver (only a resume or rerun reopens it). */
export function isEnded(status: StepStatus): boolean {
  return status === "succeeded" || status === "failed" || status === "skipped";
}
