/**
 * A test kit for pipelines: run one against in-memory KV with a clock the test controls,
 * inject failures into named steps or items, and inspect the run that results — its
 * steps, attempts, outputs, artifacts and alerts. A retry-then-resume story with
 * five-minute backoffs runs in milliseconds.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pipeline, step } from "../mod.ts";
 * import { testPipeline } from "./mod.ts";
 *
 * const send = step("send", { retry: { attempts: 3, delay: "5m" } }, () => "sent");
 * const p = pipeline("mail", { steps: [send] });
 *
 * await using t = await testPipeline(p);
 * t.fail("send", { times: 3 }); // the mail server is down for three attempts
 * const failed = await t.run();
 * assert.equal(failed.status, "failed");
 * assert.equal(failed.attempts("send").length, 3);
 * assert.equal(failed.alerts.length, 1);
 *
 * const resumed = await t.resume(failed.id); // the server is back
 * assert.equal(resumed.status, "succeeded");
 * assert.equal(await resumed.output("send"), "sent");
 * ```
 *
 * @module
 */
import type { Trigger } from "../define/context.ts";
import { type Pipeline, withChildren } from "../define/pipeline.ts";
import { type Engine, openEngine } from "../engine/engine.ts";
import type { Clock } from "../model/clock.ts";
import type { AttemptInfo } from "../engine/driver/driver.ts";
import { NonRetryableError } from "../model/errors.ts";
import type { AlertRecord } from "../alerts/alert.ts";
import { runAlerts } from "../alerts/alert.ts";
import type { ArtifactMeta } from "../model/artifacts.ts";
import {
  type AttemptRecord,
  type RunRecord,
  type RunStatus,
  type TaskRecord,
  TERMINAL,
} from "../model/records.ts";
import type { SendResult } from "../store/events.ts";
import { type Duration, toMs } from "../define/duration.ts";

/**
 * A clock that moves only when told to, or — in auto mode, the default — jumps straight
 * to the next wake-up the engine waits for, so waiting for a retry takes no time.
 */
export class TestClock implements Clock {
  #now: number;
  readonly #auto: boolean;
  readonly #timers = new Map<number, { at: number; fn: () => void }>();
  #seq = 0;
  #pending: ReturnType<typeof setTimeout> | undefined;

  /**
   * Creates a clock.
   *
   * @param start the time it starts at (ms, ISO string or Date); default now
   * @param options `auto: false` to move it only with {@linkcode TestClock.advance}
   */
  constructor(start: number | string | Date = Date.now(), options: { auto?: boolean } = {}) {
    this.#now = typeof start === "number" ? start : new Date(start).getTime();
    if (!Number.isFinite(this.#now)) throw new TypeError(`Invalid start time: ${String(start)}`);
    this.#auto = options.auto ?? true;
  }

  /** The clock's time, ms since the epoch. */
  now(): number {
    return this.#now;
  }

  /** Calls `fn` when the clock reaches now + `ms`. */
  after(ms: number, fn: () => void): () => void {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn });
    if (this.#auto) this.#schedule();
    return () => this.#timers.delete(id);
  }

  /** Moves the clock forward by `ms`, firing every wake-up due on the way, in order. */
  advance(ms: number): void {
    const target = this.#now + Math.max(0, ms);
    for (let next = this.#earliest(); next && next[1].at <= target; next = this.#earliest()) {
      this.#fire(next[0]);
    }
    this.#now = target;
  }

  /** Moves the clock forward to a time (ms, ISO string or Date). */
  set(time: number | string | Date): void {
    const at = typeof time === "number" ? time : new Date(time).getTime();
    this.advance(at - this.#now);
  }

  /** Cancels every pending wake-up. */
  dispose(): void {
    clearTimeout(this.#pending);
    this.#pending = undefined;
    this.#timers.clear();
  }

  #schedule(): void {
    if (this.#pending !== undefined) return;
    // One macrotask later, so work already under way gets its turn before time jumps.
    this.#pending = setTimeout(() => {
      this.#pending = undefined;
      const next = this.#earliest();
      if (!next) return;
      this.#fire(next[0]);
      if (this.#timers.size > 0) this.#schedule();
    }, 0);
  }

  #earliest(): [number, { at: number; fn: () => void }] | undefined {
    let best: [number, { at: number; fn: () => void }] | undefined;
    for (const entry of this.#timers) if (!best || entry[1].at < best[1].at) best = entry;
    return best;
  }

  #fire(id: number): void {
    const timer = this.#timers.get(id)!;
    this.#timers.delete(id);
    this.#now = Math.max(this.#now, timer.at);
    timer.fn();
  }
}

/** What {@linkcode TestHarness.fail} injects. */
export interface FailOptions {
  /** Only this fan-out item (by index); default every item, or the step itself. */
  item?: number;
  /** How many attempts fail before the step (or item) is let through. Default: all. */
  times?: number;
  /** The error thrown; default `Error("Injected failure of '<step>'")`. */
  error?: Error | string;
  /** Throw a `NonRetryableError`, failing the step at once. */
  nonRetryable?: boolean;
}

/** A run as it stood when a harness call returned. */
export interface TestRun {
  /** The run id. */
  readonly id: string;
  /** Its status. */
  readonly status: RunStatus;
  /** The run record. */
  readonly record: RunRecord;
  /** Step records by name. */
  readonly steps: ReadonlyMap<string, TaskRecord>;
  /** Every attempt, or the attempts of one step. */
  attempts(step?: string): AttemptRecord[];
  /** Alerts stored with the run. */
  readonly alerts: readonly AlertRecord[];
  /** Artifacts stored by the run. */
  readonly artifacts: readonly ArtifactMeta[];
  /** A succeeded step's output, read back from KV. */
  output(step: string): Promise<unknown>;
  /** An artifact's bytes. */
  artifact(name: string): Promise<Uint8Array>;
  /** The item records of a fan-out step, by index. */
  items(step: string): Promise<Map<number, TaskRecord>>;
}

/** Options of {@linkcode testPipeline}. */
export interface TestPipelineOptions {
  /** The clock, or its start time. Default: a {@linkcode TestClock} starting now. */
  clock?: TestClock | number | string | Date;
  /** Other pipelines the engine should know. */
  // deno-lint-ignore no-explicit-any
  pipelines?: Pipeline<any>[];
}

/** Options of {@linkcode TestHarness.run}. */
export interface TestRunOptions {
  /** Params. */
  params?: Record<string, unknown>;
  /** Logical date, `YYYY-MM-DD`. */
  date?: string;
  /** Trigger recorded. Default `cli`. */
  trigger?: Trigger;
}

/** An injected failure, as {@linkcode TestHarness.fail} records it. */
export interface InjectedFailure {
  /** The step. */
  step: string;
  /** The item, or every item. */
  item?: number;
  /** Attempts still to fail. */
  left: number;
  /** What to throw. */
  error?: Error | string;
  /** Whether to throw a `NonRetryableError`. */
  nonRetryable?: boolean;
}

/** Runs a pipeline in memory under test control. Close it (or `await using` it). */
export class TestHarness {
  /** The engine, for anything the harness does not wrap. */
  readonly engine: Engine;
  /** The clock the engine runs on. */
  readonly clock: TestClock;
  readonly #pipeline: Pipeline<unknown>;
  readonly #rules: InjectedFailure[];

