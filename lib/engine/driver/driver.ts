/**
 * The driver executes one claimed run inside a worker: it starts ready steps inline,
 * checkpoints each result in one atomic commit fenced by the run's lease, schedules
 * retries, and ends the run — succeeded, failed (with its alert), waiting for a later
 * retry, or handed back.
 *
 * Writes go through one commit queue per run: results that arrive while a commit is in
 * flight share the next commit, and the start of the steps a result makes ready is in
 * the same commit as that result, so a sequential step costs one commit.
 *
 * @module
 */
import type {
  AnyStep,
  ArtifactOptions,
  ArtifactRef,
  ItemContext,
  Pipeline,
  ResolvedRetry,
  RunInfo,
  StepContext,
} from "../../define/definition.ts";
import v8 from "node:v8";
import { MAX_ITEMS, MAX_TIMEOUT_MS, resolveRetry, retryDelay } from "../../define/definition.ts";
import { toMs } from "../../define/duration.ts";
import {
  type ErrorInfo,
  kvLimit,
  KvUnavailableError,
  NonRetryableError,
  toErrorInfo,
} from "../../model/errors.ts";
import { commitAtomic } from "../../kv/commit.ts";
import * as keys from "../../kv/keys.ts";
import { keySize } from "../../kv/keys.ts";
import {
  BATCH_BYTES,
  BATCH_KEY_BYTES,
  BATCH_MUTATIONS,
  KV_KEY_BYTES,
  KV_VALUE_BYTES,
} from "../../kv/limits.ts";
import {
  decodeValue,
  encodeMeasured,
  encodeSmall,
  type PendingBlob,
  writeBlob,
} from "../../kv/values.ts";
import {
  type AttemptRecord,
  attemptRecord,
  type BlobRef,
  crashError,
  crashTask,
  failAttempt,
  idempotencyKey,
  isReady,
  type Lease,
  type LogLine,
  pendingTask,
  releaseError,
  releaseTask,
  resetTask,
  type RunRecord,
  skipTask,
  spentAttempts,
  startAttempt,
  type StepStatus,
  type Stored,
  succeedTask,
  type TaskRecord,
} from "../../model/run_state.ts";
import { type Claim, moveDue, moveStatus, type Store } from "../../store/store.ts";
import { type ArtifactMeta, artifactRef, checkArtifactName } from "../../model/artifacts.ts";
import type { AlertRecord } from "../../alerts/alerts.ts";
import type { StepLimit } from "../step_limit.ts";
import type { Clock } from "../clock.ts";
import { MinHeap } from "./min_heap.ts";

/** A change the driver made durable, for progress lines and live views. */
export type RunEvent =
  | { type: "run"; run: RunRecord }
  | {
    type: "task";
    runId: string;
    step: string;
    /** Fan-out item index, or -1 for the step itself. */
    item: number;
    status: StepStatus;
    attempt: number;
    /** Items of a fan-out step, when known. */
    items?: number;
    durationMs?: number;
    nextAt?: number | null;
    error?: ErrorInfo | null;
    /** When the current or last attempt started (the stored record's value). */
    startedAt?: number | null;
    /** When the task reached this status (the stored record's value). */
    endedAt?: number | null;
  };

/** Which attempt is about to run, for {@linkcode DriverOptions.beforeAttempt}. */
export interface AttemptInfo {
  /** The run. */
  runId: string;
  /** Its pipeline. */
  pipeline: string;
  /** The step. */
  step: string;
  /** The fan-out item, or -1. */
  item: number;
  /** The attempt number, from 1. */
  attempt: number;
  /** The attempt's idempotency key. */
  idempotencyKey: string;
}

/** How a driver left its run. */
export type Outcome =
  | "succeeded"
  | "failed"
  | "cancelled"
  | "waiting"
  | "lost"
  | "interrupted"
  | "released";

/** What a driver needs from its worker. */
export interface DriverOptions {
  /** The store. */
  store: Store;
  /** The run's pipeline. */
  pipeline: Pipeline<unknown>;
  /** The claim to start from. */
  claim: Claim;
  /** Lease length, ms. */
  leaseMs: number;
  /** Retries due within this many ms keep the lease and wait in process. */
  holdMs: number;
  /** The worker's step limit, shared by every run it drives. */
  stepLimit: StepLimit;
  /** Which alert channels are configured, so a failure queues their delivery. */
  channels: { webhook: boolean; email: boolean };
  /** Called after each change is durable. */
  onEvent?: (event: RunEvent) => void;
  /** Called before each attempt's body; a throw fails the attempt (fault injection). */
  beforeAttempt?: (attempt: AttemptInfo) => void | Promise<void>;
  /** Called once an alert is stored. */
  onAlert?: (alert: AlertRecord) => void;
}

interface StepSlot {
  def: AnyStep;
  /** The slots of the steps it needs, in `def.needs` order. */
  needs: StepSlot[];
  /** The slots of the steps that need it. */
  dependents: StepSlot[];
  /** Its position in topological order. */
  at: number;
  /** Whether it is meant to be in the driver's open list (see `#open`). */
  open: boolean;
  /** Whether it is in that list now (`#pump` drops those no longer open after its walk). */
  listed: boolean;
  /** Its step record's key, with its id in `#writes` and its size (made once). */
  key: Deno.KvKey;
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

/**
 * What the driver knows about a fan-out step's items. Counters, a cursor and a heap keep
 * the work per finished item O(log n): a step may have {@linkcode MAX_ITEMS} items.
 */
interface FanState {
  values: unknown[];
  records: Map<number, TaskRecord>;
  outputs: Map<number, unknown>;
  /** Indices not started yet, in order; those before `freshAt` have been taken. */
  fresh: number[];
  freshAt: number;
  /** Items by status, as `records` holds them. */
  counts: Record<StepStatus, number>;
  /** Retrying items by due time; an entry is stale once its item's record moved on. */
  retries: MinHeap<{ at: number; index: number }>;
  running: number;
}

/** A running attempt of a step or fan-out item. */
interface Task {
  slot: StepSlot;
  /** Fan-out item index, or -1. */
  index: number;
  /** Its key in `#running`. */
  key: string;
  controller: AbortController;
  /** Rejects the wait for the body once the task is aborted (set while its body runs). */
  onAbort: ((reason: unknown) => void) | undefined;
  /** When its timeout fires (`performance.now()` ms): Infinity until its body starts. */
  deadline: number;
}

interface Write {
  key: Deno.KvKey;
  value: unknown;
  /** Estimated bytes it adds to a commit: its value, and its key twice (as KV counts). */
  size: number;
  keyBytes: number;
}

const MAX_LOG_LINES = 500;
const MAX_LOG_BYTES = 32_000;
const MAX_FIELDS_BYTES = 4_000;

/** Executes one claimed run. */
export class RunDriver {
  readonly #o: DriverOptions;
  readonly #kv: Deno.Kv;
  readonly #steps = new Map<string, StepSlot>();
  /** The slots in topological order. */
  readonly #order: StepSlot[] = [];
  /**
   * The slots `#pump` looks at, in topological order: every slot that has not ended and
   * may act — a step whose needs all ended, a retrying or fan-out step, one expanding
   * its items. A pending step whose needs have not all ended joins when one of them ends
   * (see `#setStep`), so a long chain does not rescan its future at every step either.
   */
  readonly #open: StepSlot[] = [];
  /** While `#pump` walks `#open`: the index it is at (an insertion before it rescans). */
  #pumpAt = -1;
  #rescan = false;
  readonly #running = new Map<string, Task>();
  /** One timer for the step timeouts, due at the earliest deadline it was armed for. */
  #timeoutTimer: ReturnType<typeof setTimeout> | undefined;
  #timeoutAt = Infinity;
  #run: RunRecord;
  #lease: Lease;
  #leaseVersion: string;
  #writes = new Map<string, Write>();
  #runOps: ((op: Deno.AtomicOperation) => void)[] = [];
  #events: RunEvent[] = [];
  #afterCommit: (() => void)[] = [];
  #committing: Promise<void> | null = null;
  #queued: Promise<void> | null = null;
  /** Bytes of the run's largest index key, to count its run ops' keys. */
  #indexKeyBytes: number;
  #stopped = false;
  #isLost = false;
  /** Whether it is handing the run back after KV refused a commit (see `#refuse`). */
  #refusing = false;
  #settling = false;
  #waitingForSlot = false;
  #cancelHold: (() => void) | undefined;
  /** The blob of each artifact this driver stored, by name. */
  readonly #artifactBlobs = new Map<string, BlobRef>();
  /** Whether this driver committed chunks: only then may its run end with pending blobs. */
  #wroteChunks = false;
  readonly #clock: Clock;
  #renewTimer: ReturnType<typeof setInterval> | undefined;
  #resolve!: (outcome: Outcome) => void;
  #reject!: (error: KvUnavailableError) => void;
  /** Why KV refused a write, when it did: `done` rejects with it. */
  #unavailable: KvUnavailableError | undefined;
  /**
   * Resolves once the driver has left the run; rejects with a {@linkcode KvUnavailableError}
   * when KV stopped taking its writes (the run keeps what was checkpointed before).
   */
  readonly done: Promise<Outcome>;

