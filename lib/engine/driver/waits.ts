/**
 * The steps of a run that wait instead of running a body: sleeps, event waits and child
 * runs (`define/wait.ts`). A wait starts when its needs have succeeded: a sleep records
 * its time; an event wait first looks up stored events (an event sent before the wait
 * started still counts), then records its index entries in a commit checked against the
 * correlation's heads; a child wait creates the child run in the commit that records the
 * wait. The task is then `waiting` with `nextAt` at its time or timeout, and the driver
 * parks the run when nothing else can act (see `RunDriver`). Deliveries — an event's
 * send, a child's end — land in the run's inbox and ring its bell; they are taken here.
 *
 * @module
 */
import type { RunInfo } from "../../define/context.ts";
import { MAX_WAIT_MS, type NoEvent, type WaitSpec } from "../../define/wait.ts";
import {
  childError,
  childRunId,
  type EventRecord,
  MAX_CORRELATION_LENGTH,
} from "../../model/events.ts";
import type { ErrorInfo } from "../../model/errors.ts";
import { toErrorInfo, UsageError } from "../../model/errors.ts";
import type { RunRecord, RunTrace, TaskRecord, WaitState } from "../../model/records.ts";
import { pendingTask } from "../../model/transitions.ts";
import * as keys from "../../kv/keys.ts";
import { dueIndexTime } from "../../kv/indexes.ts";
import type { KvKey } from "../../kv/kv.ts";
import { getAll } from "../../kv/reads.ts";
import {
  addWaitEntries,
  deleteWaitEntries,
  lookupEvents,
  readInbox,
  recordEffect,
  waitHead,
  waitHeads,
} from "../../store/events.ts";
import type { Store } from "../../store/store.ts";
import type { Clock } from "../../model/clock.ts";
import type { Checkpoints } from "./checkpoints.ts";
import type { StepNode } from "./graph.ts";
import type { RunRecords } from "./records.ts";
import { takeItem } from "./fan_out.ts";

/** How a wait ended: with a value (the step succeeds), an error, or skipped by its timeout. */
export type WaitResult =
  | { ok: true; value: unknown }
  | { ok: false; error: ErrorInfo }
  | { skip: true };

/** What the waits need from their driver. */
export interface WaitHost {
  store: Store;
  clock: Clock;
  runId: string;
  records: RunRecords;
  checkpoints: Checkpoints;
  /** The run as a step sees it. */
  runInfo(): RunInfo;
  /** With tracing on: the driver session's span, which a child run's trace nests under. */
  traceParent(): RunTrace | undefined;
  /** The inputs of a node's step. */
  inputs(node: StepNode): Promise<Record<string, unknown>>;
  /** Whether the driver still acts on the run. */
  acting(): boolean;
  /**
   * Ends a task's wait with its result: the driver records it and wakes. `consumed` keys
   * (the delivery that ended it) are deleted in the commit that records the result.
   */
  settle(
    node: StepNode,
    index: number,
    record: TaskRecord,
    result: WaitResult,
    consumed?: readonly KvKey[],
  ): Promise<void>;
  /** Looks at the run again. */
  wake(): void;
}

/** The waiting tasks of one run, as its driver starts, times out and ends them. */
export class Waits {
  readonly #host: WaitHost;
  /** Tasks whose wait is being started or timed out now, by `step\0item`. */
  readonly #busy = new Set<string>();
  /** The bell's versionstamp when the inbox was last read (null: never rung). */
  bellVersion: string | null = null;
  /** Whether the inbox has been read since the driver claimed the run. */
  #inboxRead = false;
  #reading: Promise<boolean> | null = null;

  constructor(host: WaitHost) {
    this.#host = host;
  }

  /** Whether a wait is being started or timed out (the run must not be parked meanwhile). */
  get busy(): boolean {
    return this.#busy.size > 0 || this.#reading !== null;
  }

  /** Whether the inbox was read since the claim, so `bellVersion` is known. */
  get inboxRead(): boolean {
    return this.#inboxRead;
  }