  /**
   * Creates a harness; use {@linkcode testPipeline}.
   *
   * @param engine the engine
   * @param clock its clock
   * @param pipeline the pipeline under test
   * @param rules the shared list of injected failures
   */
  constructor(
    engine: Engine,
    clock: TestClock,
    pipeline: Pipeline<unknown>,
    rules: InjectedFailure[],
  ) {
    this.engine = engine;
    this.clock = clock;
    this.#pipeline = pipeline;
    this.#rules = rules;
  }

  /**
   * Makes attempts of a step (or of one fan-out item) fail, `times` times or always.
   *
   * @throws {TypeError} on a step the pipeline does not have
   */
  fail(step: string, options: FailOptions = {}): this {
    if (!this.#pipeline.byName.has(step)) {
      throw new TypeError(
        `Cannot inject a failure: pipeline '${this.#pipeline.name}' has no step '${step}'`,
      );
    }
    this.#rules.push({
      step,
      item: options.item,
      left: options.times ?? Infinity,
      error: options.error,
      nonRetryable: options.nonRetryable,
    });
    return this;
  }

  /** Removes every injected failure (the fix). */
  heal(): this {
    this.#rules.length = 0;
    return this;
  }

  /** Creates a run and drives it until it ends. */
  async run(options: TestRunOptions = {}): Promise<TestRun> {
    const created = await this.engine.store.createRun(this.#pipeline, {
      params: options.params,
      logicalDate: options.date ?? new Date(this.clock.now()).toISOString().slice(0, 10),
      trigger: options.trigger,
    });
    return await this.#finish(created.id);
  }

  /**
   * Starts a run and drives it until it ends or parks on a wait (a sleep, an event, a
   * child run): then `send` events to it, `advance` the clock, and `finish` it.
   *
   * @example Approve a run that waits for an approval
   * ```ts ignore
   * const started = await t.start({ date: "2026-11-01" });
   * assertEquals(started.record.waitingFor?.kind, "event");
   * await t.send("nightly.approved", { date: "2026-11-01" });
   * const run = await t.finish(started.id);
   * ```
   */
  async start(options: TestRunOptions = {}): Promise<TestRun> {
    const created = await this.engine.store.createRun(this.#pipeline, {
      params: options.params,
      logicalDate: options.date ?? new Date(this.clock.now()).toISOString().slice(0, 10),
      trigger: options.trigger,
    });
    return await this.#drive(created.id);
  }

  /**
   * Sends an event, as `engine.send` does, and lets the runs it wakes or starts go as far
   * as they can without the clock moving.
   *
   * @returns what the send did
   */
  async send(name: string, data?: unknown, options: { id?: string } = {}): Promise<SendResult> {
    const result = await this.engine.send(name, data, options);
    await this.#runDue();
    return result;
  }

  /**
   * Moves the clock forward and drives every run due by then (sleeps that end, waits
   * that time out) until it ends or parks again.
   */
  async advance(by: Duration): Promise<void> {
    this.clock.advance(toMs(by, "advance"));
    await this.#runDue();
  }

  /** Follows a started run to its end, moving the clock past its sleeps and timeouts. */
  async finish(runId: string): Promise<TestRun> {
    return await this.#finish(runId);
  }

  /** Drives a run (and what it starts) until it ends or parks on a wait. */
  async #drive(runId: string): Promise<TestRun> {
    const store = this.engine.store;
    for (let round = 0; round < 100_000; round++) {
      await this.#runDue();
      const run = await store.requireRun(runId);
      const parked = run.status === "waiting" && Boolean(run.waitingFor);
      if (TERMINAL.has(run.status) || parked || run.dueAt === null) break;
      // a retry due later: the clock moves to it
      this.clock.set(Math.max(this.clock.now(), run.dueAt));
    }
    return await this.inspect(runId);
  }

  /** Runs every run due now (children, started runs, woken waits) until none is. */
  async #runDue(): Promise<void> {
    const { store, worker } = this.engine;
    for (let round = 0; round < 100_000; round++) {
      const due = await store.dueRuns(this.clock.now(), 1000);
      if (due.length === 0) return;
      await Promise.all([...new Set(due)].map((id) => worker.execute(id)));
    }
  }

  /** Resumes a failed or cancelled run and drives it until it ends. */
  async resume(runId: string, options: { force?: boolean } = {}): Promise<TestRun> {
    const run = await this.engine.store.requireRun(runId);
    await this.engine.store.resume(run, this.#pipeline, options.force);
    return await this.#finish(runId);
  }

  /** Reruns a finished run from a step and drives it until it ends. */
  async rerun(runId: string, from: string): Promise<TestRun> {
    const run = await this.engine.store.requireRun(runId);
    await this.engine.store.rerun(run, this.#pipeline, from);
    return await this.#finish(runId);
  }

  /** The run as it stands now. */
  async inspect(runId: string): Promise<TestRun> {
    const store = this.engine.store;
    const record = await store.requireRun(runId);
    const [steps, attempts, alerts, artifacts] = await Promise.all([
      store.getSteps(runId),
      store.getAttempts(runId),
      runAlerts(this.engine.kv, runId),
      store.getArtifacts(runId),
    ]);
    return {
      id: runId,
      status: record.status,
      record,
      steps,
      attempts: (step) => step === undefined ? attempts : attempts.filter((a) => a.step === step),
      alerts,
      artifacts,
      output: (step) => store.getOutput(runId, step),
      artifact: async (name) => (await store.readArtifact(runId, name)).bytes,
      items: (step) => store.getItems(runId, step),
    };
  }

  /** Closes the engine and the clock. */
  async close(): Promise<void> {
    await this.engine.close();
    this.clock.dispose();
  }

  /** Closes the harness. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Drives a run to its end: runs what is due, then moves the clock to the next due time
   * (a retry, a sleep's end, a timeout) and again, until the run has ended or nothing is
   * due any more.
   */
  async #finish(runId: string): Promise<TestRun> {
    const store = this.engine.store;
    for (let round = 0; round < 100_000; round++) {
      await this.#runDue();
      const run = await store.requireRun(runId);
      if (TERMINAL.has(run.status)) break;
      const next = await store.nextDue();
      if (next === null) break;
      this.clock.set(Math.max(this.clock.now(), next));
    }
    return await this.inspect(runId);
  }
}

