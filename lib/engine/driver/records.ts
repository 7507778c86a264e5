/**
 * What the driver records of its run: the run record, its steps' and items' task
 * records and their attempts, queued as checkpoint writes with the events that tell of
 * them. The records' contents come from `model/transitions.ts`; this module keeps the
 * driver's copy in memory in step with what it queues.
 *
 * @module
 */
import type { AlertRecord } from "../../alerts/alert.ts";
import * as keys from "../../kv/keys.ts";
import {
  type AttemptRecord,
  type RunRecord,
  type TaskRecord,
  TERMINAL,
} from "../../model/records.ts";
import {
  attemptRecord,
  crashError,
  crashTask,
  releaseError,
  releaseTask,
} from "../../model/transitions.ts";
import { moveDue, moveStatus } from "../../kv/indexes.ts";
import { type Checkpoints, taskBytes } from "./checkpoints.ts";
import { isEnded, type StepGraph, type StepNode } from "./graph.ts";
import { mostAttempts, trackItem } from "./fan_out.ts";
import { ring } from "../../store/events.ts";
import { marked, slotFreedWrites } from "../../store/slots.ts";
import type { Delivery } from "../../model/events.ts";
import type { StoreParts } from "../../store/parts.ts";

/** A run's records, as the driver changes them. */
export class RunRecords {
  #run: RunRecord;
  readonly #checkpoints: Checkpoints;
  readonly #graph: StepGraph;
  readonly #store: StoreParts;
  readonly #freed: ((scope: string, key: string, index: number) => void) | undefined;

  /**
   * Starts from the run as claimed.
   *
   * @param parts the queue the records are written to and the graph of the run's steps
   */
  constructor(
    run: RunRecord,
    parts: {
      checkpoints: Checkpoints;
      graph: StepGraph;
      store: StoreParts;
      /** Told once a step limit's slot this run held is freed. */
      freed?: (scope: string, key: string, index: number) => void;
    },
  ) {
    this.#run = run;
    this.#freed = parts.freed;
    this.#store = parts.store;
    this.#checkpoints = parts.checkpoints;
    this.#graph = parts.graph;
  }

  /** The run as last changed. */
  get run(): RunRecord {
    return this.#run;
  }

  /** Records the task of `node` (item `index`, or -1 for the step) as `record`. */
  setTask(node: StepNode, index: number, record: TaskRecord, size = 1024): void {
    record = this.#freeSlot(record);
    if (index < 0) {
      this.setStep(node, record, size);
      return;
    }
    trackItem(node.fan!, index, record);
    this.#checkpoints.write(
      keys.item(this.#run.id, node.def.name, index),
      record,
      taskBytes(record, size),
    );
    this.#emitTask(node, index, record);
  }

