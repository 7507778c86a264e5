/**
 * A worker claims runs and drives them. Wake-ups, fastest first: a run created or
 * resumed in this process starts at once; a retry due soon waits on an in-process timer;
 * a `kv.enqueue` hint (where KV has queues) arrives after its delay; and a sweep of the
 * due-index — which also holds every lease's deadline — catches everything else. On a
 * local KV file, a watch of the file makes the worker look at the due-index within a few
 * ms of another process's commit (`commit_watch.ts`).
 * Queue messages are only hints: each one means "look at this run", and looking twice
 * is harmless.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { type AlertRecord, alertText } from "../alerts/alert.ts";
import { type AlertEmail, deliverAlert, pendingAlerts } from "../alerts/deliver.ts";
import { type AttemptInfo, type Outcome, RunDriver, type RunEvent } from "./driver/driver.ts";
import type { Lease, RunRecord } from "../model/records.ts";
import { TERMINAL } from "../model/records.ts";
import type { RunWakeMessage, Store, WakeMessage } from "../store/store.ts";
import { wakeQueued } from "../store/flow.ts";
import { releaseGate } from "../kv/indexes.ts";
import { keySize } from "../kv/keys.ts";
import type { KvEntry, KvKey } from "../kv/kv.ts";
import { StepLimit } from "./step_limit.ts";
import { SlotNotifier } from "./driver/slot_notifier.ts";
import { hostname, pid } from "../platform/process.ts";
import { logLine } from "../platform/log.ts";
import { CommitWatch } from "./commit_watch.ts";

/** Options of a {@linkcode Worker}. */
export interface WorkerOptions {
  /** The pipelines this worker can run, by name. */
  pipelines: ReadonlyMap<string, Pipeline<unknown>>;
  /** Runs driven at once. Default 16. */
  maxRuns?: number;
  /** Steps (and fan-out items) running at once across all runs. Default 64. */
  maxSteps?: number;
  /** Lease length: how long a dead worker's runs wait before takeover. Default 15 s. */
  leaseMs?: number;
  /** Interval of the due-index sweep while started. Default 1 s. */
  pollMs?: number;
  /** Retries due within this long keep the run's lease and wait in process. Default 5 s. */
  holdMs?: number;
  /** Slack-compatible webhook for alerts. */
  alertWebhook?: string;
  /** E-mail for alerts, over SMTP. */
  alertEmail?: AlertEmail;
  /** Delays between webhook attempts, ms. */
  alertBackoff?: readonly number[];
  /**
   * Finds the pipeline of a run that is not in `pipelines`, e.g. by importing the module
   * the run was created from.
   */
  resolvePipeline?: (run: RunRecord) => Promise<Pipeline<unknown> | undefined>;
  /** Runs at the start of each sweep: the engine checks its schedules here. */
  beforeSweep?: () => Promise<void>;
  /** Called before each attempt's body; a throw fails the attempt (fault injection). */
  beforeAttempt?: (attempt: AttemptInfo) => void | Promise<void>;
  /** Called for each durable change of a run or step. */
  onEvent?: (event: RunEvent) => void;
  /** Called when a run fails and its alert is stored. Default: a line on stderr. */
  onAlert?: (alert: AlertRecord) => void;
  /**
   * The local KV file to watch while serving: a commit to it by any process makes the
   * worker look at the due-index at once, not at its next sweep. Unset: sweeps only.
   */
  watchFile?: string;
}

const FOREIGN_MS = 60_000;

/**
 * Runs whose last look by this worker it remembers, to drop queue hints sent before it.
 * Past this many, the oldest is forgotten: its hint then costs a read, as before.
 */
const LOOKS_REMEMBERED = 20_000;

/** How a driver leaves a run that still holds its limit slot. */
const HOLDS_SLOT: ReadonlySet<Outcome> = new Set(["waiting", "released", "paused"]);

/**
 * How much wider than its free slots a sweep looks, at most, when its claims keep losing
 * to other engines', and how many due entries such a sweep lists at most.
 */
const MAX_SPREAD = 64;
const MAX_SPREAD_WINDOW = 256;

/** Gates of ended runs a worker deletes in one commit at most. */
const GATE_DROP_BATCH = 200;

