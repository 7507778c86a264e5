/**
 * Live run updates as server-sent events: `run` (the run record), `step` (one step's or
 * fan-out item's new state) and, once the run ends, `end` (the final record), after which
 * the stream closes. A comment line every 15 s keeps proxies from closing an idle stream.
 *
 * Changes made by any process reach the stream: it polls KV (the run record and its step
 * and item records) every 250 ms. Changes made by this process's worker arrive at once
 * through {@linkcode Engine.subscribe}. Both paths build the same data from the same
 * state, so a state is sent once, whichever path sees it first.
 *
 * @module
 */
import type { Engine, EngineEvent } from "../engine/engine.ts";
import * as keys from "../kv/keys.ts";
import { type RunRecord, type TaskRecord, TERMINAL } from "../model/records.ts";
import type { StepEvent } from "./schemas.ts";
import { runJson } from "./run_view.ts";

/** Options of {@linkcode runEventStream}. */
export interface RunStreamOptions {
  /** KV poll interval, ms. Default 250. */
  pollMs?: number;
  /** Interval of heartbeat comments, ms. Default 15,000. */
  heartbeatMs?: number;
  /** Closes the stream when aborted (the server shutting down). */
  signal?: AbortSignal;
  /** Called once when the stream closes, whoever closed it. */
  onClose?: () => void;
}

const encoder = new TextEncoder();

/**
 * The event stream of one run, as a response body. Send it with
 * `Content-Type: text/event-stream`.
 *
 * @param engine the engine whose KV holds the run
 * @param runId the run (check that it exists first)
 * @param options poll and heartbeat intervals, a signal that ends the stream
 * @returns the stream; cancelling it stops the polling
 */
export function runEventStream(
  engine: Engine,
  runId: string,
  options: RunStreamOptions = {},
): ReadableStream<Uint8Array> {
  let follower: RunFollower | undefined;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      follower = new RunFollower(engine, runId, controller, options);
      follower.start();
    },
    cancel() {
      follower?.stop();
    },
  });
}

/** Keeps one stream up to date with one run. */
class RunFollower {
  readonly #engine: Engine;
  readonly #runId: string;
  readonly #out: ReadableStreamDefaultController<Uint8Array>;
  readonly #pollMs: number;
  readonly #heartbeatMs: number;
  readonly #signal?: AbortSignal;
  readonly #onClose?: () => void;
  /** The last run data sent, and when. */
  #runSent: { news: string; at: number } | undefined;
  /** The order key of the last state sent for each `step#item`. */
  readonly #stepSent = new Map<string, number>();
  /** Steps whose items the next poll must read. */
  #itemSteps: Set<string> | "all" = "all";
  #unsubscribe: (() => void) | undefined;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #wake: (() => void) | undefined;
  #wakeRequested = false;
  #firstPollDone = false;
  #closed = false;
  #cleanedUp = false;

  constructor(
    engine: Engine,
    runId: string,
    out: ReadableStreamDefaultController<Uint8Array>,
    options: RunStreamOptions,
  ) {
    this.#engine = engine;
    this.#runId = runId;
    this.#out = out;
    this.#pollMs = options.pollMs ?? 250;
    this.#heartbeatMs = options.heartbeatMs ?? 15_000;
    this.#signal = options.signal;
    this.#onClose = options.onClose;
  }

