/**
 * The driver executes one claimed run inside a worker: it starts ready steps inline,
 * checkpoints each result in one atomic commit fenced by the run's lease, schedules
 * retries, and ends the run — succeeded, failed (with its alert), waiting for a later
 * retry, or handed back.
 *
 * `RunDriver` owns the run's lifecycle (one state, see `State`) and the order of things;
 * each of its parts does one job: the step graph and which step may act (`graph.ts`,
 * pure), fan-out items (`fan_out.ts`, pure; `items.ts` expands them), running attempts
 * (`attempt.ts`) and what their bodies get (`context.ts`), the run's records
 * (`records.ts`), the checkpoint queue (`checkpoints.ts`), KV refusals (`refusal.ts`)
 * and lease renewal (`lease.ts`).
 *
 * @module
 */
import type { Pipeline } from "../../define/pipeline.ts";
import { resolveRetry, retryDelay } from "../../define/retry.ts";
import { MAX_TIMEOUT_MS } from "../../define/step.ts";
import { toMs } from "../../define/duration.ts";
import { KvUnavailableError, toErrorInfo } from "../../model/errors.ts";
import type { ErrorInfo } from "../../model/errors.ts";
import * as keys from "../../kv/keys.ts";
import { keySize } from "../../kv/keys.ts";
import { decodeValue, encodeMeasured, encodeSmall, inlineBytes } from "../../kv/values.ts";
import type { PauseState, RunRecord, Stored, TaskRecord } from "../../model/records.ts";
import { pausedRecord } from "../../store/pause.ts";
import {
  attemptRecord,
  failAttempt,
  isReady,
  pendingTask,
  skipTask,
  spentAttempts,
  startAttempt,
  succeedTask,
} from "../../model/transitions.ts";
import type { Claim, Store } from "../../store/store.ts";
import type { AlertRecord } from "../../alerts/alert.ts";
import type { StepLimit } from "../step_limit.ts";
import type { Clock } from "../../model/clock.ts";
import { abortAttempt, type Attempt, Attempts, checkOutput, untilAborted } from "./attempt.ts";
import { Checkpoints, type RunEvent, type Write } from "./checkpoints.ts";
import { Artifacts, type ContextHost, stepContext } from "./context.ts";
import { fanOpen, fanOutputs, firstFailedItem, nextItem, takeItem } from "./fan_out.ts";
import {
  blockingNeed,
  isEnded,
  knownInputs,
  readiness,
  StepGraph,
  type StepNode,
} from "./graph.ts";
import { expandItems } from "./items.ts";
import { LeaseRenewal } from "./lease.ts";
import { StepFlow, taskRecord } from "./step_flow.ts";
import { marked } from "../../store/slots.ts";
import { SlotNotifier } from "./slot_notifier.ts";
import { RunRecords } from "./records.ts";
import { earliestWait, type WaitResult, Waits } from "./waits.ts";
import { runInfo } from "./context.ts";
import { moveDue, moveStatus } from "../../kv/indexes.ts";
import { blame, queueHandBack } from "./refusal.ts";
import type { Kv, KvKey } from "../../kv/kv.ts";
import { SessionSpans, startRunTrace, tracingOn, withinAttempt } from "../../platform/tracing.ts";
import { logLine } from "../../platform/log.ts";

export type { RunEvent } from "./checkpoints.ts";

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
  | "released"
  | "paused";

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
  /** Tells this process's tasks waiting for a step limit's slot that one was freed. */
  slots?: SlotNotifier;
  /**
   * Told once a step's end freed a slot of a scope a run limit may share: runs queued
   * under that run limit may start now.
   */
  limitFreed?: (limit: { scope: string; key: string }) => void;
  /** Which alert channels are configured, so a failure queues their delivery. */
  channels: { webhook: boolean; email: boolean };
  /** Called after each change is durable. */
  onEvent?: (event: RunEvent) => void;
  /** Called before each attempt's body; a throw fails the attempt (fault injection). */
  beforeAttempt?: (attempt: AttemptInfo) => void | Promise<void>;
  /** Called once an alert is stored. */
  onAlert?: (alert: AlertRecord) => void;
}

/**
 * Where a driver is with its run:
 * - `driving`: it starts the steps that are ready and checkpoints their results;
 * - `draining`: a graceful stop began: it starts nothing, running steps may still finish;
 * - `ending`: the run's end is decided and queued (succeeded, failed, waiting, interrupted,
 *   handed back): the driver acts no more and waits for that commit to be durable;
 * - `refusing`: KV refused a commit for breaking a limit: it hands the run back;
 * - `lost`: the run is no longer its own (lease taken, cancelled, or KV failed): it left;
 * - `ended`: it left the run, with the outcome `done` resolved with.
 */
type State = "driving" | "draining" | "ending" | "refusing" | "lost" | "ended";