/** Result of {@linkcode Worker.execute}: how the driver left the run, or why none ran. */
export type ExecuteResult = Outcome | "busy" | "full" | "skipped" | "unknown-pipeline";

/** Claims and drives runs. */
export class Worker {
  /** This worker's id, stored in the leases it holds. */
  readonly id: string;
  readonly #store: Store;
  readonly #options:
    & Required<Pick<WorkerOptions, "maxRuns" | "leaseMs" | "pollMs" | "holdMs">>
    & WorkerOptions;
  readonly #stepLimit: StepLimit;
  /** Wakes this worker's tasks waiting for a step limit's slot when one of its own frees. */
  readonly #slots = new SlotNotifier();
  readonly #holder: Omit<Lease, "deadline">;
  readonly #active = new Map<string, RunDriver | null>();
  readonly #timers = new Map<string, () => void>();
  readonly #notified = new Map<string, Set<() => void>>();
  readonly #deliveries = new Set<Promise<unknown>>();
  /** The alerts (`runId/seq`) being delivered by this process. */
  readonly #delivering = new Set<string>();
  readonly #stop = new AbortController();
  #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  #watch: CommitWatch | undefined;
  #listening: Promise<void> | undefined;
  #sweeps = 0;
  #lastSweepAt: number | null = null;
  #backlog = false;
  /** Whether a sweep for the backlog is in flight. */
  #pulling = false;
  /**
   * How many times its free slots a sweep looks at, of which it claims a random share: 1
   * (the oldest due runs, in order) until claims of found runs are lost to other engines,
   * which all sweep the same head of the due-index; then doubled, and halved once they
   * win again.
   */
  #spread = 1;
  /** Claims of runs a sweep found, since the last sweep: won and lost to another engine. */
  #claims = { won: 0, lost: 0 };
  /** Runs whose pipeline this worker does not know, and until when to skip them. */
  readonly #foreign = new Map<string, number>();
  /**
   * When this worker last read each run to claim it (wall time, ms), oldest first. A run
   * this worker parked or ended has a hint per commit that touched it; they come later,
   * at the queue's pace (100-200 a second here), and each would read the run again.
   */
  readonly #lookedAt = new Map<string, number>();
  readonly #sweeping = new Set<Promise<unknown>>();
  /** How runs claimed after a stop or interrupt began are to be left. */
  #stopping:
    | { mode: "release"; graceMs: number }
    | { mode: "interrupt"; reason: string }
    | undefined;

  /**
   * Creates it.
   *
   * @param store the store to claim runs from
   * @param options pipelines, bounds and hooks
   */
  constructor(store: Store, options: WorkerOptions) {
    this.#store = store;
    this.#options = { maxRuns: 16, leaseMs: 15_000, pollMs: 1000, holdMs: 5000, ...options };
    this.#stepLimit = new StepLimit(options.maxSteps ?? 64);
    const host = hostname();
    this.id = `${host}:${pid()}:${crypto.randomUUID().slice(0, 8)}`;
    this.#holder = { owner: this.id, host, pid: pid() };
  }

  /** Runs being driven by this worker now. */
  get activeRuns(): number {
    return this.#active.size;
  }

  /** Whether {@linkcode Worker.start} was called and {@linkcode Worker.stop} was not. */
  get serving(): boolean {
    return this.#sweepTimer !== undefined && !this.#stop.signal.aborted;
  }

  /** When the last due-index sweep finished (wall time, ms), or null before the first. */
  get lastSweepAt(): number | null {
    return this.#lastSweepAt;
  }