  start(): void {
    if (this.#signal?.aborted) return this.#close();
    this.#signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#write("retry: 2000\n\n");
    this.#unsubscribe = this.#engine.subscribe((event) => this.#onEvent(event));
    this.#heartbeat = setInterval(() => this.#write(": heartbeat\n\n"), this.#heartbeatMs);
    this.#loop().catch(() => this.#close());
  }

  stop(): void {
    this.#closed = true;
    this.#cleanup();
  }

  #onAbort = () => this.#close();

  /** Polls until the run ends, then sends `end` and closes. */
  async #loop(): Promise<void> {
    let run: RunRecord | null;
    while (true) {
      run = await this.#readOnce();
      this.#firstPollDone = true;
      if (this.#closed || !run || TERMINAL.has(run.status)) break;
      await this.#sleep();
    }
    if (run) this.#write(`event: end\ndata: ${JSON.stringify(runJson(run))}\n\n`);
    this.#close();
  }

  /** Waits `pollMs`, or less when a change was seen meanwhile. */
  #sleep(): Promise<void> {
    if (this.#wakeRequested) {
      this.#wakeRequested = false;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, this.#pollMs);
      const wake = () => done();
      this.#wake = wake;
      function done() {
        clearTimeout(timer);
        resolve();
      }
    }).then(() => {
      this.#wake = undefined;
      this.#wakeRequested = false;
    });
  }

  #requestPoll(): void {
    this.#wakeRequested = true;
    this.#wake?.();
  }

  #onEvent(event: EngineEvent): void {
    if (this.#closed) return;
    const mine = (event.type === "run" && event.run.id === this.#runId) ||
      (event.type === "task" && event.runId === this.#runId);
    if (!mine) return;
    // Until the first snapshot is out, `run` must come first: leave it to the next poll.
    if (!this.#firstPollDone) return this.#requestPoll();
    if (event.type === "run") {
      this.#sendRun(event.run, Date.now());
      // The final state: read once more (for changes of other processes), then end.
      if (TERMINAL.has(event.run.status)) this.#requestPoll();
    } else if (event.type === "task") {
      this.#sendStep(stepEvent(event.step, event.item, {
        status: event.status,
        attempt: event.attempt,
        error: event.error ?? null,
        startedAt: event.startedAt ?? null,
        endedAt: event.endedAt ?? null,
        nextAt: event.nextAt ?? null,
        items: event.items,
      }));
      if (event.item === -1) this.#markItems(event.step, event.status);
    }
  }

  /** Reads the run and its tasks and sends what changed; returns the run. */
  async #readOnce(): Promise<RunRecord | null> {
    const readAt = Date.now();
    const kv = this.#engine.kv;
    const run = (await kv.get<RunRecord>(keys.run(this.#runId))).value;
    if (!run) return null;
    const steps = new Map<string, TaskRecord>();
    for await (const e of kv.list<TaskRecord>({ prefix: keys.stepPrefix(this.#runId) })) {
      steps.set(e.key[e.key.length - 1] as string, e.value);
    }
    const itemSteps = this.#itemSteps;
    this.#itemSteps = new Set();
    const items: StepEvent[] = [];
    for (const [name, record] of steps) {
      if (record.items === undefined) continue;
      if (itemSteps !== "all" && !itemSteps.has(name)) continue;
      for await (const e of kv.list<TaskRecord>({ prefix: keys.itemPrefix(this.#runId, name) })) {
        items.push(stepEvent(name, e.key[e.key.length - 1] as number, e.value));
      }
    }
    if (this.#closed) return run;
    this.#sendRun(run, readAt);
    const events = [...steps].map(([name, record]) => {
      this.#markItems(name, record.status);
      return stepEvent(name, -1, record);
    }).concat(items);
    // In the order things happened, so a first snapshot reads like a history.
    events.sort(historyOrder);
    for (const event of events) this.#sendStep(event);
    return run;
  }

  /** Items change while their step runs: read them at the next poll. */
  #markItems(step: string, status: string): void {
    if (this.#itemSteps !== "all" && (status === "running" || status === "retrying")) {
      this.#itemSteps.add(step);
    }
  }

  /**
   * Sends the run unless it says nothing new, or a newer state (from a subscription, after
   * this poll's read began) went out already.
   */
  #sendRun(run: RunRecord, readAt: number): void {
    const json = runJson(run);
    // dueAt moves with every lease renewal and durationMs with the clock: not news.
    const { dueAt: _dueAt, durationMs: _durationMs, ...rest } = json;
    const news = JSON.stringify(rest);
    const last = this.#runSent;
    if (last && (last.news === news || last.at > readAt)) return;
    this.#runSent = { news, at: Date.now() };
    this.#write(`event: run\ndata: ${JSON.stringify(json)}\n\n`);
  }

  /** Sends a task's state if it is newer than the last one sent for that task. */
  #sendStep(event: StepEvent): void {
    const id = `${event.step}#${event.item}`;
    const key = orderKey(event);
    if (key <= (this.#stepSent.get(id) ?? -1)) return;
    this.#stepSent.set(id, key);
    this.#write(`event: step\ndata: ${JSON.stringify(event)}\n\n`);
  }

  #write(text: string): void {
    if (this.#closed) return;
    try {
      this.#out.enqueue(encoder.encode(text));
    } catch {
      this.stop();
    }
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#cleanup();
    this.#wake?.();
    try {
      this.#out.close();
    } catch {
      // the client went away first
    }
  }

  #cleanup(): void {
    if (this.#cleanedUp) return;
    this.#cleanedUp = true;
    this.#onClose?.();
    this.#unsubscribe?.();
    clearInterval(this.#heartbeat);
    this.#signal?.removeEventListener("abort", this.#onAbort);
  }
}

/**
 * Orders the states of one task: every change stamps `startedAt` (a start) or `endedAt`
 * (an end) with the time, so the later stamp, with an end after a start of the same
 * millisecond, only grows while the run is active.
 */
function orderKey(e: StepEvent): number {
  const at = Math.max(e.startedAt ?? 0, e.endedAt ?? 0);
  const rank = e.status === "pending" ? 0 : e.status === "running" ? 1 : 2;
  return at * 4 + rank;
}

/**
 * Orders the last states of different tasks by when they were reached; in the same
 * millisecond an end comes before a start (the end is what let the next step start), and
 * a fan-out's items before their step (they end it).
 */
function historyOrder(a: StepEvent, b: StepEvent): number {
  const at = (e: StepEvent) => Math.max(e.startedAt ?? 0, e.endedAt ?? 0);
  const phase = (e: StepEvent) => e.status === "pending" ? 0 : e.status === "running" ? 2 : 1;
  return at(a) - at(b) || phase(a) - phase(b) || Number(a.item === -1) - Number(b.item === -1);
}

function stepEvent(
  step: string,
  item: number,
  t: Pick<
    TaskRecord,
    "status" | "attempt" | "error" | "startedAt" | "endedAt" | "nextAt" | "items"
  >,
): StepEvent {
  return {
    step,
    item,
    status: t.status,
    attempt: t.attempt,
    ...(t.error
      ? {
        error: {
          name: t.error.name,
          message: t.error.message,
          ...(t.error.stack ? { stack: t.error.stack } : {}),
          retryable: t.error.retryable,
        },
      }
      : {}),
    ...(t.startedAt != null ? { startedAt: t.startedAt } : {}),
    ...(t.endedAt != null ? { endedAt: t.endedAt } : {}),
    ...(t.nextAt != null ? { nextAt: t.nextAt } : {}),
    ...(t.items !== undefined && item === -1 ? { items: t.items } : {}),
  };
}