/** Executes one claimed run. */
export class RunDriver {
  readonly #options: DriverOptions;
  readonly #kv: Kv;
  readonly #clock: Clock;
  #state: State = "driving";
  readonly #runId: string;
  readonly #records: RunRecords;
  readonly #graph = new StepGraph();
  readonly #attempts = new Attempts();
  readonly #checkpoints: Checkpoints;
  readonly #lease: LeaseRenewal;
  readonly #contextHost: ContextHost;
  readonly #waits: Waits;
  /** Step limits and throttles: tasks taking a slot or waiting for one. */
  readonly #flow: StepFlow;
  /** This worker's record of the step-limit slots its tasks hold. */
  readonly #slots: SlotNotifier;
  /** With tracing on, from `start`: the spans of this session of the run. */
  #spans: SessionSpans | undefined;
  /**
   * Whether `start` has built the step graph from KV. Before, the driver neither wakes
   * nor reads the inbox: an empty graph would look all succeeded, and every delivery
   * would look as if it were for no step and be dropped.
   */
  #started = false;
  /** Whether the run is being parked (its waits recorded, its lease given up). */
  #parking = false;
  /**
   * How many waits have ended in this driver: a park decided before a wait ended (a
   * child's end taken by `notify` while the park flushed) is decided again.
   */
  #settled = 0;
  /** While `draining`: why — a graceful stop of the worker, or a pause of the run. */
  #drainCause: "stop" | "pause" = "stop";
  #cancelWake: (() => void) | undefined;
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
    this.#options = options;
    const { store, claim } = options;
    this.#kv = store.kv;
    this.#clock = store.clock;
    this.#runId = claim.run.id;
    this.#checkpoints = new Checkpoints(
      { store, record: claim.run, leaseVersion: claim.leaseVersion, owner: claim.lease.owner },
      {
        paused: () => this.pause(),
        acting: () => this.#acting(),
        refusing: () => this.#state === "refusing",
        lost: () => this.#end("lost"),
        failed: this.#onFlushError,
        refuse: (limit, refused, uncommitted) => this.#refuse(limit, refused, uncommitted),
        onEvent: options.onEvent,
      },
    );
    const slots = options.slots ?? new SlotNotifier();
    this.#slots = slots;
    this.#records = new RunRecords(claim.run, {
      checkpoints: this.#checkpoints,
      graph: this.#graph,
      store,
      freed: (scope, key, index) => {
        slots.notify(scope, key, index);
        // runs queued under a run limit of the same scope and key may start now
        if (marked(scope)) options.limitFreed?.({ scope, key });
      },
    });
    this.#flow = this.#stepFlow(slots);
    this.#lease = new LeaseRenewal(
      {
        kv: this.#kv,
        clock: this.#clock,
        runId: claim.run.id,
        lease: claim.lease,
        leaseMs: options.leaseMs,
      },
      {
        acting: () => this.#acting(),
        renew: (lease) => {
          this.#checkpoints.write(keys.lease(this.#runId), lease, 256);
          this.#records.changeRun({ ...this.#records.run, dueAt: lease.deadline });
          this.#checkpoints.flush().catch(this.#onFlushError);
          // a delivery from another process may not have reached this one: look
          if (this.#graph.anyWaiting()) this.notify();
        },
        lost: () => this.#end("lost"),
        paused: () => this.pause(),
      },
    );
    this.#waits = new Waits({
      store,
      clock: this.#clock,
      runId: this.#runId,
      records: this.#records,
      checkpoints: this.#checkpoints,
      runInfo: () => runInfo(this.#records.run),
      traceParent: () => this.#spans?.trace,
      inputs: async (node) => knownInputs(node) ?? await this.#inputs(node),
      acting: () => this.#acting(),
      settle: (node, index, record, result, consumed) =>
        this.#settle(node, index, record, result, consumed),
      wake: () => this.wake(),
    });
    this.#waits.nodes((name) => this.#graph.node(name));
    const artifacts = new Artifacts(
      { kv: this.#kv, runId: claim.run.id, clock: this.#clock, checkpoints: this.#checkpoints },
      () => this.#state === "lost",
    );
    this.#contextHost = {
      run: () => this.#records.run,
      store,
      clock: this.#clock,
      artifacts,
    };
    this.done = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => {});
  }

  /** The run as this driver last recorded it. */
  get run(): RunRecord {
    return this.#records.run;
  }

  /** The run id. */
  get runId(): string {
    return this.#runId;
  }

  /** Loads the run's steps and starts driving it. */
  async start(): Promise<void> {
    const { pipeline, store } = this.#options;
    const stored = await store.getSteps(this.#runId);
    // released or interrupted while loading (a worker stopping at once): it has left
    if (!this.#acting()) return;
    const now = this.#clock.now();
    for (const def of pipeline.steps) {
      const retry = resolveRetry(def.retry, pipeline.defaults.retry, `step '${def.name}'`);
      const timeoutMs = def.timeout === undefined
        ? pipeline.defaults.timeoutMs
        : toMs(def.timeout, `timeout of step '${def.name}'`);
      const key = keys.step(this.#runId, def.name);
      let record = stored.get(def.name) ?? pendingTask();
      if (record.status === "running" && !def.fanOut) {
        record = this.#records.recoverCrash(def.name, -1, record, now);
        this.#checkpoints.write(key, record);
      }
      // Steps come in topological order, so the nodes of its needs exist already.
      this.#graph.add(def, {
        record,
        retry,
        timeoutMs,
        key,
        keyId: JSON.stringify(key),
        keyBytes: keySize(key),
      });
    }
    if (tracingOn) this.#openSpans();
    this.#started = true;
    this.#checkpoints.emit({ type: "run", run: this.#records.run });
    this.#lease.start();
    // claimed because a delivery rang the bell, or holding deliveries from before (a
    // notify that came while the graph was loading was left for this read)
    if (this.#graph.anyWaiting()) await this.#waits.readInbox();
    this.wake();
  }

  /**
   * Opens this session's span under the run's trace. A run created without tracing gets
   * its trace now, stored with the next checkpoint, so its later sessions share it.
   */
  #openSpans(): void {
    const run = this.#records.run;
    let trace = run.trace;
    if (!trace) {
      trace = startRunTrace(run);
      if (!trace) return;
      this.#records.changeRun({ ...run, trace });
    }
    this.#spans = new SessionSpans(run, trace);
  }

  /**
   * Looks at the run's inbox: an event was sent or a child ended (in this process, or a
   * queue hint from another). Its waits take what was delivered.
   */
  notify(): void {
    // before the graph is built, `start` reads the inbox itself
    if (!this.#acting() || !this.#started) return;
    this.#waits.readInbox().then(() => this.wake(), this.#onFlushError);
  }

  /**
   * Interrupts the run (Ctrl-C): running steps are aborted and recorded as interrupted,
   * the run fails with a resumable error and its lease is released.
   */
  async interrupt(reason = "Interrupted"): Promise<void> {
    if (!this.#acting()) return;
    this.#stopActing();
    const now = this.#clock.now();
    const error: ErrorInfo = { name: "Interrupted", message: reason, retryable: true };
    for (const attempt of this.#attempts.running.values()) {
      abortAttempt(attempt, new Error(reason));
      const { node, index } = attempt;
      const record = index < 0 ? node.record : node.fan!.records.get(index)!;
      const failed: TaskRecord = { ...record, status: "failed", endedAt: now, error };
      this.#records.setTask(node, index, failed);
      this.#records.writeAttempt(
        attemptRecord(node.def.name, index, record, "interrupted", failed.error, [], now),
      );
    }
    for (const node of this.#graph.order) {
      if (node.fan && node.record.status === "running") {
        this.#records.setStep(node, { ...node.record, status: "failed", endedAt: now, error });
      }
    }
    this.#abortRunning(reason);
    this.#recordEnd("failed", { step: null, message: reason }, false);
    await this.#checkpoints.flush().catch(() => {});
    if (this.#checkpoints.wroteChunks) {
      await this.#options.store.reclaimBlobs(this.#runId).catch(() => {});
    }
    this.#end("interrupted");
  }

  /**
   * Stops taking new steps, lets running ones finish for up to `graceMs`, then hands the
   * run back as queued so another worker continues it. Steps still running after the
   * grace period are aborted and handed back in the same commit, fenced by the lease like
   * every checkpoint: they run again on the next claim, and their attempt is recorded as
   * interrupted, not as a crash (only a worker that dies leaves a step `running`).
   */
  async release(graceMs: number): Promise<void> {
    if (!this.#drain()) return;
    const deadline = Date.now() + graceMs;
    while (
      (this.#attempts.size > 0 || this.#flow.taking > 0) && Date.now() < deadline &&
      this.#state === "draining"
    ) {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (this.#state !== "draining") return;
    this.#stopActing();
    const now = this.#clock.now();
    for (const { node, index } of this.#attempts.running.values()) {
      const record = index < 0 ? node.record : node.fan!.records.get(index)!;
      this.#records.handBack(node, index, record, now);
    }
    this.#abortRunning("Worker shutting down");
    this.#records.changeRun({ ...this.#records.run, status: "queued", dueAt: now });
    this.#checkpoints.runOp((op) => {
      op.delete(keys.lease(this.#runId));
      this.#options.store.wake(op, this.#runId, 0);
    });
    await this.#checkpoints.flush().catch(() => {});
    this.#end("released");
  }

  /**
   * Pauses the run (its pause is in KV: see `store/pause.ts`): starts nothing more at
   * once, lets the attempts in flight finish and checkpoint (however long they take: a
   * pause is no shutdown), then in one commit, fenced by the lease and checked against
   * the pause, records the run `paused` with no lease and no due entry. An unpause that
   * came meanwhile fails that check: the run is then handed back, queued and due now.
   */
  pause(): void {
    // once: the lease's look and a repinned commit may both tell of the pause, repeatedly
    if (this.#state !== "driving" || !this.#drain()) return;
    this.#drainCause = "pause";
    this.#letGoPaused().catch(this.#onFlushError);
  }

  async #letGoPaused(): Promise<void> {
    while ((this.#attempts.size > 0 || this.#flow.taking > 0) && this.#state === "draining") {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (this.#state !== "draining") return;
    this.#stopActing();
    this.#cancelWake?.();
    await this.#checkpoints.flush();
    const pause = await this.#kv.get<PauseState>(keys.runPause(this.#runId));
    let paused: RunRecord | undefined;
    const outcome = pause.value === null
      ? "conflict"
      : await this.#checkpoints.commitFenced((op) => {
        const from = this.#records.run;
        paused = {
          ...pausedRecord(from, pause.value!),
          waitingFor: earliestWait(this.#graph.order),
        };
        op.check(pause).set(keys.run(this.#runId), paused).delete(keys.lease(this.#runId));
        moveDue(op, from, paused);
        moveStatus(op, from, paused);
      });
    if (outcome === "lost") return;
    if (outcome === "ok") {
      this.#records.adoptRun(paused!);
      this.#end("paused");
      return;
    }
    this.#records.changeRun({ ...this.#records.run, status: "queued", dueAt: this.#clock.now() });
    this.#checkpoints.runOp((op) => {
      op.delete(keys.lease(this.#runId));
      this.#options.store.wake(op, this.#runId, 0);
    });
    await this.#checkpoints.flush();
    this.#end("released");
  }

  // ---- lifecycle ----------------------------------------------------------------------

  /** Whether it still acts on the run: starts, records or hands back steps. */
  #acting(): boolean {
    return this.#state === "driving" || this.#state === "draining";
  }

  /** Starts a graceful stop, unless it acts no more. */
  #drain(): boolean {
    if (!this.#acting()) return false;
    this.#state = "draining";
    return true;
  }

  /** Acts no more: the run's end is queued, or about to be. */
  #stopActing(): void {
    if (this.#acting()) this.#state = "ending";
  }

  /** Hands the run back after a refusal: a refusal of that hand-back is final. */
  #startRefusing(): void {
    // a lost driver stays lost: its hand-back commit fails its lease check anyway
    if (this.#state !== "lost" && this.#state !== "ended") this.#state = "refusing";
  }

  /**
   * Leaves the run with `outcome`: the one way a driver ends. Lost (`cause` says why when
   * KV failed), it drops whatever is queued; succeeded or failed, it first reclaims the
   * blobs its chunks left pending, since no one can refer to them once the lease is gone
   * (those of earlier holders went at the claim; a driver that wrote no chunk has none).
   */
  #end(outcome: Outcome, cause?: { error: unknown }): void {
    if (this.#state === "lost" || this.#state === "ended") return;
    this.#flow.stop();
    if (outcome === "lost") {
      this.#state = "lost";
      if (cause?.error instanceof KvUnavailableError) {
        // the caller reports it: a full disk ends the run's driving here, not in retries
        this.#unavailable = cause.error;
      } else if (cause) {
        logLine(
          "error",
          `kvflow: run ${this.#runId}: could not write to KV: ${toErrorInfo(cause.error).message}`,
          { run: this.#runId },
        );
      }
      // the step-limit slots of its running attempts were freed by whoever took the run
      // (a cancel, a takeover): this process holds them no more
      for (const { record } of this.#attempts.running.values()) {
        if (record.slot) this.#slots.notify(...record.slot);
      }
      this.#abortRunning("Run cancelled or taken over by another worker");
      this.#checkpoints.discard();
    } else if (
      (outcome === "succeeded" || outcome === "failed") && this.#checkpoints.wroteChunks
    ) {
      this.#checkpoints.wroteChunks = false; // reclaimed once, just below
      this.#options.store.reclaimBlobs(this.#runId).catch(() => {})
        .finally(() => this.#end(outcome));
      return;
    } else {
      this.#state = "ended";
    }
    this.#lease.stop();
    this.#attempts.stop();
    this.#cancelWake?.();
    this.#options.stepLimit.forget(this);
    this.#spans?.end(outcome);
    if (this.#unavailable) this.#reject(this.#unavailable);
    else this.#resolve(outcome);
  }

  /** What a flush nobody awaits does when KV failed its writes. */
  readonly #onFlushError = (error: unknown): void => this.#end("lost", { error });

  /** Wakes again at `at` on the engine's clock (one pending wake-up at a time). */
  #wakeAt(at: number): void {
    this.#cancelWake?.();
    // a timer cannot wait longer than MAX_TIMEOUT_MS; waking early only looks again
    const delay = Math.min(at - this.#clock.now(), MAX_TIMEOUT_MS);
    this.#cancelWake = this.#clock.after(delay, this.#woken);
  }

  /** `wake`, made once for the wake-up timer. */
  readonly #woken = (): void => this.wake();

  /** Nothing runs and nothing can start now: the run succeeded, waits, or failed. */
  #idle(now: number): void {
    const graph = this.#graph;
    if (graph.allSucceeded()) {
      this.#recordEnd("succeeded", null, false);
      this.#checkpoints.afterCommit(() => this.#end("succeeded"));
      return;
    }
    const nextAt = graph.earliestRetry(now);
    if (nextAt !== Infinity) {
      // A step that waits for an event or a child parks the run at once: it holds nothing
      // then, and a delivery or its due time brings it back. A sleep (or retry) due within
      // the hold time keeps the run here on a timer, as cheap as it is punctual.
      const soon = nextAt - now <= this.#options.holdMs;
      if (graph.anyWaiting(true) || (!soon && graph.anyWaiting())) {
        this.#park(nextAt);
        return;
      }
      if (soon) {
        this.#wakeAt(nextAt);
        return;
      }
      this.#records.changeRun({ ...this.#records.run, status: "waiting", dueAt: nextAt });
      this.#checkpoints.runOp((op) => {
        op.delete(keys.lease(this.#runId));
        this.#options.store.wake(op, this.#runId, nextAt - this.#clock.now());
      });
      this.#stopActing();
      this.#checkpoints.afterCommit(() => this.#end("waiting"));
      return;
    }
    const failed = graph.firstFailed();
    this.#recordEnd(
      "failed",
      { step: failed?.def.name ?? null, message: failed?.record.error?.message ?? "Run failed" },
      true,
    );
    this.#checkpoints.afterCommit(() => this.#end("failed"));
  }

  /**
   * Parks a run whose steps wait (sleep, event, child) and that has nothing else to do:
   * one commit records it `waiting`, due at `nextAt` (the earliest wait's time or timeout,
   * or a retry), gives up the lease, and checks the run's bell against the inbox the
   * driver read just before — so a delivery that came meanwhile fails the commit and is
   * taken instead. A parked run holds no lease, no slot and no memory.
   */
  #park(nextAt: number): void {
    if (this.#parking) return;
    this.#parking = true;
    const settled = this.#settled;
    const park = async (): Promise<"parked" | "again" | "gone"> => {
      await this.#checkpoints.flush();
      if (await this.#waits.readInbox()) return "again";
      // a wait ended meanwhile (its delivery read by another look at the inbox, and its
      // consumption already durable): the run may act now, so it is not parked
      if (this.#settled !== settled) return "again";
      if (!this.#acting() || this.#state === "draining") return "gone";
      const bell = this.#waits.bellVersion;
      let parked: RunRecord | undefined;
      const outcome = await this.#checkpoints.commitFenced((op) => {
        const from = this.#records.run;
        parked = {
          ...from,
          status: "waiting",
          dueAt: nextAt,
          bellSeen: bell,
          waitingFor: earliestWait(this.#graph.order),
        };
        op.check({ key: keys.bell(this.#runId), versionstamp: bell })
          .set(keys.run(this.#runId), parked)
          .delete(keys.lease(this.#runId));
        moveDue(op, from, parked);
        moveStatus(op, from, parked);
        this.#options.store.wake(op, this.#runId, nextAt - this.#clock.now());
      });
      if (outcome !== "ok") return outcome === "lost" ? "gone" : "again";
      this.#stopActing();
      this.#records.adoptRun(parked!);
      this.#end("waiting");
      return "parked";
    };
    park().then((result) => {
      this.#parking = false;
      if (result === "again") this.wake();
    }, (error) => {
      this.#parking = false;
      this.#onFlushError(error);
    });
  }

  /**
   * Ends a waiting task with its result (from `waits.ts`): the value it outputs, an error
   * that fails it, or a skip by its timeout that is no failure.
   */
  async #settle(
    node: StepNode,
    index: number,
    record: TaskRecord,
    result: WaitResult,
    consumed: readonly KvKey[] = [],
  ): Promise<void> {
    if (!this.#acting()) return;
    const { wait: _, ...base } = record;
    const started = { ...base, attempt: Math.max(base.attempt, 1) };
    let now = this.#clock.now();
    started.startedAt ??= now;
    let done: TaskRecord;
    let size = 1024;
    if ("skip" in result) {
      done = {
        ...started,
        status: "skipped",
        endedAt: now,
        nextAt: null,
        timedOut: true,
        error: { name: "TimedOut", message: "Skipped: the wait timed out", retryable: true },
      };
    } else if (!result.ok) {
      done = { ...started, status: "failed", endedAt: now, nextAt: null, error: result.error };
    } else {
      const value = result.value;
      const stored = encodeSmall(this.#kv, value) ?? await encodeMeasured(
        this.#kv,
        this.#runId,
        value,
        { step: node.def.name, item: index },
        (op) => this.#checkpoints.commitChunks(op),
      );
      if (!this.#acting()) return;
      if ("blob" in stored) {
        this.#checkpoints.write(keys.blobPending(this.#runId, stored.blob.id), null, 256);
      } else {
        size = 1024 + inlineBytes(value);
      }
      now = this.#clock.now();
      done = succeedTask(started, now, stored);
      if (index < 0) node.output = { value };
      else node.fan!.outputs.set(index, value);
    }
    if (this.#spans && record.wait) {
      this.#spans.interval(
        "wait",
        {
          step: node.def.name,
          item: index,
          start: record.wait.since,
          end: now,
          outcome: done.status,
        },
        { "kvflow.wait": record.wait.kind },
        done.status === "failed" ? done.error : null,
      );
    }
    // the delivery that ended the wait leaves the inbox in the commit of its result
    for (const key of consumed) this.#checkpoints.write(key, null, 256);
    this.#records.setTask(node, index, done, size);
    this.#settled++;
    if (index >= 0) this.#checkFanDone(node);
    this.wake();
  }

  /** Queues the run's end (and, for a failure, its alert) and acts no more. */
  #recordEnd(status: "succeeded" | "failed", error: RunRecord["error"], alert: boolean): void {
    const now = this.#clock.now();
    const channels = alert ? this.#options.channels : undefined;
    const stored = this.#records.end(status, error, { now, alert: channels });
    this.#stopActing();
    if (stored) this.#checkpoints.afterCommit(() => this.#options.onAlert?.(stored));
  }

  // ---- scheduling -------------------------------------------------------------------

  /**
   * Looks at the run again and starts the steps that are ready: after a result, once the
   * step limit frees up, when a retry is due. The one way to wake a driver; it ends the
   * run when nothing runs and nothing can start.
   */
  wake(): void {
    // nothing to look at before `start` built the graph (and it wakes the run then)
    if (!this.#started) return;
    const state = this.#state;
    if (state === "draining") {
      // shutting down: start nothing new, but make finished results durable
      this.#checkpoints.flush().catch(this.#onFlushError);
      return;
    }
    if (state !== "driving") return;
    if (this.#parking) {
      this.#checkpoints.flush().catch(this.#onFlushError);
      return;
    }
    const now = this.#clock.now();
    const { pipeline, stepLimit } = this.#options;
    const graph = this.#graph;
    let capacity = pipeline.concurrency - this.#attempts.size;
    let starved = false;
    const flow = this.#flow;
    for (const task of flow.ready()) {
      if (capacity <= 0 || !stepLimit.tryAcquire()) {
        if (capacity > 0) starved = true;
        flow.later(task);
        continue;
      }
      capacity--;
      flow.take(task.node, task.index).catch(this.#onFlushError);
    }
    // Runs once per finished step: plain loops over the open nodes only, no allocation. A
    // step that succeeded, failed or was skipped stays so in this driver and leaves the
    // list, as does a pending step until a need of it ends: a long chain rescans neither
    // its past nor its future at every step.
    do {
      graph.startWalk();
      for (let node = graph.nextOpen(); node !== undefined; node = graph.nextOpen()) {
        const status = node.record.status;
        if (isEnded(status)) {
          node.open = false;
          continue;
        }
        const needs = readiness(node);
        if (needs === "blocked") {
          if (status === "pending") {
            const blocking = blockingNeed(node)!;
            const skipped = skipTask(node.record, now, blocking.def.name);
            // what a wait's timeout skipped is no failure, nor is what depends on it
            if (blocking.record.timedOut) skipped.timedOut = true;
            this.#records.setStep(node, skipped);
            node.open = false;
          }
          continue;
        }
        if (needs === "waiting") {
          // the graph opens it again once a need ends
          if (status === "pending" && !node.fan && !node.expanding) node.open = false;
          continue;
        }
        const fanOut = node.def.fanOut;
        if (!fanOut) {
          if (node.def.wait) {
            // a wait holds no step slot: it starts, or times out, and is parked
            this.#waits.act(node, -1, now);
            continue;
          }
          if (!isReady(node.record, now) || capacity <= 0 || flow.has(node, -1)) continue;
          if (!stepLimit.tryAcquire()) {
            starved = true;
            continue;
          }
          capacity--;
          if (!flow.limited(node)) this.#startAttempt(node, -1, now);
          else if (!flow.startNow(node, -1)) flow.take(node, -1).catch(this.#onFlushError);
          continue;
        }
        const fan = node.fan;
        if (!fan) {
          if (!node.expanding) this.#expand(node);
          continue;
        }
        if (node.def.wait) {
          // one child run per item: started `concurrency` at a time, then parked
          while (fan.running < fanOut.concurrency) {
            const index = nextItem(fan, now);
            if (index < 0) break;
            this.#waits.act(node, index, now);
          }
          continue;
        }
        while (fan.running < fanOut.concurrency && capacity > 0) {
          const index = nextItem(fan, now);
          if (index < 0) break;
          if (!stepLimit.tryAcquire()) {
            starved = true;
            break;
          }
          takeItem(fan, now);
          capacity--;
          if (flow.limited(node)) {
            fan.running++;
            if (!flow.startNow(node, index)) flow.take(node, index).catch(this.#onFlushError);
          } else {
            this.#startAttempt(node, index, now);
          }
        }
      }
    } while (graph.walkAgain());
    const expanding = graph.endWalk();
    if (starved) stepLimit.waitFor(this);
    if (
      this.#attempts.size === 0 && !starved && !expanding && !this.#waits.busy && flow.size === 0
    ) {
      this.#idle(now);
    } else {
      // Other steps are still running: a retry due meanwhile must not wait for them. A
      // wait's time is looked at when the lease is renewed (a third of the lease) and when
      // the run goes idle: no timer holds a process for a wait of days.
      const retryAt = graph.earliestRetry(now, false);
      if (retryAt !== Infinity) this.#wakeAt(retryAt);
    }
    // A step taking its limit slot commits its start with what is queued now (the result
    // that made it ready): the last such take to be ready flushes instead.
    if (flow.preparing === 0) this.#checkpoints.flush().catch(this.#onFlushError);
  }

  async #expand(node: StepNode): Promise<void> {
    node.expanding = true;
    try {
      const expanded = await expandItems(node, {
        inputs: await this.#inputs(node),
        store: this.#options.store,
        clock: this.#clock,
        records: this.#records,
        checkpoints: this.#checkpoints,
        acting: () => this.#acting(),
      });
      // lost or interrupted while expanding: the step is no longer this driver's to record
      if (!expanded || !this.#acting()) return;
      const { fan, now } = expanded;
      node.fan = fan;
      // deliveries to its items waited in the inbox until they were known
      if (fan.counts.waiting > 0) void this.#waits.readInbox().catch(() => {});
      this.#records.setStep(node, {
        ...node.record,
        status: "running",
        items: fan.values.length,
        startedAt: node.record.startedAt ?? now,
        attempt: Math.max(node.record.attempt, 1),
      });
      this.#checkFanDone(node);
    } catch (error) {
      const info = toErrorInfo(error);
      this.#records.setStep(node, {
        ...node.record,
        status: "failed",
        endedAt: this.#clock.now(),
        error: info,
      });
    } finally {
      node.expanding = false;
    }
    this.wake();
  }

  /** The step limits and throttles of the run's steps, wired to this driver. */
  #stepFlow(slots: SlotNotifier): StepFlow {
    return new StepFlow({
      kv: this.#kv,
      clock: this.#clock,
      runId: this.#runId,
      pipeline: this.#options.pipeline.name,
      checkpoints: this.#checkpoints,
      notifier: slots,
      views: this.#options.store.limits,
      steps: this.#options.pipeline.flow.steps,
      acting: () => this.#state === "driving",
      input: async (node, index) =>
        index < 0 ? knownInputs(node) ?? await this.#inputs(node) : node.fan!.values[index],
      record: taskRecord,
      started: (node, index, record) => {
        this.#records.adoptTask(node, index, record);
        if (!this.#acting()) {
          // left the run meanwhile: the next holder's takeover frees the slot
          this.#options.stepLimit.release();
          return;
        }
        void this.#execute(this.#attempts.add(node, index, record));
      },
      failed: (node, index, error) => {
        this.#options.stepLimit.release();
        const record = taskRecord(node, index);
        const now = this.#clock.now();
        this.#records.setTask(node, index, {
          ...record,
          status: "failed",
          endedAt: now,
          nextAt: null,
          error,
        });
        if (index >= 0) {
          node.fan!.running--;
          this.#checkFanDone(node);
        }
        this.wake();
      },
      release: (node, index, dropped) => {
        this.#options.stepLimit.release();
        if (dropped && index >= 0) node.fan!.running--;
      },
      wake: () => this.wake(),
      broke: this.#onFlushError,
    });
  }

  #startAttempt(node: StepNode, index: number, now: number): void {
    const before = index < 0
      ? node.record
      : node.fan!.records.get(index) ?? pendingTask(node.record.generation);
    const record = startAttempt(before, now);
    if (this.#spans && before.status === "retrying" && before.endedAt !== null) {
      this.#spans.interval("retry", {
        step: node.def.name,
        item: index,
        start: before.endedAt,
        end: now,
        outcome: "retried",
      }, { "kvflow.attempt": before.attempt, "kvflow.retry_at": before.nextAt ?? now });
    }
    this.#records.setTask(node, index, record);
    const attempt = this.#attempts.add(node, index, record);
    if (node.fan) node.fan.running++;
    // The body starts only once the commit that records its start is durable.
    this.#checkpoints.afterCommit(() => void this.#execute(attempt));
  }

  async #execute(attempt: Attempt): Promise<void> {
    const { node, index, record } = attempt;
    const name = node.def.name;
    const attempts = this.#attempts;
    // The run may have been interrupted, released or lost while the start marker was being
    // committed: then this attempt is no longer ours to run.
    if (!attempts.owns(attempt)) return;
    if (this.#state === "draining") {
      // The worker began to stop meanwhile: no step starts now. The attempt is handed back
      // as one still running at the end of the grace period is.
      attempts.delete(attempt);
      if (node.fan) node.fan.running--;
      this.#options.stepLimit.release();
      this.#records.handBack(node, index, record, this.#clock.now(), this.#drainCause);
      this.wake();
      return;
    }
    let result: { ok: true; value: unknown; stored: Stored } | {
      ok: false;
      error: ErrorInfo;
    };
    const span = this.#spans?.attempt(name, index, record.attempt);
    try {
      const inputs = knownInputs(node) ?? await this.#inputs(node);
      const ctx = stepContext(this.#contextHost, attempt, inputs);
      attempt.deadline = performance.now() + node.timeoutMs;
      if (this.#acting()) attempts.armTimeout(attempt.deadline);
      const { beforeAttempt } = this.#options;
      if (beforeAttempt) {
        await beforeAttempt({
          runId: this.#runId,
          pipeline: this.#records.run.pipeline,
          step: name,
          item: index,
          attempt: record.attempt,
          idempotencyKey: ctx.idempotencyKey,
        });
      }
      if (!attempts.owns(attempt)) {
        if (span) this.#spans!.endAttempt(span, "abandoned");
        return;
      }
      const run = () =>
        index < 0 ? node.def.run(inputs, ctx) : node.def.run(node.fan!.values[index], ctx);
      const body = span ? withinAttempt(span, run) : run();
      const value = checkOutput(node.def, await untilAborted(body, attempt));
      // small values (the usual case) without an await
      const stored = encodeSmall(this.#kv, value) ?? await encodeMeasured(
        this.#kv,
        this.#runId,
        value,
        { step: name, item: index },
        (op) => this.#checkpoints.commitChunks(op),
      );
      result = { ok: true, value, stored };
    } catch (error) {
      result = { ok: false, error: toErrorInfo(error) };
    } finally {
      // the timeout timer skips it from now on; it stays armed for the next body
      attempt.deadline = Infinity;
    }
    if (!attempts.owns(attempt) || !this.#acting()) {
      // lost, stopped or timed out meanwhile: the result is not this session's to record
      if (span) this.#spans!.endAttempt(span, "abandoned", result.ok ? null : result.error);
    }
    if (!attempts.owns(attempt)) return;
    attempts.delete(attempt);
    this.#options.stepLimit.release();
    if (!this.#acting()) return;
    const now = this.#clock.now();
    this.#records.writeAttempt(attemptRecord(
      name,
      index,
      record,
      result.ok ? "succeeded" : "failed",
      result.ok ? null : result.error,
      attempt.logs,
      now,
    ));
    const done = result.ok ? succeedTask(record, now, result.stored) : failAttempt(
      record,
      now,
      result.error,
      node.retry.attempts,
      retryDelay(node.retry, spentAttempts(record)),
    );
    if (span) this.#spans!.endAttempt(span, done.status, result.ok ? null : result.error, now);
    // an inline output counted at its size: a group commit then holds as many as fit
    const size = result.ok && "inline" in result.stored ? 1024 + inlineBytes(result.value) : 1024;
    if (result.ok && "blob" in result.stored) {
      // the checkpoint refers to the blob: it is no longer pending
      this.#checkpoints.write(keys.blobPending(this.#runId, result.stored.blob.id), null, 256);
    }
    if (index < 0) {
      if (result.ok) node.output = { value: result.value };
      this.#records.setTask(node, index, done, size);
    } else {
      const fan = node.fan!;
      fan.running--;
      if (result.ok) fan.outputs.set(index, result.value);
      this.#records.setTask(node, index, done, size);
      this.#checkFanDone(node);
    }
    this.wake();
  }

  /** Ends a fan-out step whose items all succeeded, or that has failed items and no more to run. */
  #checkFanDone(node: StepNode): void {
    const fan = node.fan!;
    const total = fan.values.length;
    if (fan.counts.succeeded === total) {
      node.output = { value: fanOutputs(fan) };
      this.#records.setStep(node, succeedTask(node.record, this.#clock.now()));
      return;
    }
    if (!fanOpen(fan) && fan.counts.failed > 0) {
      const [item, failed] = firstFailedItem(fan)!;
      this.#records.setStep(node, {
        ...node.record,
        status: "failed",
        endedAt: this.#clock.now(),
        error: {
          ...failed.error!,
          message:
            `${fan.counts.failed} of ${total} items failed; item ${item}: ${failed.error?.message}`,
        },
      });
    }
  }

  async #inputs(node: StepNode): Promise<Record<string, unknown>> {
    const inputs: Record<string, unknown> = {};
    for (const [input, need] of Object.entries(node.def.needs)) {
      inputs[input] = await this.#output(this.#graph.node(need.name)!);
    }
    return inputs;
  }

  async #output(node: StepNode): Promise<unknown> {
    if (node.output) return node.output.value;
    const value = node.record.output
      ? await decodeValue(this.#kv, this.#runId, node.record.output)
      : await this.#options.store.getOutput(this.#runId, node.def.name);
    node.output = { value };
    return value;
  }

  /** Aborts every running body; their late results are ignored and their steps' count in the limit freed. */
  #abortRunning(reason: string): void {
    const stepLimit = this.#options.stepLimit;
    for (let n = this.#attempts.abortAll(reason); n > 0; n--) stepLimit.release();
  }

  /**
   * Handles a checkpoint commit that KV refused for breaking one of its limits (see
   * {@link ./refusal.ts}): the tasks to blame fail at once, not retryably; attempts of
   * this driver still running are handed back as on a graceful stop; and the run goes
   * back to queued, so the next claim carries on from what KV holds. Nothing of the
   * refused commit or of those after it is kept. The hand-back is fenced by the lease like
   * every commit.
   *
   * @param limit KV's words for the limit
   * @param refused the writes of the refused commit
   * @param uncommitted those and the writes of the commits after it
   * @throws {Error} when no write of the refused commit records a task
   */
  async #refuse(limit: string, refused: Write[], uncommitted: Write[]): Promise<void> {
    const found = blame(refused, uncommitted);
    if (!found) throw new Error(`KV refused a commit of run ${this.#runId}: ${limit}`);
    this.#startRefusing();
    this.#abortRunning(`A checkpoint of run ${this.#runId} broke a KV limit`);
    this.#checkpoints.discard();
    await queueHandBack(
      {
        store: this.#options.store,
        graph: this.#graph,
        records: this.#records,
        checkpoints: this.#checkpoints,
      },
      { limit, blame: found, now: this.#clock.now() },
    );
    await this.#checkpoints.commit();
    this.#end("released");
  }
}