  /**
   * Acts on a wait step's task (item `index`, or -1) during a walk: starts it when ready,
   * times it out when its time has come. For a fan-out item, the walk has not taken it
   * from the fan yet; this does when it acts.
   */
  act(node: StepNode, index: number, now: number): void {
    // the walk gave us this item: it leaves the fan's queue whatever happens to it here
    if (index >= 0) takeItem(node.fan!, now);
    const id = `${node.def.name}\u0000${index}`;
    if (this.#busy.has(id)) return;
    const record = index < 0
      ? node.record
      : node.fan!.records.get(index) ?? pendingTask(node.record.generation);
    if (record.status === "waiting") {
      if ((record.nextAt ?? 0) > now) return;
      this.#run(id, node, index, () => this.#timeOut(node, index, record));
      return;
    }
    if (
      record.status !== "pending" && !(record.status === "retrying" && (record.nextAt ?? 0) <= now)
    ) return;
    this.#run(id, node, index, () => this.#start(node, index, record));
  }

  #run(id: string, node: StepNode, index: number, job: () => Promise<void>): void {
    this.#busy.add(id);
    if (node.fan) node.fan.running++;
    job().catch(async (error) => {
      // a correlation, params or until function threw, or a child could not be created
      if (!this.#host.acting()) return;
      const record = index < 0 ? node.record : node.fan!.records.get(index)!;
      await this.#host.settle(node, index, record, {
        ok: false,
        error: { ...toErrorInfo(error), retryable: false },
      });
    }).finally(() => {
      this.#busy.delete(id);
      if (node.fan) node.fan.running--;
      this.#host.wake();
    });
  }

  /** Starts a task's wait. */
  async #start(
    node: StepNode,
    index: number,
    record: TaskRecord,
    consumed: readonly KvKey[] = [],
  ): Promise<void> {
    const host = this.#host;
    const spec = node.def.wait!;
    const inputs = await host.inputs(node);
    if (!host.acting()) return;
    const run = host.runInfo();
    const now = host.clock.now();
    const step = node.def.name;
    if (spec.kind === "sleep") {
      const until = spec.until(inputs, run, now);
      if (until - now > MAX_WAIT_MS) {
        throw new UsageError(
          `Step '${step}' would sleep until ${
            new Date(until).toISOString()
          }, more than 365 days from now`,
        );
      }
      if (until <= now) {
        return await host.settle(node, index, record, { ok: true, value: { until } });
      }
      const wait: WaitState = { kind: "sleep", step, item: index, since: now, until };
      host.records.setTask(node, index, waitingTask(record, wait));
      return;
    }
    if (spec.kind === "event") {
      return await this.#startEventWait(node, index, record, spec, inputs, consumed);
    }
    return await this.#startChild(node, index, record, spec, inputs);
  }

  async #startEventWait(
    node: StepNode,
    index: number,
    record: TaskRecord,
    spec: Extract<WaitSpec, { kind: "event" }>,
    inputs: Record<string, unknown>,
    consumed: readonly KvKey[],
  ): Promise<void> {
    const host = this.#host;
    const run = host.runInfo();
    const now = host.clock.now();
    const step = node.def.name;
    if (spec.when && !spec.when(inputs, run)) {
      const value: NoEvent<null> = {
        event: null,
        data: null,
        id: null,
        at: now,
        reason: "not-needed",
      };
      return await host.settle(node, index, record, { ok: true, value });
    }
    const value = spec.equals ? String(spec.equals(inputs, run)) : "";
    if (value.length > MAX_CORRELATION_LENGTH) {
      throw new UsageError(
        `Step '${step}': its correlation value has ${value.length} characters, at most ${MAX_CORRELATION_LENGTH}`,
      );
    }
    const names = Object.keys(spec.events);
    const created = host.records.run.createdAt;
    // events since the run was created, or within the window; after a resume, only those
    // after the wait's last try ended (an event it took or refused then is not taken again)
    const after = Math.max(
      spec.windowMs === null ? created - 1 : now - spec.windowMs - 1,
      record.after ?? -Infinity,
    );
    const wait: WaitState = {
      kind: "event",
      step,
      item: index,
      since: now,
      until: now + spec.timeoutMs,
      events: names,
      field: spec.field,
      value,
      after,
    };
    const waiting = waitingTask(record, wait);
    for (let tries = 0; tries < 100; tries++) {
      const heads = await getAll(host.store.kv, waitHeads(names, spec.field, value));
      const { found, mismatches } = await lookupEvents(
        host.store,
        { names, field: spec.field, value, after },
        (event) => schemaProblem(spec, event.name, event.data),
      );
      for (const m of mismatches) await this.#mismatch(m.event.id, step, index, m.message);
      if (found) {
        // the event was stored before the wait started: it ends it now, and says so
        host.checkpoints.write(keys.eventEffect(found.id, host.runId, step, index), {
          kind: "woke",
          runId: host.runId,
          step,
          item: index,
          at: now,
        });
        return await host.settle(
          node,
          index,
          record,
          { ok: true, value: arrival(spec, found) },
          consumed,
        );
      }
      if (!host.acting()) return;
      const outcome = await host.checkpoints.commitFenced((op) => {
        // checked AND bumped: a send that listed the waits before this commit then fails its
        // own check of the head, looks again and finds this wait (a check alone would let
        // both commit, each blind to the other)
        // (its value names no run, and says when, so that it can be forgotten when old)
        for (const head of heads) op.check(head).set(head.key, waitHead(now));
        addWaitEntries(op, {
          runId: host.runId,
          step,
          item: index,
          names,
          field: spec.field,
          value,
        });
        op.set(taskKey(host.runId, step, index), waiting);
        for (const key of consumed) op.delete(key);
      });
      if (outcome === "ok") return host.records.adoptTask(node, index, waiting);
      if (outcome === "lost") return;
      // an event with this correlation was sent meanwhile: look again
    }
    throw new Error(`Step '${step}': its events kept changing while the wait started`);
  }

  async #startChild(
    node: StepNode,
    index: number,
    record: TaskRecord,
    spec: Extract<WaitSpec, { kind: "child" }>,
    inputs: Record<string, unknown>,
  ): Promise<void> {
    const host = this.#host;
    const step = node.def.name;
    const id = childRunId(
      host.runId,
      record.generation > 0 ? `${step}:g${record.generation}` : step,
      index,
    );
    for (let tries = 0; tries < 10; tries++) {
      const now = host.clock.now();
      const wait: WaitState = {
        kind: "child",
        step,
        item: index,
        since: now,
        until: now + spec.timeoutMs,
        child: id,
      };
      const waiting = waitingTask(record, wait);
      const child = await host.store.getRun(id);
      if (child) {
        // the parent was resumed (a child exists only once its parent's wait is recorded)
        if (child.status === "succeeded") {
          return await host.settle(node, index, record, {
            ok: true,
            value: await childResult(host.store, spec, id),
          });
        }
        if (child.status === "failed" || child.status === "cancelled") {
          // resuming the parent resumes its failed child instead of starting another
          await host.store.resume(child, spec.pipeline).catch((error) => {
            if (!(error instanceof UsageError && error.code === "conflict")) throw error;
          });
        }
        if (!host.acting()) return;
        const outcome = await host.checkpoints.commitFenced((op) => {
          op.set(taskKey(host.runId, step, index), waiting);
        });
        if (outcome === "ok") return host.records.adoptTask(node, index, waiting);
        if (outcome === "lost") return;
        continue;
      }
      const item = index >= 0 ? node.fan!.values[index] : undefined;
      const params = spec.params(inputs, host.runInfo(), item);
      const run = host.store.newRun(spec.pipeline, {
        id,
        params,
        trigger: "child",
        logicalDate: host.records.run.logicalDate,
        parent: { runId: host.runId, step, item: index },
        traceParent: host.traceParent(),
      });
      if (!host.acting()) return;
      const outcome = await host.checkpoints.commitFenced((op) => {
        host.store.addRunCreation(op, run);
        op.set(taskKey(host.runId, step, index), waiting);
      });
      if (outcome === "ok") return host.records.adoptTask(node, index, waiting);
      if (outcome === "lost") return;
      // created meanwhile (a crash between the two tries of one start): wait for it
    }
    throw new Error(`Step '${step}': child run ${id} could not be started`);
  }

  /** Times out a task's wait (a sleep ends), unless a delivery came first. */
  async #timeOut(node: StepNode, index: number, record: TaskRecord): Promise<void> {
    const host = this.#host;
    const wait = record.wait!;
    const spec = node.def.wait!;
    if (spec.kind === "sleep" || wait.kind === "sleep") {
      return await host.settle(node, index, record, { ok: true, value: { until: wait.until } });
    }
    // a delivery that came first wins: read the inbox, then time out checked by the bell
    await this.readInbox();
    const now = index < 0 ? node.record : node.fan!.records.get(index);
    if (now?.status !== "waiting" || !host.acting()) return;
    let result: WaitResult;
    if (spec.kind === "child") {
      result = {
        ok: false,
        error: {
          name: "TimedOut",
          message: `Child run ${wait.child} did not end within ${
            Math.round((wait.until - wait.since) / 1000)
          } s; it goes on running`,
          retryable: false,
        },
      };
    } else if (spec.onTimeout === "skip") {
      result = { skip: true };
    } else if (spec.onTimeout === "fail") {
      result = {
        ok: false,
        error: {
          name: "TimedOut",
          message: `No ${wait.events!.join(" or ")} event${
            wait.field ? ` with ${wait.field} = ${JSON.stringify(wait.value)}` : ""
          } arrived by ${new Date(wait.until).toISOString()}`,
          retryable: false,
        },
      };
    } else {
      const value: NoEvent<unknown> = {
        event: null,
        data: spec.onTimeout.value,
        id: null,
        at: wait.until,
        reason: "timeout",
      };
      result = { ok: true, value };
    }
    const bell = this.bellVersion;
    const outcome = await host.checkpoints.commitFenced((op) => {
      op.check({ key: keys.bell(host.runId), versionstamp: bell });
      if (wait.kind === "event") {
        deleteWaitEntries(op, {
          runId: host.runId,
          step: wait.step,
          item: index,
          names: wait.events!,
          field: wait.field!,
          value: wait.value!,
        });
      }
    });
    if (outcome !== "ok") return; // a delivery came: the next walk takes it
    await host.settle(node, index, record, result);
  }

  /**
   * Reads the run's inbox and takes what was delivered to its waiting tasks: an event (its
   * payload checked by the wait's schema) or a child's end.
   *
   * @returns whether it took anything
   */
  readInbox(): Promise<boolean> {
    this.#reading ??= this.#readInbox(this.#graphNode).finally(() => {
      this.#reading = null;
      // no longer busy: the run may act, or park
      this.#host.wake();
    });
    return this.#reading;
  }

  #graphNode: (step: string) => StepNode | undefined = () => undefined;

  /** Tells the waits how to find a step's node. */
  nodes(find: (step: string) => StepNode | undefined): void {
    this.#graphNode = find;
  }

  async #readInbox(find: (step: string) => StepNode | undefined): Promise<boolean> {
    const host = this.#host;
    const { deliveries, bell } = await readInbox(host.store, host.runId);
    this.bellVersion = bell.versionstamp;
    this.#inboxRead = true;
    if (!host.acting()) return false;
    let took = false;
    for (const entry of deliveries) {
      const d = entry.value;
      const step = entry.key[3] as string;
      const index = entry.key[4] as number;
      const node = find(step);
      // a fan-out's items are known once it expanded: its deliveries wait till then
      if (node && index >= 0 && !node.fan) continue;
      // the delivery goes in the commit that records what it did, never before: a worker
      // killed in between leaves it for the next holder
      const consumed: KvKey[] = [entry.key];
      if (d.dueAt !== dueIndexTime(host.records.run)) consumed.push(keys.due(d.dueAt, host.runId));
      const drop = () => {
        for (const key of consumed) host.checkpoints.write(key, null, 256);
      };
      took = true;
      const record = !node ? undefined : index < 0 ? node.record : node.fan?.records.get(index);
      if (!node || record?.status !== "waiting") {
        drop(); // it ended otherwise meanwhile
        continue;
      }
      const spec = node.def.wait;
      if (d.kind === "event" && spec?.kind === "event") {
        const problem = schemaProblem(spec, d.event.name, d.data);
        if (problem !== null) {
          // recorded as not matching; the wait goes on: its entries are written again in
          // the commit that drops the delivery, so a kill between leaves one or the other
          await this.#mismatch(d.event.id, step, index, problem);
          const id = `${step}\u0000${index}`;
          if (!this.#busy.has(id)) {
            this.#run(id, node, index, () => this.#start(node, index, record, consumed));
          }
          continue;
        }
        const found = { name: d.event.name, id: d.event.id, at: d.event.at, data: d.data };
        await host.settle(node, index, record, {
          ok: true,
          value: arrival(spec, found as EventRecord),
        }, consumed);
      } else if (d.kind === "child" && spec?.kind === "child") {
        if (d.status === "succeeded") {
          await host.settle(node, index, record, {
            ok: true,
            value: await childResult(host.store, spec, d.child),
          }, consumed);
        } else {
          await host.settle(node, index, record, {
            ok: false,
            error: childError(d.child, d.status, d.error),
          }, consumed);
        }
      } else {
        drop();
      }
    }
    return took;
  }

  async #mismatch(eventId: string, step: string, item: number, message: string): Promise<void> {
    const host = this.#host;
    await recordEffect(host.store, eventId, {
      kind: "mismatch",
      runId: host.runId,
      step,
      item,
      at: host.clock.now(),
      message,
    }).catch(() => {});
  }
}