  /**
   * Creates a driver for a claimed run.
   *
   * @param options what the driver needs from its worker
   */
  constructor(options: DriverOptions) {
    this.#o = options;
    this.#kv = options.store.kv;
    this.#clock = options.store.clock;
    this.#run = options.claim.run;
    this.#lease = options.claim.lease;
    this.#leaseVersion = options.claim.leaseVersion;
    this.#indexKeyBytes = keySize(
      keys.runsByPipelineStatus(this.#run.pipeline, "cancelled", 0, this.#run.id),
    );
    this.done = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => {});
  }

  /** The run id. */
  get runId(): string {
    return this.#run.id;
  }

  /** Loads the run's steps and starts driving it. */
  async start(): Promise<void> {
    const { pipeline, store } = this.#o;
    const stored = await store.getSteps(this.#run.id);
    const now = this.#clock.now();
    for (const def of pipeline.steps) {
      const retry = resolveRetry(def.retry, pipeline.defaults.retry, `step '${def.name}'`);
      const timeoutMs = def.timeout === undefined
        ? pipeline.defaults.timeoutMs
        : toMs(def.timeout, `timeout of step '${def.name}'`);
      let record = stored.get(def.name) ?? pendingTask();
      if (record.status === "running" && !def.fanOut) {
        record = this.#recoverCrash(def.name, -1, record, now);
        this.#write(keys.step(this.#run.id, def.name), record);
      }
      // Steps come in topological order, so the slots of its needs exist already.
      const needs = Object.values(def.needs).map((n) => this.#steps.get(n.name)!);
      const at = this.#order.length;
      const key = keys.step(this.#run.id, def.name);
      const slot: StepSlot = {
        def,
        needs,
        dependents: [],
        at,
        open: !isEnded(record.status),
        listed: !isEnded(record.status),
        key,
        keyId: JSON.stringify(key),
        keyBytes: keySize(key),
        record,
        retry,
        timeoutMs,
      };
      for (const need of needs) need.dependents.push(slot);
      this.#steps.set(def.name, slot);
      this.#order.push(slot);
      // the first pump drops those that cannot act yet
      if (slot.open) this.#open.push(slot);
    }
    this.#emit({ type: "run", run: this.#run });
    this.#renewTimer = setInterval(() => this.#tickLease(), Math.min(1000, this.#o.leaseMs / 4));
    this.#pump();
  }

  /** Called by the worker when a step slot frees up. */
  wake(): void {
    if (this.#waitingForSlot) {
      this.#waitingForSlot = false;
      this.#pump();
    }
  }

  /**
   * Interrupts the run (Ctrl-C): running steps are aborted and recorded as interrupted,
   * the run fails with a resumable error and its lease is released.
   */
  async interrupt(reason = "Interrupted"): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    const now = this.#clock.now();
    for (const task of this.#running.values()) {
      abortTask(task, new Error(reason));
      const { slot, index } = task;
      const name = slot.def.name;
      const record = index < 0 ? slot.record : slot.fan!.records.get(index)!;
      const failed: TaskRecord = {
        ...record,
        status: "failed",
        endedAt: now,
        error: { name: "Interrupted", message: reason, retryable: true },
      };
      this.#setTask(slot, index, failed);
      this.#writeAttempt(
        attemptRecord(name, index, record, "interrupted", failed.error, [], now),
      );
    }
    for (const slot of this.#steps.values()) {
      if (slot.fan && slot.record.status === "running") {
        this.#setStep(slot, {
          ...slot.record,
          status: "failed",
          endedAt: now,
          error: { name: "Interrupted", message: reason, retryable: true },
        });
      }
    }
    this.#abortRunning(reason);
    this.#endRun("failed", { step: null, message: reason }, false);
    await this.#flush().catch(() => {});
    if (this.#wroteChunks) await this.#o.store.reclaimBlobs(this.#run.id).catch(() => {});
    this.#finish("interrupted");
  }

