/**
 * The engine: one KV database, its store, a worker, and the pipelines it knows. This is
 * what the CLI, the HTTP service and tests open.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { UsageError } from "../model/errors.ts";
import { openKv } from "../kv/open.ts";
import { type CreateRunInput, type ListRunsOptions, type RunPage, Store } from "../store/store.ts";
import { type PauseState, type RunRecord, TERMINAL } from "../model/records.ts";
import {
  pausedPipelines,
  pausePipeline,
  pauseRun,
  unpausePipeline,
  unpauseRun,
} from "../store/pause.ts";
import { isRunId } from "../model/run_id.ts";
import { Worker, type WorkerOptions } from "./worker.ts";
import type { RunEvent } from "./driver/driver.ts";
import { type Clock, sleep } from "../model/clock.ts";
import { backfillTicks, Scheduler, tickDate, tickRunId } from "./scheduler.ts";
import { DeadlineWatch } from "./deadlines.ts";
import { type AlertRecord, alertText } from "../alerts/alert.ts";
import { migrate, SCHEMA_VERSION } from "../kv/migrations.ts";
import type { Kv, KvKey } from "../kv/kv.ts";
import {
  type EventPage,
  type EventRegistry,
  finishOutbox,
  getEvent,
  HeadSightings,
  listEvents,
  pruneEvents,
  pruneWaitHeads,
  sendEvent,
  type SendResult,
} from "../store/events.ts";
import {
  DEFAULT_EVENT_RETENTION_MS,
  type EventEffect,
  type EventRecord,
  type EventSource,
} from "../model/events.ts";
import { type Duration, toMs } from "../define/duration.ts";
import { type PruneOptions, type PruneReport, pruneRuns } from "../store/prune.ts";
import { type FlowPruneCursor, pruneFlowKeys } from "../store/flow_prune.ts";
import { logLine } from "../platform/log.ts";

/** What {@linkcode Engine.subscribe} listeners receive. */
export type EngineEvent = RunEvent | { type: "alert"; alert: AlertRecord };

/** Runs a worker's sweep prunes at most, now and then (every 60th sweep). */
const BACKGROUND_PRUNE_RUNS = 50;

/** Options of {@linkcode openEngine}. */
export interface EngineOptions extends Omit<WorkerOptions, "pipelines" | "watchFile"> {
  /** The pipelines this engine can run. */
  // deno-lint-ignore no-explicit-any
  pipelines: Iterable<Pipeline<any>>;
  /** KV location: a file path, `:memory:` or a URL. Default: `KVFLOW_KV_PATH` or `./data/kvflow.kv`. */
  path?: string;
  /** An already open KV to use instead of `path`; the engine does not close it, unless `closeKv`. */
  kv?: Kv;
  /** Whether closing the engine closes the `kv` it was given. Default false. */
  closeKv?: boolean;
  /** Whether the KV has queues. Default: detected from the location. */
  queues?: boolean;
  /**
   * Whether a serving engine on a local KV file watches the file, so that another
   * process's commit (a new run, a resume, an event, a freed limit slot) is seen within
   * milliseconds, not at the next sweep. Default true; `KVFLOW_WATCH=off` turns it off
   * for the CLI.
   */
  watch?: boolean;
  /** The clock that decides when work is due. Default: wall time. */
  clock?: Clock;
  /**
   * Whether checkpoints and claims of different runs share KV commits (group commit).
   * Default true; `KVFLOW_GROUP_COMMIT=off` turns it off for the CLI and Deploy.
   */
  groupCommit?: boolean;
  /**
   * How long sent events are kept (a wait that starts later finds them within it).
   * Default 30 days.
   */
  eventRetention?: Duration;
}

/** What {@linkcode Engine.pause} or {@linkcode Engine.unpause} changed. */
export type PauseOutcome =
  | {
    /** A run. */
    kind: "run";
    /** The run as it is now. */
    run: RunRecord;
  }
  | {
    /** A pipeline. */
    kind: "pipeline";
    /** Its name. */
    pipeline: string;
    /** The pause in effect, or null once unpaused. */
    pause: PauseState | null;
    /** How many held runs the unpause made due. */
    runs: number;
  };