  /**
   * Starts serving: listens for queue hints (where KV has queues) and sweeps the
   * due-index every `pollMs`.
   */
  start(): void {
    if (this.#store.queues) {
      this.#listening = this.#store.kv.listenQueue((message: unknown) => {
        const hint = message as WakeMessage;
        if (hint?.kvflow === "due") void this.#look();
        if (hint?.kvflow !== "run" || typeof hint.runId !== "string") return;
        if (this.#lookedSince(hint)) this.#tellFollowers(hint.runId);
        else this.notify(hint.runId);
      });
    }
    const tick = () => {
      if (this.#stop.signal.aborted) return;
      this.#runSweep().finally(() => {
        if (!this.#stop.signal.aborted) this.#sweepTimer = setTimeout(tick, this.#options.pollMs);
      });
    };
    this.#sweepTimer = setTimeout(tick, 0);
    const file = this.#options.watchFile;
    if (file) {
      this.#watch = new CommitWatch(file, () => this.#look(), (error) =>
        logLine(
          "warn",
          `kvflow: cannot watch ${file} for other processes' commits (${
            error instanceof Error ? error.message : error
          }): they are seen at the next sweep, every ${this.#options.pollMs} ms`,
        ), () => this.#active.size < this.#options.maxRuns);
    }
  }

  /** The step-limit slots this worker's tasks hold, and their waits (for tests). */
  get slots(): SlotNotifier {
    return this.#slots;
  }

  /** Looks made by the watch of the KV file so far (for benchmarks). */
  get watchLooks(): number {
    return this.#watch?.looks ?? 0;
  }

  /**
   * Looks once at the schedules (through `beforeSweep`), at every due run, at runs whose
   * holder on this host died, and every few sweeps at undelivered alerts.
   */
  async sweep(): Promise<void> {
    await this.#sweep(true);
  }

  /**
   * A sweep. Without `housekeeping` (a sweep because a slot freed while runs were due) it
   * only looks at due runs: schedules, deadlines, the outbox, orphaned leases and alerts
   * wait for the next timed sweep, which is at most `pollMs` away.
   */
  async #sweep(housekeeping: boolean): Promise<number> {
    let woken = 0;
    if (housekeeping && this.#options.beforeSweep) {
      await this.#options.beforeSweep().catch((error) => {
        if (!this.#stop.signal.aborted) {
          logLine("error", `kvflow: schedules: ${error instanceof Error ? error.message : error}`);
        }
      });
    }
    const free = this.#options.maxRuns - this.#active.size;
    if (free > 0) {
      woken = await this.#wakeDue(free);
      // Runs held by a dead process of this host: due only when their leases run out.
      if (housekeeping) {
        for (const runId of await this.#store.orphanedRuns(this.#holder, free - woken)) {
          if (!this.#active.has(runId) && !this.#foreign.has(runId)) this.wake(runId);
        }
      }
    } else {
      this.#backlog = true;
    }
    if (
      housekeeping && (this.#options.alertWebhook || this.#options.alertEmail) &&
      this.#sweeps++ % 5 === 0
    ) {
      for (const { runId, seq } of await pendingAlerts(this.#store.kv, 5000)) {
        this.#deliver(runId, seq);
      }
    }
    this.#lastSweepAt = Date.now();
    return woken;
  }

  /** Wakes up to `free` due runs that this worker is not driving; how many it woke. */
  async #wakeDue(free: number): Promise<number> {
    let woken = 0;
    const now = this.#store.clock.now();
    for (const [runId, until] of this.#foreign) if (until <= now) this.#foreign.delete(runId);
    this.#adjustSpread();
    const wide = Math.min(free * this.#spread, Math.max(free, MAX_SPREAD_WINDOW));
    const limit = wide + this.#active.size + this.#foreign.size;
    let listed = 0, open = 0;
    const due = await this.#store.dueRunEntries(now, limit, (runIds) => {
      listed = runIds.length;
      const chosen = this.#choose(runIds, free, wide);
      open = chosen.open;
      return chosen.runIds;
    });
    for (const { runId, entry } of due) {
      if (this.#active.has(runId) || this.#foreign.has(runId)) continue;
      if (woken < free) {
        this.wake(runId, entry ?? undefined);
        woken++;
      }
    }
    // the head was full, more were open than woken, or the room filled: more may be due
    if (listed === limit || open > woken || (woken > 0 && woken === free)) this.#backlog = true;
    return woken;
  }

  /**
   * The watch heard a commit, or a queue message says runs are due: the head of the
   * due-index only, not a whole sweep.
   */
  async #look(): Promise<number> {
    const free = this.#options.maxRuns - this.#active.size;
    if (this.#stop.signal.aborted) return 0;
    // full: the commit heard is most likely this worker's own (a busy worker hears each
    // of its group commits), and a backlog flag here would make every run's end sweep;
    // what is due waits for the next sweep or another worker
    if (free <= 0) return 0;
    try {
      return await this.#wakeDue(free);
    } catch (error) {
      if (!this.#stop.signal.aborted) {
        logLine("error", `kvflow: look at due runs failed: ${(error as Error)?.message}`);
      }
      return 0;
    }
  }

  /** Widens the sweep while more than one claim in eight is lost, narrows it otherwise. */
  #adjustSpread(): void {
    const { won, lost } = this.#claims;
    if (won + lost === 0) return;
    this.#spread = lost * 8 > won + lost
      ? Math.min(MAX_SPREAD, this.#spread * 2)
      : Math.max(1, this.#spread / 2);
    this.#claims = { won: 0, lost: 0 };
  }

  /**
   * The due runs (oldest first) a sweep reads and claims: the oldest `free` of them, or,
   * while the sweep is spread, a random `free` of the oldest `wide`, so that engines
   * sweeping the same head claim different runs. Every due run stays within the window of
   * every sweep until it is claimed, so some sweep takes it.
   *
   * @returns the chosen, and how many of the listed runs this worker could take
   */
  #choose(runIds: string[], free: number, wide: number): { runIds: string[]; open: number } {
    const open = runIds.filter((id) => !this.#active.has(id) && !this.#foreign.has(id));
    if (this.#spread === 1 || open.length <= free) {
      return { runIds: open.slice(0, free), open: open.length };
    }
    const window = open.slice(0, wide);
    for (let i = 0; i < free; i++) {
      const j = i + Math.floor(Math.random() * (window.length - i));
      [window[i], window[j]] = [window[j], window[i]];
    }
    return { runIds: window.slice(0, free), open: open.length };
  }

  /**
   * Looks at a run soon: claims it if it has work and this worker has room.
   *
   * @param seen the run record as a sweep read it, for a claim without a read first
   */
  wake(runId: string, seen?: KvEntry<RunRecord>): void {
    if (this.#stop.signal.aborted || this.#active.has(runId)) return;
    this.execute(runId, seen).catch((error) =>
      logLine("error", `kvflow: run ${runId}: ${error instanceof Error ? error.message : error}`, {
        run: runId,
      })
    );
  }

  /**
   * Something was delivered to a run (an event, a child's end): the driver holding it in
   * this process reads its inbox; else, in a serving worker, the run is woken, which
   * claims it when it is parked and its bell rang. Whoever follows the run here
   * ({@linkcode Worker.notified}) is told.
   */
  notify(runId: string): void {
    this.#tellFollowers(runId);
    const driver = this.#active.get(runId);
    if (driver) driver.notify();
    // a process that does not serve (a CLI `send`) leaves the run to a worker that does
    else if (this.serving) this.wake(runId);
  }

  #tellFollowers(runId: string): void {
    const waiters = this.#notified.get(runId);
    if (waiters) {
      this.#notified.delete(runId);
      for (const resolve of waiters) resolve();
    }
  }

  /**
   * Whether this worker read the run at or after the time a hint is meant for: it looked
   * already, and the hint is dropped without a read. A hint's time is taken before its
   * commit, so a read in between may miss that commit: then the commit's due entry still
   * wakes the run, at the watch's next look or the next sweep.
   */
  #lookedSince(hint: RunWakeMessage): boolean {
    const lookedAt = this.#lookedAt.get(hint.runId);
    return hint.at !== undefined && lookedAt !== undefined && lookedAt >= hint.at &&
      !this.#active.has(hint.runId);
  }

  #rememberLook(runId: string, at: number): void {
    this.#lookedAt.delete(runId);
    this.#lookedAt.set(runId, at);
    if (this.#lookedAt.size > LOOKS_REMEMBERED) {
      this.#lookedAt.delete(this.#lookedAt.keys().next().value!);
    }
  }

  /**
   * A pause of a run was committed in this process: the driver holding the run here, if
   * any, finishes its attempts in flight and lets the run go as paused at once, instead
   * of at its next look at the lease.
   */
  pause(runId: string): void {
    this.#active.get(runId)?.pause();
  }

  /**
   * Resolves once {@linkcode Worker.notify} is called for the run (a delivery in this
   * process, or a queue hint from another), or when `signal` aborts.
   */
  notified(runId: string, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const waiters = this.#notified.get(runId) ?? new Set<() => void>();
      const done = () => {
        waiters.delete(done);
        if (waiters.size === 0 && this.#notified.get(runId) === waiters) {
          this.#notified.delete(runId);
        }
        signal?.removeEventListener("abort", done);
        resolve();
      };
      waiters.add(done);
      this.#notified.set(runId, waiters);
      signal?.addEventListener("abort", done, { once: true });
    });
  }

  /**
   * Claims a run and drives it until it leaves this worker's hands.
   *
   * @param seen the run record as a sweep read it: the claim commits against it first,
   * without reading the run again
   * @returns how the run was left, or why it was not taken
   */
  async execute(runId: string, seen?: KvEntry<RunRecord>): Promise<ExecuteResult> {
    if (this.#stop.signal.aborted) return "skipped";
    if (this.#active.has(runId)) return "busy";
    if (this.#active.size >= this.#options.maxRuns) {
      this.#backlog = true;
      return "full";
    }
    this.#active.set(runId, null);
    const lookedAt = Date.now();
    try {
      const run = seen?.value ?? await this.#store.getRun(runId);
      if (!run) return "skipped";
      const pipeline = this.#options.pipelines.get(run.pipeline) ??
        await this.#options.resolvePipeline?.(run).catch((error) => {
          logLine(
            "error",
            `kvflow: run ${runId}: cannot load pipeline '${run.pipeline}' from ${run.module}: ${
              error instanceof Error ? error.message : error
            }`,
            { run: runId },
          );
          return undefined;
        });
      if (!pipeline || pipeline.name !== run.pipeline) {
        // Another worker may know this pipeline: leave the run to it, and keep it from
        // filling this worker's sweeps for a while.
        this.#foreign.set(runId, this.#store.clock.now() + FOREIGN_MS);
        return "unknown-pipeline";
      }
      if (this.#stop.signal.aborted) return "skipped";
      const claim = await this.#store.claim(
        runId,
        this.#holder,
        this.#options.leaseMs,
        run.pipeline,
        seen,
      );
      if (seen) this.#claims[claim ? "won" : "lost"]++;
      if (!claim) return "skipped";
      const driver = new RunDriver({
        store: this.#store,
        pipeline,
        claim,
        leaseMs: this.#options.leaseMs,
        holdMs: this.#options.holdMs,
        stepLimit: this.#stepLimit,
        slots: this.#slots,
        limitFreed: (limit) => this.#wakeQueued(limit),
        channels: {
          webhook: Boolean(this.#options.alertWebhook),
          email: Boolean(this.#options.alertEmail),
        },
        onEvent: this.#options.onEvent,
        beforeAttempt: this.#options.beforeAttempt,
        onAlert: (alert) => this.alert(alert),
      });
      this.#active.set(runId, driver);
      await driver.start();
      // stop() or interrupt() came while this run was being claimed: treat it as they did
      // the runs they saw.
      if (this.#stopping?.mode === "release") void driver.release(this.#stopping.graceMs);
      if (this.#stopping?.mode === "interrupt") void driver.interrupt(this.#stopping.reason);
      const outcome = await driver.done;
      if (outcome === "lost") {
        // Paused past its deadline, cancelled, or taken over: an operator should know
        // why this worker dropped a run it was driving.
        logLine(
          "warn",
          `kvflow: run ${runId}: lost its lease (cancelled, or taken over by another worker); results of this worker's attempts were not stored`,
          { run: runId },
        );
      }
      if (outcome === "waiting") await this.#timeWakeUp(runId);
      // a run under a limit that let go of its slot: the next queued run starts here now
      const limit = claim.run.flow?.limit;
      if (limit && !HOLDS_SLOT.has(outcome)) {
        this.#wakeQueued(limit);
        // its end's gate is for a worker that died before this wake-up: not needed now (its
        // view of the key heard of the free when the end was durable: `RunRecords.changeRun`)
        if (TERMINAL.has(driver.run.status)) this.#dropGate(releaseGate(driver.run));
      }
      // a child that ended tells its parent here at once (a hint does across processes)
      if ((outcome === "succeeded" || outcome === "failed") && run.parent) {
        const parent = run.parent.runId;
        queueMicrotask(() => this.notify(parent));
      }
      return outcome;
    } finally {
      this.#rememberLook(runId, lookedAt);
      this.#active.delete(runId);
      this.#watch?.want();
      this.#pullBacklog();
    }
  }

  /** Gates of ended runs whose wake-up this worker did, deleted together soon. */
  #gates: KvKey[] = [];
  #gateTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Deletes the gate of a run this worker ended, with others in one commit within 200 ms:
   * a delete each would cost a commit per run. A gate whose delete did not make it (the
   * process died) opens a second later; it only wakes what is queued then.
   */
  #dropGate(gate: KvKey): void {
    this.#gates.push(gate);
    if (this.#gates.length >= GATE_DROP_BATCH) this.#dropGates();
    else this.#gateTimer ??= setTimeout(() => this.#dropGates(), 200);
  }

  #dropGates(): Promise<void> {
    clearTimeout(this.#gateTimer);
    this.#gateTimer = undefined;
    const gates = this.#gates;
    this.#gates = [];
    if (gates.length === 0) return Promise.resolve();
    // shared with the checkpoints of the moment: a commit of its own would cost an fsync
    const bytes = gates.reduce((n, gate) => n + keySize(gate), 0);
    const dropping = this.#store.committer.commit({
      checks: 0,
      mutations: gates.length,
      bytes,
      keyBytes: bytes,
      apply: (op) => {
        for (const gate of gates) op.delete(gate);
      },
    }).then(() => {}, () => {}); // a gate left opens later: harmless
    this.#deliveries.add(dropping);
    dropping.finally(() => this.#deliveries.delete(dropping));
    return dropping;
  }

  #wakeQueued(limit: { scope: string; key: string; max?: number }): void {
    const store = this.#store;
    // most ends find nobody queued: the key's mark, read with others', says so
    store.limits.mayBeQueued(store.kv, limit).then((maybe) =>
      maybe ? wakeQueued(store.kv, limit, store.clock.now()) : []
    ).then(
      (runIds) => runIds.forEach((runId) => this.wake(runId)),
      (error) => logLine("error", `kvflow: limit '${limit.key}': ${error?.message ?? error}`),
    );
  }

  /** Runs were turned away for lack of room: look for due work again as soon as room frees. */
  #pullBacklog(): void {
    if (!this.#backlog || this.#stop.signal.aborted || this.#sweepTimer === undefined) return;
    // One such sweep at a time: slots that free while it reads are filled by the next,
    // which it starts as it ends if it took runs, rather than by a sweep (and its reads)
    // for each slot. One that took none leaves the rest to the next end or timed sweep.
    if (this.#pulling || this.#active.size >= this.#options.maxRuns) return;
    this.#backlog = false;
    this.#pulling = true;
    this.#runSweep(false).then((woken) => {
      this.#pulling = false;
      if (woken > 0) this.#pullBacklog();
    });
  }

  /** Runs a sweep that `stop()` waits for, logging (not throwing) its failure. */
  #runSweep(housekeeping = true): Promise<number> {
    const sweep = this.#sweep(housekeeping).catch((error) => {
      if (!this.#stop.signal.aborted) logLine("error", `kvflow: sweep failed: ${error?.message}`);
      return 0;
    }).finally(() => this.#sweeping.delete(sweep));
    this.#sweeping.add(sweep);
    return sweep;
  }

  /** The driver of a run this worker is driving now. */
  driverOf(runId: string): RunDriver | undefined {
    return this.#active.get(runId) ?? undefined;
  }

  /**
   * Stops taking work; running steps get `graceMs` to finish, then runs are handed back
   * (queued, due now) so another worker continues them. Waits for alert deliveries.
   */
  async stop(graceMs = 10_000): Promise<void> {
    this.#stopping ??= { mode: "release", graceMs };
    this.#stop.abort();
    clearTimeout(this.#sweepTimer);
    const unwatched = this.#watch?.close();
    for (const cancel of this.#timers.values()) cancel();
    this.#timers.clear();
    const drivers = [...this.#active.values()].filter((d): d is RunDriver => d !== null);
    await Promise.all(drivers.map((d) => d.release(graceMs)));
    await Promise.allSettled([...this.#sweeping]);
    await unwatched;
    while (this.#active.size > 0) await new Promise((r) => setTimeout(r, 5));
    await this.#dropGates();
    await Promise.allSettled([...this.#deliveries]);
  }

  /** Interrupts every run now (Ctrl-C): they fail resumably and their leases are released. */
  async interrupt(reason = "Interrupted"): Promise<void> {
    this.#stopping = { mode: "interrupt", reason };
    this.#stop.abort();
    clearTimeout(this.#sweepTimer);
    const unwatched = this.#watch?.close();
    const drivers = [...this.#active.values()].filter((d): d is RunDriver => d !== null);
    await Promise.all(drivers.map((d) => d.interrupt(reason)));
    await unwatched;
    await this.#dropGates();
  }

  /** Resolves once the queue listener has ended (after the KV is closed). */
  async closed(): Promise<void> {
    await this.#listening;
  }

  /** Resolves once every run this worker is driving has left its hands. */
  async idle(): Promise<void> {
    while (this.#active.size > 0) {
      const drivers = [...this.#active.values()].filter((d): d is RunDriver => d !== null);
      // a driver that KV failed rejects `done`; `execute` reports that, not this wait
      if (drivers.length > 0) await Promise.all(drivers.map((d) => d.done.catch(() => {})));
      // A driver whose `done` settled stays active while `execute` finishes (a parked run's
      // wake-up is read from KV): without a turn of the event loop, awaiting the settled
      // `done` again would spin on microtasks and starve that read, and every timer.
      await new Promise((r) => setTimeout(r, drivers.length > 0 ? 0 : 5));
    }
  }

  /** Waits for alert webhooks in flight. */
  async settleAlerts(): Promise<void> {
    while (this.#deliveries.size > 0) await Promise.allSettled([...this.#deliveries]);
  }

  async #timeWakeUp(runId: string): Promise<void> {
    if (this.#stop.signal.aborted) return;
    const run = await this.#store.getRun(runId);
    if (!run || TERMINAL.has(run.status) || run.dueAt === null) return;
    const delay = run.dueAt - this.#store.clock.now();
    // Far-off retries are left to the queue hint and the sweep: a timer would hold the
    // process for nothing.
    if (delay > 60_000 || !this.#listening && this.#sweepTimer === undefined) return;
    this.#timers.get(runId)?.();
    this.#timers.set(
      runId,
      this.#store.clock.after(delay, () => {
        this.#timers.delete(runId);
        this.wake(runId);
      }),
    );
  }

  /**
   * Reports an alert this process stored (`onAlert`, by default a line on stderr) and
   * delivers it when channels are configured.
   */
  alert(alert: AlertRecord): void {
    (this.#options.onAlert ??
      ((a: AlertRecord) => logLine("error", alertText(a), { run: a.runId })))(
        alert,
      );
    if (this.#options.alertWebhook || this.#options.alertEmail) {
      this.#deliver(alert.runId, alert.seq);
    }
  }

  #deliver(runId: string, seq: number): void {
    // the outbox sweep may find an alert this process is still delivering (retries take
    // longer than its 5 s): the claim lets the same owner through, so skip it here
    const key = `${runId}/${seq}`;
    if (this.#delivering.has(key)) return;
    this.#delivering.add(key);
    const delivery = deliverAlert(this.#store.kv, runId, seq, {
      webhook: this.#options.alertWebhook,
      email: this.#options.alertEmail,
      owner: this.id,
      backoff: this.#options.alertBackoff,
    }).catch((error) =>
      logLine("error", `kvflow: alert of run ${runId}: ${error?.message}`, { run: runId })
    )
      .finally(() => {
        this.#deliveries.delete(delivery);
        this.#delivering.delete(key);
      });
    this.#deliveries.add(delivery);
  }
}