  /**
   * Stops taking new steps, lets running ones finish for up to `graceMs`, then hands the
   * run back as queued so another worker continues it. Steps still running after the
   * grace period are aborted and handed back in the same commit, fenced by the lease like
   * every checkpoint: they run again on the next claim, and their attempt is recorded as
   * interrupted, not as a crash (only a worker that dies leaves a step `running`).
   */
  async release(graceMs: number): Promise<void> {
    if (this.#stopped) return;
    this.#settling = true;
    const deadline = Date.now() + graceMs;
    while (this.#running.size > 0 && Date.now() < deadline && !this.#stopped) {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (this.#stopped) return;
    this.#stopped = true;
    const now = this.#clock.now();
    for (const { slot, index } of this.#running.values()) {
      const name = slot.def.name;
      const record = index < 0 ? slot.record : slot.fan!.records.get(index)!;
      this.#setTask(slot, index, releaseTask(record, now));
      this.#writeAttempt(
        attemptRecord(name, index, record, "interrupted", releaseError(record.attempt), [], now),
      );
    }
    this.#abortRunning("Worker shutting down");
    const next: RunRecord = { ...this.#run, status: "queued", dueAt: now };
    this.#changeRun(next);
    this.#runOps.push((op) => {
      op.delete(keys.lease(this.#run.id));
      this.#o.store.hint(op, this.#run.id, 0);
    });
    await this.#flush().catch(() => {});
    this.#finish("released");
  }

  // ---- scheduling -------------------------------------------------------------------

  #pump(): void {
    if (this.#stopped) return;
    if (this.#settling) {
      // shutting down: start nothing new, but make finished results durable
      this.#flush().catch(this.#onFlushError);
      return;
    }
    const now = this.#clock.now();
    const { pipeline, stepLimit } = this.#o;
    let capacity = pipeline.concurrency - this.#running.size;
    let starved = false;
    // Runs once per finished step: plain loops over the open slots only, no allocation. A
    // step that succeeded, failed or was skipped stays so in this driver and leaves the
    // list, as does a pending step until a need of it ends: a long chain rescans neither
    // its past nor its future at every step.
    const open = this.#open;
    do {
      this.#rescan = false;
      for (this.#pumpAt = 0; this.#pumpAt < open.length; this.#pumpAt++) {
        const slot = open[this.#pumpAt];
        if (!slot.open) continue;
        const def = slot.def;
        const status = slot.record.status;
        if (status === "succeeded" || status === "failed" || status === "skipped") {
          slot.open = false;
          continue;
        }
        let blocker: StepSlot | undefined;
        let needsDone = true;
        for (const need of slot.needs) {
          const s = need.record.status;
          if (s === "failed" || s === "skipped") {
            blocker = need;
            break;
          }
          if (s !== "succeeded") needsDone = false;
        }
        if (blocker) {
          if (status === "pending") {
            this.#setStep(slot, skipTask(slot.record, now, blocker.def.name));
            slot.open = false;
          }
          continue;
        }
        if (!needsDone) {
          // `#setStep` opens it again once a need ends
          if (status === "pending" && !slot.fan && !slot.expanding) slot.open = false;
          continue;
        }
        if (!def.fanOut) {
          if (!isReady(slot.record, now)) continue;
          if (capacity <= 0) continue;
          if (!stepLimit.tryAcquire()) {
            starved = true;
            continue;
          }
          capacity--;
          this.#startTask(slot, -1, now);
          continue;
        }
        if (!slot.fan) {
          if (!slot.expanding) this.#expand(slot);
          continue;
        }
        const fan = slot.fan;
        const limit = def.fanOut.concurrency;
        while (fan.running < limit && capacity > 0) {
          // retries that are due first, then items not started yet
          const retry = nextRetry(fan) <= now ? fan.retries.peek()!.index : undefined;
          const index = retry ?? fan.fresh[fan.freshAt];
          if (index === undefined) break;
          if (!stepLimit.tryAcquire()) {
            starved = true;
            break;
          }
          if (retry === undefined) fan.freshAt++;
          else fan.retries.pop();
          capacity--;
          this.#startTask(slot, index, now);
        }
      }
    } while (this.#rescan);
    this.#pumpAt = -1;
    let kept = 0;
    let expanding = false;
    for (let i = 0; i < open.length; i++) {
      const slot = open[i];
      if (!slot.open) {
        slot.listed = false;
        continue;
      }
      open[kept++] = slot;
      if (slot.expanding) expanding = true;
    }
    open.length = kept;
    if (starved) {
      this.#waitingForSlot = true;
      stepLimit.waitFor(this);
    }
    if (this.#running.size === 0 && !starved && !expanding) {
      this.#settle(now);
    } else {
      // Other steps are still running: a retry due meanwhile must not wait for them.
      const retryAt = this.#earliestRetry(now);
      if (retryAt !== Infinity) this.#wakeAt(retryAt);
    }
    this.#flush().catch(this.#onFlushError);
  }

  /**
   * Puts a slot (back) in the open list, in topological order, unless it has ended. When
   * `#pump` is walking the list and already passed its place, it walks the list again.
   */
  #openSlot(slot: StepSlot): void {
    if (slot.open || isEnded(slot.record.status)) return;
    slot.open = true;
    const open = this.#open;
    const walking = this.#pumpAt >= 0 && this.#pumpAt < open.length;
    if (slot.listed) {
      if (walking && slot.at <= open[this.#pumpAt].at) this.#rescan = true;
      return;
    }
    slot.listed = true;
    let at = open.length;
    if (at > 0 && open[at - 1].at > slot.at) {
      let lo = 0;
      while (lo < at) {
        const mid = (lo + at) >> 1;
        if (open[mid].at > slot.at) at = mid;
        else lo = mid + 1;
      }
      open.splice(at, 0, slot);
    } else {
      open.push(slot);
    }
    if (walking && at <= this.#pumpAt) {
      this.#pumpAt++;
      this.#rescan = true;
    }
  }

  /** What a flush nobody awaits does when KV refused its writes. */
  readonly #onFlushError = (error: unknown): void => this.#fail(error);

  /** The earliest time a retrying step or item is due, or Infinity when none is. */
  #earliestRetry(now: number): number {
    let nextAt = Infinity;
    // retrying steps and fan-outs are open: their needs all succeeded
    for (let i = 0; i < this.#open.length; i++) {
      const s = this.#open[i];
      if (s.record.status === "retrying") nextAt = Math.min(nextAt, s.record.nextAt ?? now);
      if (s.fan) nextAt = Math.min(nextAt, nextRetry(s.fan));
    }
    return nextAt;
  }

  /** Pumps again at `at` on the engine's clock (one pending wake-up at a time). */
  #wakeAt(at: number): void {
    this.#cancelHold?.();
    // a timer cannot wait longer than MAX_TIMEOUT_MS; waking early only pumps again
    const delay = Math.min(at - this.#clock.now(), MAX_TIMEOUT_MS);
    this.#cancelHold = this.#clock.after(delay, () => this.#pump());
  }

  #settle(now: number): void {
    const slots = [...this.#steps.values()];
    if (slots.every((s) => s.record.status === "succeeded")) {
      this.#endRun("succeeded", null, false);
      this.#afterCommit.push(() => this.#finishEnded("succeeded"));
      return;
    }
    const nextAt = this.#earliestRetry(now);
    if (nextAt !== Infinity) {
      if (nextAt - now <= this.#o.holdMs) {
        this.#wakeAt(nextAt);
        return;
      }
      const next: RunRecord = { ...this.#run, status: "waiting", dueAt: nextAt };
      this.#changeRun(next);
      this.#runOps.push((op) => {
        op.delete(keys.lease(this.#run.id));
        this.#o.store.hint(op, this.#run.id, nextAt - this.#clock.now());
      });
      this.#stopped = true;
      this.#afterCommit.push(() => this.#finish("waiting"));
      return;
    }
    const failed = slots.find((s) => s.record.status === "failed");
    this.#endRun(
      "failed",
      { step: failed?.def.name ?? null, message: failed?.record.error?.message ?? "Run failed" },
      true,
    );
    this.#afterCommit.push(() => this.#finishEnded("failed"));
  }

  #endRun(
    status: "succeeded" | "failed",
    error: RunRecord["error"],
    alert: boolean,
  ): void {
    const now = this.#clock.now();
    const next: RunRecord = {
      ...this.#run,
      status,
      endedAt: now,
      dueAt: null,
      error,
      failures: this.#run.failures + (status === "failed" ? 1 : 0),
    };
    this.#changeRun(next);
    this.#runOps.push((op) => op.delete(keys.lease(this.#run.id)));
    this.#stopped = true;
    if (!alert) return;
    const failedStep = error?.step ? this.#steps.get(error.step) : undefined;
    const record: AlertRecord = {
      runId: next.id,
      pipeline: next.pipeline,
      seq: next.failures,
      at: now,
      step: error?.step ?? null,
      attempts: failedStep?.fan
        ? [...failedStep.fan.records.values()].reduce((most, r) => Math.max(most, r.attempt), 0)
        : failedStep?.record.attempt ?? 0,
      message: error?.message ?? "Run failed",
      logicalDate: next.logicalDate,
      webhook: this.#o.channels.webhook ? "pending" : "none",
      email: this.#o.channels.email ? "pending" : "none",
    };
    this.#write(keys.alert(next.id, record.seq), record);
    if (this.#o.channels.webhook || this.#o.channels.email) {
      this.#write(keys.alertOutbox(next.id, record.seq), now);
    }
    this.#afterCommit.push(() => this.#o.onAlert?.(record));
  }

  #changeRun(next: RunRecord): void {
    const before = this.#run;
    this.#run = next;
    // params and graph are what make a run record large (up to the 64 KiB value limit)
    this.#write(
      keys.run(next.id),
      next,
      1024 + 2 * (JSON.stringify(next.params).length + JSON.stringify(next.graph ?? {}).length),
    );
    this.#runOps.push((op) => {
      moveDue(op, before, next);
      moveStatus(op, before, next);
    });
    this.#emit({ type: "run", run: next });
  }

  #recoverCrash(
    step: string,
    item: number,
    record: TaskRecord,
    now: number,
  ): TaskRecord {
    const error = crashError(record.attempt);
    this.#writeAttempt(attemptRecord(step, item, record, "crashed", error, [], now));
    return crashTask(record, now);
  }

  async #expand(slot: StepSlot): Promise<void> {
    slot.expanding = true;
    const name = slot.def.name;
    try {
      const inputs = await this.#inputs(slot.def);
      const values = await withinTimeout(
        Promise.resolve(slot.def.fanOut!.items(inputs)),
        slot.timeoutMs,
        `items of step '${name}' did not return within ${slot.timeoutMs} ms (the step's timeout)`,
      );
      if (!Array.isArray(values)) {
        throw new NonRetryableError(`items of step '${name}' must return an array`);
      }
      if (values.length > MAX_ITEMS) {
        // refused before any item is written: nothing of the fan-out is half done
        throw new NonRetryableError(
          `items of step '${name}' returned ${values.length} items: a fan-out step may have at most ${MAX_ITEMS} (batch the items, or split the list over several steps)`,
        );
      }
      // A rerun clears the step's item count (its list may change) but keeps its items'
      // records, back at pending: their attempt history goes on after the earlier attempts.
      const rerun = slot.record.items === undefined && slot.record.generation > 0;
      const stored = slot.record.items !== undefined || rerun
        ? await this.#o.store.getItems(this.#run.id, name)
        : new Map<number, TaskRecord>();
      if (slot.record.items !== undefined && slot.record.items !== values.length) {
        throw new NonRetryableError(
          `items of step '${name}' returned ${values.length} items, but this run recorded ${slot.record.items}: items must depend on the step's inputs only`,
        );
      }
      if (this.#stopped) return;
      const now = this.#clock.now();
      const fan: FanState = {
        values,
        records: new Map(),
        outputs: new Map(),
        fresh: [],
        freshAt: 0,
        counts: { pending: 0, running: 0, retrying: 0, succeeded: 0, failed: 0, skipped: 0 },
        retries: new MinHeap((a, b) => a.at < b.at || (a.at === b.at && a.index < b.index)),
        running: 0,
      };
      for (let i = 0; i < values.length; i++) {
        let record = stored.get(i);
        if (rerun && record) record = resetTask(record, slot.record.generation);
        if (!record || record.status === "pending") {
          if (record) trackItem(fan, i, record);
          fan.fresh.push(i);
          continue;
        }
        if (record.status === "running") {
          record = this.#recoverCrash(name, i, record, now);
          this.#write(keys.item(this.#run.id, name, i), record);
        }
        trackItem(fan, i, record);
        if (record.status === "succeeded") {
          fan.outputs.set(i, await decodeValue(this.#kv, this.#run.id, record.output!));
        }
      }
      slot.fan = fan;
      this.#setStep(slot, {
        ...slot.record,
        status: "running",
        items: values.length,
        startedAt: slot.record.startedAt ?? now,
        attempt: Math.max(slot.record.attempt, 1),
      });
      this.#checkFanDone(slot);
    } catch (error) {
      const info = toErrorInfo(error);
      this.#setStep(slot, {
        ...slot.record,
        status: "failed",
        endedAt: this.#clock.now(),
        error: info,
      });
    } finally {
      slot.expanding = false;
    }
    this.#pump();
  }

  #startTask(slot: StepSlot, index: number, now: number): void {
    const name = slot.def.name;
    const before = index < 0
      ? slot.record
      : slot.fan!.records.get(index) ?? pendingTask(slot.record.generation);
    const record = startAttempt(before, now);
    this.#setTask(slot, index, record);
    const task: Task = {
      slot,
      index,
      key: taskKey(name, index),
      controller: new AbortController(),
      onAbort: undefined,
      deadline: Infinity,
    };
    this.#running.set(task.key, task);
    if (slot.fan) slot.fan.running++;
    // The body starts only once the commit that records its start is durable.
    this.#afterCommit.push(() => void this.#execute(task, record));
  }

  async #execute(task: Task, record: TaskRecord): Promise<void> {
    const { slot, index, controller } = task;
    const name = slot.def.name;
    // The run may have been interrupted, released or lost while the start marker was being
    // committed: then this attempt is no longer ours to run.
    if (this.#running.get(task.key) !== task) return;
    if (this.#settling) {
      // The worker began to stop meanwhile: no step starts now. The attempt is handed back
      // as one still running at the end of the grace period is.
      this.#running.delete(task.key);
      if (slot.fan) slot.fan.running--;
      this.#o.stepLimit.release();
      const now = this.#clock.now();
      this.#setTask(slot, index, releaseTask(record, now));
      this.#writeAttempt(
        attemptRecord(name, index, record, "interrupted", releaseError(record.attempt), [], now),
      );
      this.#pump();
      return;
    }
    const logs: LogLine[] = [];
    let result: { ok: true; value: unknown; stored: Stored } | {
      ok: false;
      error: ErrorInfo;
    };
    try {
      const inputs = knownInputs(slot) ?? await this.#inputs(slot.def);
      const ctx = this.#context(slot, index, record, controller.signal, logs, inputs);
      task.deadline = performance.now() + slot.timeoutMs;
      this.#armTimeout(task.deadline);
      if (this.#o.beforeAttempt) {
        await this.#o.beforeAttempt({
          runId: this.#run.id,
          pipeline: this.#run.pipeline,
          step: name,
          item: index,
          attempt: record.attempt,
          idempotencyKey: ctx.idempotencyKey,
        });
      }
      if (this.#running.get(task.key) !== task) return;
      const body = index < 0
        ? slot.def.run(inputs, ctx)
        : slot.def.run(slot.fan!.values[index], ctx);
      let value = await untilAborted(body, task);
      if (slot.def.output) {
        const parsed = slot.def.output.safeParse(value);
        if (!parsed.success) {
          throw new NonRetryableError(
            `Output of step '${name}' does not match its schema: ${
              parsed.error.issues.map((i) => `${i.path.join(".") || "(output)"}: ${i.message}`)
                .join("; ")
            }`,
          );
        }
        value = parsed.data;
      }
      // small values (the usual case) without an await
      const stored = encodeSmall(this.#kv, value) ?? await encodeMeasured(
        this.#kv,
        this.#run.id,
        value,
        { step: name, item: index },
        (op) => this.#commitChunks(op),
      );
      result = { ok: true, value, stored };
    } catch (error) {
      result = { ok: false, error: toErrorInfo(error) };
    } finally {
      // the timeout timer skips it from now on; it stays armed for the next body
      task.deadline = Infinity;
    }
    if (this.#running.get(task.key) !== task) return;
    this.#running.delete(task.key);
    this.#o.stepLimit.release();
    if (this.#stopped) return;
    const now = this.#clock.now();
    this.#writeAttempt(attemptRecord(
      name,
      index,
      record,
      result.ok ? "succeeded" : "failed",
      result.ok ? null : result.error,
      logs,
      now,
    ));
    const done = result.ok ? succeedTask(record, now, result.stored) : failAttempt(
      record,
      now,
      result.error,
      slot.retry.attempts,
      retryDelay(slot.retry, spentAttempts(record)),
    );
    const size = result.ok && "inline" in result.stored ? 50_000 : 1024;
    if (result.ok && "blob" in result.stored) {
      // the checkpoint refers to the blob: it is no longer pending
      this.#write(keys.blobPending(this.#run.id, result.stored.blob.id), null, 256);
    }
    if (index < 0) {
      if (result.ok) slot.output = { value: result.value };
      this.#setTask(slot, index, done, size);
    } else {
      const fan = slot.fan!;
      fan.running--;
      if (result.ok) fan.outputs.set(index, result.value);
      this.#setTask(slot, index, done, size);
      this.#checkFanDone(slot);
    }
    this.#pump();
  }

  #checkFanDone(slot: StepSlot): void {
    const fan = slot.fan!;
    const total = fan.values.length;
    if (fan.counts.succeeded === total) {
      slot.output = { value: Array.from({ length: total }, (_, i) => fan.outputs.get(i)) };
      this.#setStep(slot, succeedTask(slot.record, this.#clock.now()));
      return;
    }
    const open = fan.running > 0 || fan.freshAt < fan.fresh.length || fan.counts.retrying > 0;
    if (!open && fan.counts.failed > 0) {
      const failed = [...fan.records.entries()].find(([, r]) => r.status === "failed")!;
      this.#setStep(slot, {
        ...slot.record,
        status: "failed",
        endedAt: this.#clock.now(),
        error: {
          ...failed[1].error!,
          message: `${fan.counts.failed} of ${total} items failed; item ${failed[0]}: ${
            failed[1].error?.message
          }`,
        },
      });
    }
  }

  async #inputs(def: AnyStep): Promise<Record<string, unknown>> {
    const inputs: Record<string, unknown> = {};
    for (const [input, need] of Object.entries(def.needs)) {
      inputs[input] = await this.#output(this.#steps.get(need.name)!);
    }
    return inputs;
  }

  async #output(slot: StepSlot): Promise<unknown> {
    if (slot.output) return slot.output.value;
    const value = slot.record.output
      ? await decodeValue(this.#kv, this.#run.id, slot.record.output)
      : await this.#o.store.getOutput(this.#run.id, slot.def.name);
    slot.output = { value };
    return value;
  }

  #context(
    slot: StepSlot,
    index: number,
    record: TaskRecord,
    signal: AbortSignal,
    logs: LogLine[],
    inputs: Record<string, unknown>,
  ): StepContext | ItemContext<Record<string, unknown>> {
    const run: RunInfo = {
      id: this.#run.id,
      pipeline: this.#run.pipeline,
      params: this.#run.params,
      logicalDate: this.#run.logicalDate,
      tick: this.#run.tick ? new Date(this.#run.tick).toISOString() : null,
      trigger: this.#run.trigger,
    };
    let bytes = 0;
    const log =
      (level: LogLine["level"]) => (message: string, fields?: Record<string, unknown>) => {
        if (logs.length >= MAX_LOG_LINES || bytes >= MAX_LOG_BYTES) return;
        const text = String(message).slice(0, 2000);
        const kept = fields === undefined ? undefined : storableFields(fields);
        // KV keeps strings beyond Latin-1 at two bytes a character
        bytes += 40 + 2 * text.length + (kept?.size ?? 0);
        logs.push(
          kept
            ? { at: this.#clock.now(), level, message: text, fields: kept.fields }
            : { at: this.#clock.now(), level, message: text },
        );
        if (logs.length === MAX_LOG_LINES || bytes >= MAX_LOG_BYTES) {
          logs.push({
            at: this.#clock.now(),
            level: "warn",
            message: "(log limit reached: later lines dropped)",
          });
        }
      };
    const ctx: StepContext = {
      run,
      step: slot.def.name,
      attempt: record.attempt,
      idempotencyKey: idempotencyKey(this.#run.id, slot.def.name, index, record.generation),
      signal,
      log: { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") },
      artifact: (name, data, options) =>
        this.#storeArtifact(slot.def.name, index, name, data, options),
      readArtifact: async (ref) => {
        const name = typeof ref === "string" ? ref : ref.name;
        return (await this.#o.store.readArtifact(this.#run.id, name)).bytes;
      },
    };
    if (index < 0) return ctx;
    return { ...ctx, item: { index, total: slot.fan!.values.length }, inputs };
  }

  async #storeArtifact(
    step: string,
    item: number,
    name: string,
    data: Uint8Array | string,
    options?: ArtifactOptions,
  ): Promise<ArtifactRef> {
    checkArtifactName(name);
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    if (!(bytes instanceof Uint8Array)) {
      throw new TypeError(`Artifact '${name}' must be a Uint8Array or a string`);
    }
    const contentType = options?.contentType ??
      (typeof data === "string" ? "text/plain; charset=utf-8" : "application/octet-stream");
    const blob = await writeBlob(
      this.#kv,
      this.#run.id,
      bytes,
      { artifact: name },
      (op) => this.#commitChunks(op),
    );
    // The blob an artifact of this name had before (an earlier attempt's, a rerun's, or a
    // concurrent item's) is dropped with the new metadata: it goes back to pending.
    const known = this.#artifactBlobs.has(name);
    const stored = known
      ? null
      : (await this.#kv.get<ArtifactMeta>(keys.artifact(this.#run.id, name))).value;
    const replaced = this.#artifactBlobs.get(name) ?? stored?.blob;
    this.#artifactBlobs.set(name, blob);
    if (replaced && replaced.id !== blob.id) {
      this.#write(
        keys.blobPending(this.#run.id, replaced.id),
        { artifact: name, chunks: replaced.chunks } satisfies PendingBlob,
        256,
      );
    }
    const meta: ArtifactMeta = {
      runId: this.#run.id,
      name,
      contentType,
      size: bytes.byteLength,
      blob,
      step,
      item,
      createdAt: this.#clock.now(),
    };
    this.#write(keys.artifact(this.#run.id, name), meta);
    this.#write(keys.blobPending(this.#run.id, blob.id), null, 256);
    await this.#flush();
    if (this.#isLost) {
      throw new Error(`Run ${this.#run.id} stopped while storing artifact '${name}'`);
    }
    return artifactRef(meta);
  }

  // ---- durable state ----------------------------------------------------------------

  #setTask(slot: StepSlot, index: number, record: TaskRecord, size = 1024): void {
    if (index < 0) {
      this.#setStep(slot, record, size);
      return;
    }
    trackItem(slot.fan!, index, record);
    this.#write(keys.item(this.#run.id, slot.def.name, index), record, taskBytes(record, size));
    this.#emit({
      type: "task",
      runId: this.#run.id,
      step: slot.def.name,
      item: index,
      status: record.status,
      attempt: record.attempt,
      nextAt: record.nextAt,
      error: record.error,
      durationMs: record.endedAt && record.startedAt
        ? record.endedAt - record.startedAt
        : undefined,
      startedAt: record.startedAt,
      endedAt: record.endedAt,
    });
  }

  #setStep(slot: StepSlot, record: TaskRecord, size = 1024): void {
    slot.record = record;
    // the steps that need it may act now (run, or be skipped)
    if (isEnded(record.status)) { for (const d of slot.dependents) this.#openSlot(d); }
    this.#writeKeyed(slot.keyId, slot.key, slot.keyBytes, record, taskBytes(record, size));
    this.#emit({
      type: "task",
      runId: this.#run.id,
      step: slot.def.name,
      item: -1,
      status: record.status,
      attempt: record.attempt,
      items: record.items,
      nextAt: record.nextAt,
      error: record.error,
      durationMs: record.endedAt && record.startedAt
        ? record.endedAt - record.startedAt
        : undefined,
      startedAt: record.startedAt,
      endedAt: record.endedAt,
    });
  }

  #writeAttempt(attempt: AttemptRecord): void {
    // Logs and stacks dominate an attempt's size; count them so a commit stays in limits.
    let size = 512 + 2 * (attempt.error?.stack?.length ?? 0) +
      2 * (attempt.error?.message.length ?? 0);
    for (const line of attempt.logs) {
      size += 64 + 2 * line.message.length + (line.fields ? 8192 : 0);
    }
    const key = keys.attempt(this.#run.id, attempt.step, attempt.item, attempt.n);
    const slot = this.#steps.get(attempt.step);
    if (!slot) return this.#write(key, attempt, size);
    // Every attempt key goes through here: its id in `#writes` is the step key's (JSON, so
    // without a NUL character) and the item and attempt numbers after NULs, unlike any other.
    slot.attemptKeyBytes ??= keySize(key); // numbers count the same whatever their value
    this.#writeKeyed(
      `${slot.keyId}\u0000${attempt.item}\u0000${attempt.n}`,
      key,
      slot.attemptKeyBytes,
      attempt,
      size,
    );
  }

  #write(key: Deno.KvKey, value: unknown, size = 1024): void {
    this.#writeKeyed(JSON.stringify(key), key, keySize(key), value, size);
  }

  /** `#write` with the key's id in `#writes` (its JSON for any key) and size known. */
  #writeKeyed(id: string, key: Deno.KvKey, keyBytes: number, value: unknown, size: number): void {
    this.#writes.set(id, { key, value, size: size + 2 * keyBytes, keyBytes });
  }

  #emit(event: RunEvent): void {
    this.#events.push(event);
  }

  /** Commits every pending write; resolves when they (and any queued before) are durable. */
  #flush(): Promise<void> {
    if (this.#committing) {
      // Every caller until the commit in flight ends shares the one commit after it, so a
      // busy fan-out does not pile up callers that each look again after every commit.
      if (!this.#queued) {
        const queued: Promise<void> = this.#committing
          .finally(() => {
            if (this.#queued === queued) this.#queued = null;
          })
          .then(() => this.#flush());
        this.#queued = queued;
      }
      return this.#queued;
    }
    if (this.#writes.size === 0 && this.#runOps.length === 0) {
      this.#runAfterCommit();
      return Promise.resolve();
    }
    // `#commitPending` clears `#committing` itself once its commits are durable (see there)
    const committing: Promise<void> = this.#commitPending().then(
      () => {
        if (this.#committing === committing) this.#committing = null;
      },
      (error) => {
        // Its writes are gone from the queue: the driver must not go on without them.
        this.#fail(error);
        if (this.#committing === committing) this.#committing = null;
        throw error;
      },
    );
    this.#committing = committing;
    return committing;
  }

  /**
   * Commits chunks of a large output or an artifact, fenced by the lease like a
   * checkpoint, and in turn with the checkpoints so that the lease versionstamp it checks
   * is the current one: a worker that lost its lease writes no chunk either.
   */
  #commitChunks(op: Deno.AtomicOperation): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    if (this.#committing) {
      return this.#committing.then(noop, noop).then(() => this.#commitChunks(op));
    }
    const commit = (async (): Promise<Deno.KvCommitResult | Deno.KvCommitError> => {
      if (this.#stopped) return { ok: false };
      this.#wroteChunks = true;
      op.check({ key: keys.lease(this.#run.id), versionstamp: this.#leaseVersion });
      try {
        const result = await commitAtomic(op);
        if (!result.ok && !this.#stopped) this.#lost();
        return result;
      } catch (error) {
        this.#fail(error);
        throw error;
      }
    })();
    this.#committing = commit.then(noop, noop).finally(() => (this.#committing = null));
    return commit;
  }

  async #commitPending(): Promise<void> {
    // The run record goes last, into the commit that also moves its indexes, due entry and
    // lease (the run ops): a commit split by the limits never stores a run status without
    // them. Pending-blob markers go where a cut-short split cannot orphan a blob.
    const writes = Array.from(this.#writes.values());
    if (writes.some(needsOrder)) writes.sort((a, b) => commitOrder(a) - commitOrder(b));
    const runOps = this.#runOps;
    const events = this.#events;
    const after = this.#afterCommit;
    this.#writes = new Map();
    this.#runOps = [];
    this.#events = [];
    this.#afterCommit = [];
    const batches: Write[][] = [[]];
    let bytes = 0;
    let keyBytes = 0;
    for (const w of writes) {
      const batch = batches[batches.length - 1];
      if (
        batch.length >= BATCH_MUTATIONS ||
        (batch.length > 0 &&
          (bytes + w.size > BATCH_BYTES || keyBytes + w.keyBytes > BATCH_KEY_BYTES))
      ) {
        batches.push([w]);
        bytes = w.size;
        keyBytes = w.keyBytes;
      } else {
        batch.push(w);
        bytes += w.size;
        keyBytes += w.keyBytes;
      }
    }
    for (const [i, batch] of batches.entries()) {
      const last = i === batches.length - 1;
      const lease = { key: keys.lease(this.#run.id), versionstamp: this.#leaseVersion };
      let leaseWritten = last && runOps.length > 0;
      let size = 0;
      let batchKeyBytes = 0;
      for (const w of batch) {
        size += w.size;
        batchKeyBytes += w.keyBytes;
        if (w.key[1] === "lease") leaseWritten = true;
      }
      let result: Deno.KvCommitResult | Deno.KvCommitError;
      try {
        result = await this.#o.store.committer.commit({
          checks: 1,
          // run ops move indexes, due entry and counts (moveDue, moveStatus) or delete the
          // lease and enqueue: at most 10 mutations, on keys no longer than an index key
          mutations: batch.length + (last ? runOps.length * 10 : 0),
          bytes: size + (last ? runOps.length * 1024 : 0),
          keyBytes: batchKeyBytes + (last ? runOps.length * 10 * this.#indexKeyBytes : 0),
          apply: (op) => {
            op.check(lease);
            for (const w of batch) {
              if (w.value === null) op.delete(w.key);
              else op.set(w.key, w.value);
            }
            if (last) { for (const apply of runOps) apply(op); }
          },
        });
      } catch (error) {
        const limit = kvLimit(error);
        if (limit === undefined || this.#refusing) throw error;
        await this.#refuse(limit, batch, batches.slice(i).flat());
        return;
      }
      if (!result.ok) {
        this.#lost();
        return;
      }
      if (leaseWritten) this.#leaseVersion = result.versionstamp;
    }
    // Durable, and nothing of this driver in flight: the writes of what the events and
    // the steps started below lead to (the next step's result) go into a new commit at
    // once, not after this promise settles.
    this.#committing = null;
    for (const e of events) this.#o.onEvent?.(e);
    for (const fn of after) fn();
  }

  /**
   * Handles a checkpoint commit that KV refused for breaking one of its limits: a record
   * kvflow could not measure beforehand (an Error object in an output is stored inline
   * whole, say). KV refuses the same commit every time, so dropping the run would only run
   * the step again until its crashes ran out. Instead the tasks whose records broke the
   * limit fail at once, not retryably, with an error that names the limit and the task;
   * attempts of this driver still running are handed back as on a graceful stop; and the
   * run goes back to queued, so the next claim carries on from what KV holds. Nothing of
   * the refused commit or of those after it is kept. The hand-back is fenced by the lease
   * like every commit.
   *
   * @param limit KV's words for the limit
   * @param refused the writes of the refused commit
   * @param uncommitted those and the writes of the commits after it
   * @throws {Error} when no write of the refused commit records a task
   */
  async #refuse(limit: string, refused: Write[], uncommitted: Write[]): Promise<void> {
    const over = refused.filter((w) => keys.taskOf(w.key) !== null && overKvLimit(w));
    // No record alone breaks a limit, the commit as a whole does: each of its tasks shares it.
    const blamed = over.length > 0 ? over : refused.filter((w) => keys.taskOf(w.key) !== null);
    if (blamed.length === 0) {
      throw new Error(`KV refused a commit of run ${this.#run.id}: ${limit}`);
    }
    this.#refusing = true;
    this.#stopped = true;
    this.#abortRunning(`A checkpoint of run ${this.#run.id} broke a KV limit`);
    this.#writes = new Map();
    this.#runOps = [];
    this.#events = [];
    this.#afterCommit = [];
    const runId = this.#run.id;
    const now = this.#clock.now();
    const culprits = new Map<string, { step: string; item: number; what: LimitCause }>();
    for (const w of blamed) {
      const task = keys.taskOf(w.key)!;
      const what = !over.includes(w) ? "commit" : task.attempt ? "attempt" : "result";
      culprits.set(taskKey(task.step, task.item), { ...task, what });
    }
    // An attempt of a dead holder that this driver found but whose crash it had not stored
    // yet is still `running` in KV: the next claim finds that crash again, so it stays.
    const logs = new Map<string, LogLine[]>();
    const crashed = new Set<string>();
    for (const w of uncommitted) {
      const task = keys.taskOf(w.key);
      if (!task?.attempt) continue;
      const attempt = w.value as AttemptRecord;
      logs.set(taskKey(task.step, task.item), attempt.logs);
      if (attempt.status === "crashed") crashed.add(taskKey(task.step, task.item));
    }
    const store = this.#o.store;
    const stored: { step: string; item: number; record: TaskRecord }[] = [];
    for (const [step, record] of await store.getSteps(runId)) {
      stored.push({ step, item: -1, record });
      if (record.items === undefined) continue;
      for (const [item, r] of await store.getItems(runId, step)) {
        stored.push({ step, item, record: r });
      }
    }
    // A culprit KV has no record of yet (never the case for a task that ran) fails all the same.
    const found = new Set(stored.map(({ step, item }) => taskKey(step, item)));
    for (const [key, { step, item }] of culprits) {
      const slot = this.#steps.get(step);
      const record = item < 0 ? slot?.record : slot?.fan?.records.get(item);
      if (!found.has(key) && record) stored.push({ step, item, record });
    }
    const runEntry = await this.#kv.get<RunRecord>(keys.run(runId));
    for (const { step, item, record } of stored) {
      const slot = this.#steps.get(step);
      const key = taskKey(step, item);
      const culprit = culprits.get(key);
      if (!slot) continue;
      if (culprit) {
        const error = limitError(step, item, limit, culprit.what);
        const failed: TaskRecord = {
          ...record,
          status: "failed",
          endedAt: now,
          nextAt: null,
          error,
        };
        delete failed.output;
        if (item < 0 || slot.fan) this.#setTask(slot, item, failed);
        else this.#write(keys.item(runId, step, item), failed);
        // a fan-out step's own record has no attempts
        if (record.status === "running" && record.items === undefined) {
          let attempt = attemptRecord(
            step,
            item,
            record,
            "failed",
            error,
            logs.get(key) ?? [],
            now,
          );
          if (serializedBytes(attempt) > KV_VALUE_BYTES - 1024) {
            const note =
              `(${attempt.logs.length} log lines not stored: with the attempt's error they are too large for one KV value)`;
            attempt = { ...attempt, logs: [{ at: now, level: "warn", message: note }] };
          }
          this.#writeAttempt(attempt);
        }
      } else if (record.status === "running" && record.items === undefined && !crashed.has(key)) {
        this.#write(
          item < 0 ? keys.step(runId, step) : keys.item(runId, step, item),
          releaseTask(record, now),
        );
        this.#writeAttempt(
          attemptRecord(step, item, record, "interrupted", releaseError(record.attempt), [], now),
        );
      }
    }
    // The run as KV holds it: what this driver changed since went with the refused commits.
    this.#run = runEntry.value ?? this.#run;
    this.#changeRun({ ...this.#run, status: "queued", dueAt: now });
    this.#runOps.push((op) => {
      op.delete(keys.lease(runId));
      store.hint(op, runId, 0);
    });
    await this.#commitPending();
    if (!this.#isLost) this.#finish("released");
  }

  #runAfterCommit(): void {
    const events = this.#events;
    const after = this.#afterCommit;
    this.#events = [];
    this.#afterCommit = [];
    for (const e of events) this.#o.onEvent?.(e);
    for (const fn of after) fn();
  }

  #tickLease(): void {
    if (this.#stopped) return;
    const now = this.#clock.now();
    if (this.#lease.deadline - now < (this.#o.leaseMs * 2) / 3) {
      const lease: Lease = { ...this.#lease, deadline: now + this.#o.leaseMs };
      this.#lease = lease;
      this.#write(keys.lease(this.#run.id), lease, 256);
      this.#changeRun({ ...this.#run, dueAt: lease.deadline });
      this.#flush().catch(this.#onFlushError);
      return;
    }
    this.#kv.get<Lease>(keys.lease(this.#run.id)).then((entry) => {
      if (!this.#stopped && entry.value?.owner !== this.#lease.owner) this.#lost();
    }).catch(() => {});
  }

  /** Aborts every running body; their late results are ignored and their slots freed. */
  #abortRunning(reason: string): void {
    for (const task of this.#running.values()) {
      abortTask(task, new Error(reason));
      this.#o.stepLimit.release();
    }
    this.#running.clear();
  }

  /**
   * Arms the step timeout timer for a body due to time out at `deadline` (ms on
   * `performance.now()`). One timer serves every running body: it is moved only when a
   * deadline comes before the one it is armed for, so a chain of steps with the same
   * timeout sets it once per timeout period, not once per step.
   */
  #armTimeout(deadline: number): void {
    if (deadline >= this.#timeoutAt || this.#stopped) return;
    clearTimeout(this.#timeoutTimer);
    this.#timeoutAt = deadline;
    const delay = Math.min(Math.max(0, deadline - performance.now()), MAX_TIMEOUT_MS);
    this.#timeoutTimer = setTimeout(() => this.#timeoutsDue(), delay);
  }

  /** Aborts the bodies whose timeout has passed and arms the timer for the next one. */
  #timeoutsDue(): void {
    this.#timeoutTimer = undefined;
    this.#timeoutAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const task of this.#running.values()) {
      if (task.deadline <= now) {
        task.deadline = Infinity;
        const { name } = task.slot.def;
        const error = new Error(`Step '${name}' timed out after ${task.slot.timeoutMs} ms`);
        error.name = "TimeoutError";
        abortTask(task, error);
      } else if (task.deadline < next) {
        next = task.deadline;
      }
    }
    if (next !== Infinity) this.#armTimeout(next);
  }

  #lost(): void {
    this.#stopped = true;
    this.#isLost = true;
    this.#abortRunning("Run cancelled or taken over by another worker");
    this.#writes.clear();
    this.#runOps = [];
    this.#afterCommit = [];
    this.#events = [];
    this.#finish("lost");
  }

  #fail(error: unknown): void {
    if (this.#isLost) return;
    if (error instanceof KvUnavailableError) {
      // the caller reports it: a full disk ends the run's driving here, not in retries
      this.#unavailable = error;
    } else {
      console.error(
        `kvflow: run ${this.#run.id}: could not write to KV: ${toErrorInfo(error).message}`,
      );
    }
    this.#lost();
  }

  /**
   * Finishes a run that ended: once its lease is gone, no blob still pending can be
   * referred to, so those are reclaimed first. Those of earlier holders went at the claim;
   * a driver that wrote no chunk has none of its own.
   */
  #finishEnded(outcome: "succeeded" | "failed"): void {
    if (!this.#wroteChunks) return this.#finish(outcome);
    this.#o.store.reclaimBlobs(this.#run.id).catch(() => {}).finally(() => this.#finish(outcome));
  }

  #finish(outcome: Outcome): void {
    this.#stopped = true;
    clearInterval(this.#renewTimer);
    clearTimeout(this.#timeoutTimer);
    this.#timeoutTimer = undefined;
    this.#cancelHold?.();
    this.#o.stepLimit.forget(this);
    if (this.#unavailable) this.#reject(this.#unavailable);
    else this.#resolve(outcome);
  }
}

/** What broke a KV limit: a task's result, its attempt's record, or the commit as a whole. */
type LimitCause = "result" | "attempt" | "commit";

/** Whether KV would refuse a write on its own: its value or its key is too large. */
function overKvLimit(w: Write): boolean {
  return w.keyBytes > KV_KEY_BYTES ||
    (w.value !== null && serializedBytes(w.value) > KV_VALUE_BYTES);
}

/** A value's serialized size (as KV stores it, within a few bytes); Infinity if it has none. */
function serializedBytes(value: unknown): number {
  try {
    return v8.serialize(value).byteLength;
  } catch {
    return Infinity;
  }
}

/**
 * The error of a task whose checkpoint KV refused for breaking one of its limits: not
 * retryable, since KV would refuse it the same way again.
 */
function limitError(step: string, item: number, limit: string, what: LimitCause): ErrorInfo {
  const task = item < 0 ? `Step '${step}'` : `Item ${item} of step '${step}'`;
  const why = what === "result"
    ? "its result is too large for one KV value. Return less, or plain data kvflow can " +
      "measure and split into chunks (an Error object, say, is stored whole), or store " +
      "large data with ctx.artifact()"
    : what === "attempt"
    ? "its logs and error together are too large for one KV value: log less"
    : "the records of its commit break the limit together";
  return {
    name: "KvLimitError",
    message: `${task} could not be checkpointed: KV refused the commit (${limit}), ` +
      `and would refuse it again: ${why}`,
    retryable: false,
  };
}

/**
 * A copy of a log line's fields, taken when it is logged, that the attempt record can
 * hold: fields KV cannot serialize (a function) or too large for one line are replaced by
 * a note, because a log line must never make a checkpoint commit fail.
 */
function storableFields(
  fields: Record<string, unknown>,
): { fields: Record<string, unknown>; size: number } {
  let note: string;
  try {
    const bytes = v8.serialize(fields);
    if (bytes.byteLength <= MAX_FIELDS_BYTES) {
      return { fields: v8.deserialize(bytes), size: bytes.byteLength };
    }
    note = `(fields not stored: ${bytes.byteLength} bytes, more than ${MAX_FIELDS_BYTES})`;
  } catch (error) {
    note = `(fields not stored: ${toErrorInfo(error).message.slice(0, 200)})`;
  }
  return { fields: { note }, size: 2 * note.length };
}

/** Bytes a task record may take: its error's message and stack dominate. */
function taskBytes(record: TaskRecord, atLeast: number): number {
  const error = record.error;
  return Math.max(atLeast, 512 + 2 * ((error?.message.length ?? 0) + (error?.stack?.length ?? 0)));
}

/** Records an item's new state in the fan-out's counters and retry heap. */
function trackItem(fan: FanState, index: number, record: TaskRecord): void {
  const before = fan.records.get(index);
  fan.records.set(index, record);
  if (before) fan.counts[before.status]--;
  fan.counts[record.status]++;
  if (record.status === "retrying") fan.retries.push({ at: record.nextAt ?? 0, index });
}

/**
 * When the fan-out's earliest retry is due, or Infinity when no item is retrying. Drops
 * stale heap entries on the way: each entry is dropped once, so this is O(log n) amortized.
 */
function nextRetry(fan: FanState): number {
  for (let top = fan.retries.peek(); top; top = fan.retries.peek()) {
    const record = fan.records.get(top.index);
    if (record?.status === "retrying" && (record.nextAt ?? 0) === top.at) return top.at;
    fan.retries.pop();
  }
  return Infinity;
}

/**
 * Where a write goes in a commit that the limits split into batches (committed in order,
 * up to the first one refused): a pending-blob marker set because a write drops a blob
 * goes before that write; a marker deleted because a write refers to its blob, after it;
 * the run record last. Cut short anywhere, the split leaves no blob both unreferenced
 * and unmarked.
 */
function commitOrder(w: Write): number {
  if (w.key[1] === "run") return 2;
  if (w.key[1] !== "blob_pending") return 0;
  return w.value === null ? 1 : -1;
}

/**
 * A step's inputs when the outputs of all its needs are in memory already (the usual case
 * in a driver that ran them), without an await; undefined when one must be read.
 */
function knownInputs(slot: StepSlot): Record<string, unknown> | undefined {
  const needs = slot.needs;
  if (needs.length === 0) return {};
  // `needs` is in `def.needs` order
  const names = slot.inputNames ??= Object.keys(slot.def.needs);
  const inputs: Record<string, unknown> = {};
  for (let i = 0; i < needs.length; i++) {
    const output = needs[i].output;
    if (!output) return undefined;
    inputs[names[i]] = output.value;
  }
  return inputs;
}

/** Whether a write has a place of its own in a commit's order (see `commitOrder`). */
function needsOrder(w: Write): boolean {
  return commitOrder(w) !== 0;
}

function noop(): void {}

function taskKey(step: string, item: number): string {
  return `${step}\u0000${item}`;
}

/** Aborts a task's signal and the wait for its body, with the signal's (first) reason. */
function abortTask(task: Task, reason: unknown): void {
  task.controller.abort(reason);
  task.onAbort?.(task.controller.signal.reason);
}

/**
 * Resolves as `promise` does, or rejects with the task's abort reason once it is aborted
 * (by {@linkcode abortTask}: no listener on the signal, no timer per body).
 */
function untilAborted<T>(promise: Promise<T>, task: Task): Promise<T> {
  const signal = task.controller.signal;
  if (signal.aborted) {
    promise.catch(noop);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    task.onAbort = reject;
    promise.then(resolve, reject);
  });
}

/** `promise`, or a TimeoutError with `message` once `ms` have passed. */
async function withinTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new Error(message);
      error.name = "TimeoutError";
      reject(error);
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether a step has ended for good in this driver (only a resume or rerun reopens it). */
function isEnded(status: StepStatus): boolean {
  return status === "succeeded" || status === "failed" || status === "skipped";
}