/** An open engine. Close it when done. */
export class Engine {
  /** The KV database. */
  readonly kv: Kv;
  /**
   * Reads and changes runs. For the CLI, the HTTP service and tests; not public API.
   *
   * @internal
   */
  readonly store: Store;
  /**
   * Claims and drives runs ({@linkcode Engine.start} starts it). For the CLI, the HTTP
   * service and tests; not public API.
   *
   * @internal
   */
  readonly worker: Worker;
  /**
   * Creates the runs of due schedule ticks. For the CLI, the HTTP service and tests; not
   * public API.
   *
   * @internal
   */
  readonly scheduler: Scheduler;
  /** The pipelines, by name. */
  readonly pipelines: Map<string, Pipeline<unknown>>;
  readonly #ownsKv: boolean;
  readonly #listeners = new Set<(event: EngineEvent) => void>();
  #registry: EventRegistry;
  readonly #eventRetentionMs: number;
  #sweeps = 0;
  #closed = false;

  /**
   * Creates it.
   *
   * @param kv the database
   * @param queues whether it has queues
   * @param options pipelines and worker options
   * @param ownsKv whether closing the engine closes the database
   */
  constructor(
    kv: Kv,
    queues: boolean,
    options: EngineOptions & Pick<WorkerOptions, "watchFile">,
    ownsKv: boolean,
  ) {
    this.kv = kv;
    this.#ownsKv = ownsKv;
    this.store = new Store(kv, {
      queues,
      clock: options.clock,
      groupCommit: options.groupCommit,
    });
    this.pipelines = new Map();
    for (const p of options.pipelines) {
      if (this.pipelines.has(p.name)) {
        throw new TypeError(`Two pipelines are named '${p.name}'`);
      }
      this.pipelines.set(p.name, p as Pipeline<unknown>);
    }
    checkChildren(this.pipelines);
    this.#registry = eventRegistry(this.pipelines);
    this.#eventRetentionMs = options.eventRetention === undefined
      ? DEFAULT_EVENT_RETENTION_MS
      : toMs(options.eventRetention, "eventRetention");
    this.scheduler = new Scheduler(this.store, this.pipelines);
    const deadlines = new DeadlineWatch(this.store, this.pipelines, {
      webhook: Boolean(options.alertWebhook),
      email: Boolean(options.alertEmail),
    });
    this.worker = new Worker(this.store, {
      ...options,
      pipelines: this.pipelines,
      beforeSweep: async () => {
        // before the ticks: a tick nothing ran for is seen without the run catch-up creates
        for (const alert of await deadlines.check()) this.worker.alert(alert);
        for (const d of await this.scheduler.tick()) {
          if (d.outcome === "created") this.worker.wake(d.runId!);
        }
        // deliveries a sender died before making; then, now and then, events and runs past
        // retention, a few runs at a time so that pruning never holds up due work for long
        await finishOutbox(this.store);
        if (this.#sweeps++ % 60 === 0) await this.prune({ maxRuns: BACKGROUND_PRUNE_RUNS });
      },
      onEvent: (event) => {
        options.onEvent?.(event);
        for (const listener of this.#listeners) listener(event);
      },
      onAlert: (alert) => {
        (options.onAlert ?? ((a: AlertRecord) => logLine("error", alertText(a), { run: a.runId })))(
          alert,
        );
        for (const listener of this.#listeners) listener({ type: "alert", alert });
      },
    });
  }

  /**
   * Works runs in this process until {@linkcode Engine.close}: claims due runs and drives
   * them, takes over runs whose worker died, and sweeps the due-index every `pollMs`.
   * Without it, the engine only creates and reads runs (and {@linkcode Engine.runToEnd}
   * drives one run to its end).
   */
  start(): void {
    this.worker.start();
  }

  /**
   * Adds pipelines to an open engine, as if it had been opened with them: from the next
   * sweep on, their schedules and deadlines are looked at and their event triggers count.
   * A worker that starts driving runs before importing its whole registry uses it.
   *
   * @throws {TypeError} when another pipeline has the name of one, or a step invokes a
   * pipeline the engine does not know
   */
  register(pipelines: Iterable<Pipeline<unknown>>): void {
    for (const p of pipelines) {
      const known = this.pipelines.get(p.name);
      if (known === p) continue;
      if (known) throw new TypeError(`Two pipelines are named '${p.name}'`);
      this.pipelines.set(p.name, p);
    }
    checkChildren(this.pipelines);
    this.#registry = eventRegistry(this.pipelines);
  }

  /** A run, or null when there is none with that id (in any process's runs). */
  async getRun(runId: string): Promise<RunRecord | null> {
    return await this.store.getRun(runId);
  }

  /**
   * Runs newest first, optionally of one pipeline and one status, a page at a time.
   *
   * @throws {UsageError} on a limit out of range or a bad cursor
   */
  async listRuns(options: ListRunsOptions = {}): Promise<RunPage> {
    return await this.store.listRuns(options);
  }

  /**
   * The checkpointed output of a step of a run (for a fan-out step, the list of its items'
   * outputs), read back from KV however large it was.
   *
   * @throws {UsageError} when the run does not exist or the step has not succeeded
   */
  async output(runId: string, step: string): Promise<unknown> {
    await this.store.requireRun(runId);
    return await this.store.getOutput(runId, step);
  }

  /**
   * Listens to the changes this process makes durable: run and step status changes, and
   * alerts. Other processes' changes are not seen here; read the store for those.
   *
   * @returns a function that stops listening
   */
  subscribe(listener: (event: EngineEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * A pipeline by name.
   *
   * @throws {UsageError} naming the known pipelines when there is none by that name
   */
  pipeline(name: string): Pipeline<unknown> {
    const found = this.pipelines.get(name);
    if (!found) {
      throw new UsageError(
        `Unknown pipeline '${name}': known pipelines are ${
          [...this.pipelines.keys()].join(", ") || "(none)"
        }`,
        "not_found",
      );
    }
    return found;
  }

  /**
   * Creates a run and hands it to this engine's worker at once. `input.priority` (0 to 10)
   * overrides the pipeline's; a debounce applies only to HTTP and event triggers.
   */
  async trigger(pipeline: string, input: CreateRunInput = {}): Promise<RunRecord> {
    const run = await this.store.createRun(this.pipeline(pipeline), input);
    this.worker.wake(run.id);
    return run;
  }

  /**
   * Pauses a pipeline (by name) or a run (by id). A paused pipeline accepts triggers but
   * starts none of its new runs, and its schedule waits; a paused run finishes the
   * attempts in flight and starts nothing more. Pausing a paused one changes nothing.
   *
   * @example Pause the nightly pipeline for a maintenance window
   * ```ts ignore
   * await engine.pause("nightly", "accounting API maintenance");
   * ```
   *
   * @param target a pipeline's name or a run's id
   * @param reason why, shown with the paused runs and pipeline
   * @returns what was paused: the run (its status is `paused` once its holder let go), or
   * the pipeline and its pause
   * @throws {UsageError} `not_found` for an unknown pipeline or run, `conflict` for a run
   * that ended
   */
  async pause(target: string, reason = "Paused by request"): Promise<PauseOutcome> {
    if (this.pipelines.has(target)) {
      const pause = await pausePipeline(this.store, target, reason);
      return { kind: "pipeline", pipeline: target, pause, runs: 0 };
    }
    const run = await this.#onRun(target, (id) => pauseRun(this.store, id, reason));
    this.worker.pause(run.id);
    return { kind: "run", run };
  }

  /**
   * Unpauses a pipeline (by name) or a run (by id): the runs the pause held are due now
   * and the schedule catches up by its catch-up policy. Unpausing what is not paused
   * changes nothing.
   *
   * @param target a pipeline's name or a run's id
   * @returns what was unpaused: the run, or the pipeline and how many runs became due
   * @throws {UsageError} `not_found` for an unknown pipeline or run, `conflict` for a run
   * that ended
   */
  async unpause(target: string): Promise<PauseOutcome> {
    if (this.pipelines.has(target)) {
      // each run made due carries a queue hint; the sweep finds it anyway
      const runs = await unpausePipeline(this.store, target);
      return { kind: "pipeline", pipeline: target, pause: null, runs };
    }
    const run = await this.#onRun(target, (id) => unpauseRun(this.store, id));
    if (run.status === "queued") this.worker.wake(run.id);
    return { kind: "run", run };
  }

  /** The pauses of the pipelines this engine knows, by name. */
  async pausedPipelines(): Promise<Map<string, PauseState>> {
    const all = await pausedPipelines(this.store.kv);
    for (const name of all.keys()) if (!this.pipelines.has(name)) all.delete(name);
    return all;
  }

  /** `change` of the run `target`, which names no known pipeline. */
  async #onRun(target: string, change: (runId: string) => Promise<RunRecord>): Promise<RunRecord> {
    const unknown = () =>
      new UsageError(
        `Unknown pipeline or run '${target}': known pipelines are ${
          [...this.pipelines.keys()].join(", ") || "(none)"
        }`,
        "not_found",
      );
    if (!isRunId(target)) throw unknown();
    try {
      return await change(target);
    } catch (error) {
      if (error instanceof UsageError && error.code === "not_found") throw unknown();
      throw error;
    }
  }

  /**
   * Sends an event: stores it, ends the waits it matches (their runs continue at once in
   * this process, or in whichever worker claims them) and starts the runs of the
   * pipelines it triggers. With an `id`, a repeat stores nothing and wakes nobody.
   *
   * @example Approve the nightly run of 2026-11-01
   * ```ts ignore
   * await engine.send("nightly.approved", { date: "2026-11-01" }, { id: "approval-2026-11-01" });
   * ```
   *
   * @param name the event's name
   * @param data its payload: JSON data, at most 32 KiB
   * @param options an `id` that makes the send idempotent
   * @returns the stored event, the waits it ended and the runs it started
   * @throws {UsageError} on a bad name, id or payload, or a payload a triggered pipeline
   * refuses (nothing is stored then)
   */
  async send(
    name: string,
    data?: unknown,
    options: { id?: string; source?: EventSource } = {},
  ): Promise<SendResult> {
    const result = await sendEvent(this.store, this.#registry, {
      name,
      data,
      id: options.id,
      source: options.source,
    });
    // a serving worker here continues them at once; else whichever worker claims them
    for (const w of result.woke) this.worker.notify(w.runId);
    if (this.worker.serving) { for (const run of result.started) this.worker.wake(run.id); }
    return result;
  }

  /** Lists stored events, newest first, with what each did to which runs. */
  async listEvents(
    options: { name?: string; limit?: number; cursor?: string } = {},
  ): Promise<EventPage> {
    return await listEvents(this.store, options);
  }

  /** One stored event with what it did, or null. */
  async getEvent(id: string): Promise<(EventRecord & { effects: EventEffect[] }) | null> {
    return await getEvent(this.store, id);
  }

  /** Where the last background prune of flow-control keys and correlation heads stopped. */
  readonly #flowCursor: FlowPruneCursor & { heads?: KvKey } = {};
  /** Old wait heads this process saw, and when: deleted once seen unchanged for an hour. */
  readonly #headSightings = new HeadSightings();

  /**
   * Prunes ended runs past their pipeline's retention (or `olderThanMs`), with everything
   * they own, and (without `pipeline`) events past the event retention (or `olderThanMs`),
   * the heads of correlations only a wait that old bumped (once this process has seen
   * each unchanged for an hour: see `pruneWaitHeads`), and the state of idle limit and
   * throttle keys. Workers do it in the background; this is the same by hand.
   *
   * @param options which runs, dry or not, how many
   * @returns what it removed, or would remove
   */
  async prune(options: Omit<PruneOptions, "retentionOf"> = {}): Promise<PruneReport> {
    const report = await pruneRuns(this.store, {
      ...options,
      retentionOf: (name) => this.pipelines.get(name)?.retention,
    });
    // limit and throttle keys belong to no pipeline: a prune of them all forgets idle ones;
    // a prune of a few runs (the background one) looks at a few keys, going on where the
    // last one stopped
    if (options.pipeline === undefined) {
      const some = options.maxRuns !== undefined;
      const budget = some ? 10 * options.maxRuns! : undefined;
      const cursor = some ? this.#flowCursor : undefined;
      const now = this.store.clock.now();
      report.flow = await pruneFlowKeys(this.store.kv, now, {
        dryRun: options.dryRun,
        budget,
        cursor,
      });
      // events belong to no pipeline either
      const before = now - (options.olderThanMs ?? this.#eventRetentionMs);
      report.events = await pruneEvents(this.store, before, {
        max: budget,
        dryRun: options.dryRun,
      });
      report.waitHeads = await pruneWaitHeads(this.store, before, this.#headSightings, {
        dryRun: options.dryRun,
        budget,
        cursor,
      });
    }
    return report;
  }

  /**
   * Drives a run in this process until it ends: claims it, waits for retries, sleeps and
   * timeouts that are due later (and for deliveries that ring it), and follows it while another worker holds it.
   *
   * @returns the run as it ended (or as it was when `signal` aborted)
   */
  async runToEnd(
    runId: string,
    options: {
      signal?: AbortSignal;
      followMs?: number;
      parkedPollMs?: number;
      /** Told when the run is held back by flow control (a limit, a throttle, a debounce). */
      onHeld?: (run: RunRecord) => void;
    } = {},
  ): Promise<RunRecord> {
    while (true) {
      const result = await this.worker.execute(runId);
      const run = await this.store.requireRun(runId);
      if (result === "unknown-pipeline") {
        throw new UsageError(
          `Run ${runId} belongs to pipeline '${run.pipeline}', which this process does not know`,
          "not_found",
        );
      }
      // a paused run goes on when unpaused, in whichever worker claims it then
      if (TERMINAL.has(run.status) || run.status === "paused" || options.signal?.aborted) {
        return run;
      }
      if (run.status === "waiting" && run.waitingFor?.kind === "child") {
        // its children are due now: drive them here as well, then the run again
        const children = await this.store.waitingChildren(runId);
        if (children.length > 0) {
          await Promise.all(children.map((id) => this.runToEnd(id, options)));
          continue;
        }
      }
      if (run.status === "waiting" && run.dueAt !== null) {
        // a retry, sleep or timeout due later: wait on the engine's clock (a test clock
        // skips ahead), or until a delivery (an event, a child's end) rings the run; a
        // delivery from another process rings its bell, which the next claim sees (queue
        // hints between processes may take a minute), hence `parkedPollMs`
        const wait = Math.min(run.dueAt - this.store.clock.now(), options.parkedPollMs ?? 60_000);
        const stop = new AbortController();
        const abort = () => stop.abort();
        options.signal?.addEventListener("abort", abort, { once: true });
        await Promise.race([
          sleep(wait, stop.signal, this.store.clock),
          this.worker.notified(runId, stop.signal),
        ]);
        stop.abort();
        options.signal?.removeEventListener("abort", abort);
      } else {
        // another worker holds the run, or flow control holds it back: look again shortly
        if (run.status === "queued" && run.held) options.onHeld?.(run);
        await sleep(options.followMs ?? 200, options.signal);
      }
    }
  }

  /**
   * One heartbeat, for a platform that runs code only while a request or a cron tick is
   * being handled (Deno Deploy): creates the runs of due schedule ticks, claims due runs,
   * and drives them until they leave this process's hands or `budgetMs` runs out.
   */
  async heartbeat(budgetMs = 50_000): Promise<void> {
    await this.worker.sweep();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.worker.idle(),
      new Promise((resolve) => (timer = setTimeout(resolve, budgetMs))),
    ]);
    clearTimeout(timer);
  }

  /**
   * Backfills a scheduled pipeline: one run per tick from day `from` to day `to` (ticks
   * still to come are left to the schedule), with ids derived from the ticks, so a second
   * backfill of the range creates nothing. At most `maxActive` runs of the pipeline are
   * active at once.
   *
   * @returns the runs of the range, as they ended
   * @throws {UsageError} on an unscheduled pipeline or a bad range
   */
  async backfill(
    name: string,
    from: string,
    to: string,
    options: {
      maxActive?: number;
      /** The priority of the runs it creates. Default: the schedule's, else the pipeline's. */
      priority?: number;
      onProgress?: (done: number, total: number, run: RunRecord, created: boolean) => void;
    } = {},
  ): Promise<RunRecord[]> {
    const pipeline = this.pipeline(name);
    // Ticks still to come are the schedule's: a backfill run now would run before its time.
    const now = this.store.clock.now();
    const ticks = backfillTicks(pipeline, from, to).filter((t) => t <= now);
    const maxActive = options.maxActive ?? pipeline.schedule?.maxActive ?? 1;
    if (!Number.isInteger(maxActive) || maxActive < 1) {
      throw new UsageError(`Invalid --max-active ${maxActive}: use a positive integer`);
    }
    const ended: RunRecord[] = new Array(ticks.length);
    let next = 0;
    let done = 0;
    const lane = async () => {
      while (next < ticks.length) {
        const index = next++;
        const tick = ticks[index];
        const id = tickRunId(pipeline.name, tick);
        let created = false;
        if (!(await this.store.getRun(id))) {
          try {
            await this.store.createRun(pipeline, {
              id,
              tick,
              logicalDate: tickDate(pipeline.schedule!, tick),
              trigger: "backfill",
              priority: options.priority ?? pipeline.schedule!.priority,
            });
            created = true;
          } catch (error) {
            // created meanwhile by the schedule or another backfill: follow that run
            if (!(error instanceof UsageError && error.code === "conflict")) throw error;
          }
        }
        ended[index] = await this.runToEnd(id);
        options.onProgress?.(++done, ticks.length, ended[index], created);
      }
    };
    await Promise.all(Array.from({ length: Math.min(maxActive, ticks.length) }, lane));
    return ended;
  }

  /** Stops the worker (handing its runs back) and closes the database if the engine opened it. */
  async close(graceMs = 10_000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.worker.stop(graceMs);
    if (this.#ownsKv) {
      this.kv.close();
      await this.worker.closed();
    }
  }

  /** Closes the engine. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Checks that every pipeline a step invokes is registered, and that no pipeline invokes
 * itself through others.
 *
 * @throws {TypeError} naming the step and pipeline, or the cycle
 */
function checkChildren(pipelines: ReadonlyMap<string, Pipeline<unknown>>): void {
  for (const p of pipelines.values()) {
    for (const s of p.steps) {
      if (s.wait?.kind !== "child") continue;
      if (!pipelines.has(s.wait.pipeline.name)) {
        throw new TypeError(
          `Pipeline '${p.name}': step '${s.name}' invokes pipeline '${s.wait.pipeline.name}', which is not registered`,
        );
      }
    }
  }
  const state = new Map<string, "visiting" | "done">();
  const visit = (name: string, path: string[]) => {
    if (state.get(name) === "done") return;
    if (state.get(name) === "visiting") {
      const cycle = [...path.slice(path.indexOf(name)), name].join(" -> ");
      throw new TypeError(`Pipelines invoke each other in a cycle: ${cycle}`);
    }
    state.set(name, "visiting");
    for (const child of pipelines.get(name)?.children ?? []) visit(child.name, [...path, name]);
    state.set(name, "done");
  };
  for (const name of pipelines.keys()) visit(name, []);
}

/** What the registered pipelines say about event names: correlation fields and triggers. */
function eventRegistry(pipelines: ReadonlyMap<string, Pipeline<unknown>>): EventRegistry {
  const fields = new Map<string, string[]>();
  const triggers = new Map<
    string,
    { pipeline: Pipeline<unknown>; params: (data: unknown) => unknown; priority?: number }[]
  >();
  for (const p of pipelines.values()) {
    for (const s of p.steps) {
      if (s.wait?.kind !== "event") continue;
      for (const name of Object.keys(s.wait.events)) {
        const list = fields.get(name) ?? [];
        if (!list.includes(s.wait.field)) list.push(s.wait.field);
        fields.set(name, list);
      }
    }
    for (const [name, trigger] of p.on) {
      const list = triggers.get(name) ?? [];
      list.push({ pipeline: p, params: trigger.params, priority: trigger.priority });
      triggers.set(name, list);
    }
  }
  return {
    fields: (name) => fields.get(name) ?? [],
    triggers: (name) => triggers.get(name) ?? [],
  };
}

/**
 * Opens an engine. A database written by an older kvflow is migrated first (once; see
 * `lib/kv/migrations.ts`), before the engine changes anything.
 *
 * @example An in-memory engine for a test
 * ```ts
 * import { openEngine, pipeline, step } from "../mod.ts";
 * const hello = step("hello", () => "world");
 * await using engine = await openEngine({ path: ":memory:", pipelines: [pipeline("demo", { steps: [hello] })] });
 * const run = await engine.store.createRun(engine.pipeline("demo"));
 * console.log((await engine.runToEnd(run.id)).status); // "succeeded"
 * ```
 *
 * @param options pipelines, KV location, worker options
 * @returns the open engine
 * @throws {UsageError} when the KV cannot be opened, or a newer kvflow wrote it
 */
export async function openEngine(options: EngineOptions): Promise<Engine> {
  if (options.kv) {
    const engine = new Engine(
      options.kv,
      options.queues ?? true,
      options,
      options.closeKv ?? false,
    );
    await migrateStore(engine.store);
    return engine;
  }
  const opened = await openKv(options.path);
  try {
    const watchFile = options.watch === false ? undefined : opened.file;
    const engine = new Engine(
      opened.kv,
      options.queues ?? opened.queues,
      { ...options, watchFile },
      true,
    );
    await migrateStore(engine.store);
    return engine;
  } catch (error) {
    opened.kv.close();
    throw error;
  }
}

/**
 * Migrates the store's database; a database without a version and without runs (a new
 * one) gets its version with the first run this process creates.
 */
async function migrateStore(store: Store): Promise<void> {
  const { to } = await migrate(store);
  store.schemaUnwritten = to < SCHEMA_VERSION;
}