/** A task's record while it waits for `wait`: due at its time or timeout. */
export function waitingTask(record: TaskRecord, wait: WaitState): TaskRecord {
  return {
    ...record,
    // a child stays linked from its parent's task after the wait
    ...(wait.child ? { child: wait.child } : {}),
    status: "waiting",
    attempt: Math.max(record.attempt, 1),
    startedAt: record.startedAt ?? wait.since,
    endedAt: null,
    nextAt: wait.until,
    error: null,
    wait,
  };
}

/** The key of a task's record. */
function taskKey(runId: string, step: string, index: number) {
  return index < 0 ? keys.step(runId, step) : keys.item(runId, step, index);
}

/** Why a payload fails its event's schema, or null when it passes. */
function schemaProblem(
  spec: Extract<WaitSpec, { kind: "event" }>,
  name: string,
  data: unknown,
): string | null {
  const schema = spec.events[name];
  if (!schema) return null;
  const result = schema.safeParse(data);
  if (result.success) return null;
  return result.error.issues.map((i) => `${i.path.map(String).join(".") || "data"}: ${i.message}`)
    .join("; ");
}

/** The output of a wait that an event ended: the event, its payload parsed by its schema. */
function arrival(
  spec: Extract<WaitSpec, { kind: "event" }>,
  event: Pick<EventRecord, "name" | "id" | "at" | "data">,
): unknown {
  const schema = spec.events[event.name];
  let data = event.data;
  if (schema) {
    const parsed = schema.safeParse(data);
    if (parsed.success) data = parsed.data;
  }
  return { event: event.name, data, id: event.id, at: event.at };
}

/** A child's result: the output of its pipeline's `result` step, or null. */
async function childResult(
  store: Store,
  spec: Extract<WaitSpec, { kind: "child" }>,
  child: string,
): Promise<unknown> {
  const result = spec.pipeline.result;
  if (!result) return null;
  return await store.getOutput(child, result.name);
}

/** The earliest of a run's waits, for the run record while it is parked. */
export function earliestWait(nodes: readonly StepNode[]): WaitState | null {
  let first: WaitState | null = null;
  for (const node of nodes) {
    const consider = (r: TaskRecord | undefined) => {
      if (r?.status === "waiting" && r.wait && (!first || r.wait.until < first.until)) {
        first = r.wait;
      }
    };
    consider(node.record);
    if (node.fan && node.fan.counts.waiting > 0) {
      for (const r of node.fan.records.values()) consider(r);
    }
  }
  return first;
}

export type { RunRecord };