  /** Records a step as `record`; once it ended, the steps that need it may act. */
  setStep(node: StepNode, record: TaskRecord, size = 1024): void {
    record = this.#freeSlot(record);
    node.record = record;
    // the steps that need it may act now (run, or be skipped)
    if (isEnded(record.status)) this.#graph.openDependents(node);
    this.#checkpoints.writeKeyed(
      node.keyId,
      node.key,
      node.keyBytes,
      record,
      taskBytes(record, size),
    );
    this.#emitTask(node, -1, record);
  }

  /**
   * A task whose attempt ended gives back the step limit's slot it held, in the commit
   * that records the end (see `step_flow.ts`).
   */
  #freeSlot(record: TaskRecord): TaskRecord {
    const slot = record.slot;
    if (!slot || record.status === "running") return record;
    const [scope, key, index] = slot;
    this.#checkpoints.write(keys.slot(scope, key, index), null, 256);
    // in a scope a run limit may share, a run's hold decided on the slot as held fails its
    // check against the key's last release, and decides again (`store/flow.ts`)
    if (marked(scope)) this.#checkpoints.write(keys.limitRelease(scope, key), Date.now(), 256);
    const freed = this.#freed;
    if (freed) this.#checkpoints.afterCommit(() => freed(scope, key, index));
    return { ...record, slot: null };
  }

  /** Tells listeners that a task (item `index`, or -1 for the step) is now `record`. */
  #emitTask(node: StepNode, index: number, record: TaskRecord): void {
    this.#tellTask(node, index, record, false);
  }

  /** Tells of a task's record once its write is durable, or now (`now`: it is). */
  #tellTask(node: StepNode, index: number, record: TaskRecord, now: boolean): void {
    (now ? this.#checkpoints.tell : this.#checkpoints.emit).call(this.#checkpoints, {
      type: "task",
      runId: this.#run.id,
      step: node.def.name,
      item: index,
      status: record.status,
      attempt: record.attempt,
      // a step knows its items' count; an item has none of its own
      items: index < 0 ? record.items : undefined,
      nextAt: record.nextAt,
      error: record.error,
      durationMs: record.endedAt && record.startedAt
        ? record.endedAt - record.startedAt
        : undefined,
      startedAt: record.startedAt,
      endedAt: record.endedAt,
    });
  }

  /**
   * Takes `record` as the task's state without queueing a write: a commit of its own
   * (see `Checkpoints.commitFenced`) wrote it.
   */
  adoptTask(node: StepNode, index: number, record: TaskRecord): void {
    if (index < 0) {
      node.record = record;
      if (isEnded(record.status)) this.#graph.openDependents(node);
    } else {
      trackItem(node.fan!, index, record);
    }
    this.#tellTask(node, index, record, true);
  }

  /** Takes `next` as the run without queueing a write: a commit of its own wrote it. */
  adoptRun(next: RunRecord): void {
    this.#run = next;
    this.#checkpoints.tell({ type: "run", run: next });
  }

  /** Records an attempt. */
  writeAttempt(attempt: AttemptRecord): void {
    this.#checkpoints.writeAttempt(attempt, this.#graph.node(attempt.step));
  }

  /**
   * Records the run as `next`, moving its indexes and due entry from `from` (the run as
   * last changed, unless the driver knows better what KV holds).
   */
  changeRun(next: RunRecord, from: RunRecord = this.#run): void {
    this.#run = next;
    // params and graph are what make a run record large (up to the 64 KiB value limit)
    this.#checkpoints.write(
      keys.run(next.id),
      next,
      1024 + 2 * (JSON.stringify(next.params).length + JSON.stringify(next.graph ?? {}).length),
    );
    this.#checkpoints.runOp((op) => {
      moveDue(op, from, next);
      moveStatus(op, from, next);
    });
    this.#checkpoints.emit({ type: "run", run: next });
    // The end frees the run's limit slot (`moveStatus`): this process's view of the key is
    // told in the turn the commit is durable, before any read can have seen the slot free
    // and another take here hold it again (`store/limit_view.ts`).
    const limit = from.flow?.limit;
    const slot = from.slot;
    if (limit && slot != null && from.status !== next.status && TERMINAL.has(next.status)) {
      this.#checkpoints.afterCommit(() => this.#store.limits.freed(limit, slot));
    }
  }

  /**
   * Queues, with the run's end, the delivery of that end to the parent's waiting step: its
   * inbox, bell, a due entry and a hint (see `store/events.ts`).
   */
  notifyParent(run: RunRecord): void {
    const parent = run.parent!;
    const delivery: Delivery = {
      kind: "child",
      child: run.id,
      status: run.status,
      error: run.error,
      dueAt: run.endedAt ?? run.createdAt,
    };
    this.#checkpoints.runOp((op) =>
      ring(this.#store, op, parent.runId, parent.step, parent.item, delivery)
    );
  }

  /**
   * Records the crash of an attempt that a dead holder left running.
   *
   * @returns the task's record after the crash
   */
  recoverCrash(step: string, item: number, record: TaskRecord, now: number): TaskRecord {
    const error = crashError(record.attempt);
    this.writeAttempt(attemptRecord(step, item, record, "crashed", error, [], now));
    // the dead holder's step limit slot is freed in the takeover's commit
    if (record.slot) {
      const [scope, key, index] = record.slot;
      this.#checkpoints.write(keys.slot(...record.slot), null, 256);
      for (const [k, v] of slotFreedWrites(scope, key, index, now)) {
        this.#checkpoints.write(k, v, 256);
      }
    }
    return crashTask({ ...record, slot: null }, now);
  }

  /** Records an attempt that was started, or still running, as handed back by a stop. */
  handBack(
    node: StepNode,
    index: number,
    record: TaskRecord,
    now: number,
    cause: "stop" | "pause" = "stop",
  ): void {
    this.setTask(node, index, releaseTask(record, now));
    this.writeAttempt(attemptRecord(
      node.def.name,
      index,
      record,
      "interrupted",
      releaseError(record.attempt, cause),
      [],
      now,
    ));
  }

  /**
   * Records the run's end and its lease's deletion; with `alert`, a failure's alert too,
   * and its delivery when a channel is configured.
   *
   * @returns the alert, when there is one
   */
  end(
    status: "succeeded" | "failed",
    error: RunRecord["error"],
    at: { now: number; alert?: { webhook: boolean; email: boolean } },
  ): AlertRecord | undefined {
    const { now, alert } = at;
    const next: RunRecord = {
      ...this.#run,
      status,
      endedAt: now,
      dueAt: null,
      error,
      failures: this.#run.failures + (status === "failed" ? 1 : 0),
    };
    this.changeRun(next);
    // a run whose steps waited leaves no bell behind
    const bell = this.#graph.order.some((n) => n.def.wait);
    this.#checkpoints.runOp((op) => {
      op.delete(keys.lease(next.id));
      if (bell) op.delete(keys.bell(next.id));
    });
    if (next.parent) this.notifyParent(next);
    if (!alert) return undefined;
    const failedStep = error?.step ? this.#graph.node(error.step) : undefined;
    const record: AlertRecord = {
      runId: next.id,
      pipeline: next.pipeline,
      seq: next.failures,
      at: now,
      step: error?.step ?? null,
      attempts: failedStep?.fan ? mostAttempts(failedStep.fan) : failedStep?.record.attempt ?? 0,
      message: error?.message ?? "Run failed",
      logicalDate: next.logicalDate,
      webhook: alert.webhook ? "pending" : "none",
      email: alert.email ? "pending" : "none",
    };
    this.#checkpoints.write(keys.alert(next.id, record.seq), record);
    if (alert.webhook || alert.email) {
      this.#checkpoints.write(keys.alertOutbox(next.id, record.seq), now);
    }
    return record;
  }
}