/**
 * Opens a harness for a pipeline: in-memory KV, a test clock, no queues, alerts kept in
 * KV (not printed).
 *
 * @param pipeline the pipeline under test
 * @param options the clock and other pipelines
 * @returns the harness; close it when done
 */
export async function testPipeline(
  // deno-lint-ignore no-explicit-any
  pipeline: Pipeline<any>,
  options: TestPipelineOptions = {},
): Promise<TestHarness> {
  const clock = options.clock instanceof TestClock
    ? options.clock
    : new TestClock(options.clock ?? Date.now());
  const rules: InjectedFailure[] = [];
  const engine = await openEngine({
    path: ":memory:",
    queues: false,
    clock,
    pipelines: withChildren([pipeline, ...(options.pipelines ?? [])]),
    onAlert: () => {},
    beforeAttempt: (attempt) => inject(rules, attempt),
  });
  return new TestHarness(engine, clock, pipeline as Pipeline<unknown>, rules);
}

function inject(rules: InjectedFailure[], attempt: AttemptInfo): void {
  const rule = rules.find((r) =>
    r.step === attempt.step && r.left > 0 && (r.item === undefined || r.item === attempt.item)
  );
  if (!rule) return;
  rule.left--;
  const message = typeof rule.error === "string" ? rule.error : rule.error?.message ??
    `Injected failure of '${attempt.step}'${
      attempt.item >= 0 ? ` item ${attempt.item}` : ""
    } (attempt ${attempt.attempt})`;
  if (rule.nonRetryable) throw new NonRetryableError(message);
  if (rule.error instanceof Error) throw rule.error;
  throw new Error(message);
}
