/**
 * Prometheus metrics. Two sources, each where it is cheap:
 *
 * - From KV, for every process sharing the database: runs by pipeline and status (counts
 *   that every creation and status move sums in its own commit, read at each scrape: one
 *   short list, however many runs are stored), lease takeovers (a counter the claim commit
 *   sums), and stored alerts and waiting runs by what they wait for (a scan of the alerts
 *   and of the waiting runs, reused for `countTtlMs` and refreshed in the background), and
 *   with them queued runs held back by flow control and held limit slots (bounded scans).
 * - From {@linkcode Engine.subscribe}, for this process: step durations, retries, runs
 *   finished; and from the service, the HTTP requests it served and the events sent to it.
 *
 * @module
 */
import type { Engine, EngineEvent } from "../engine/engine.ts";
import * as keys from "../kv/keys.ts";
import { RUN_STATUSES, type RunRecord, TERMINAL } from "../model/records.ts";
import type { SendResult } from "../store/events.ts";
import type { AlertRecord } from "../alerts/alert.ts";
import { residentMemoryBytes } from "../platform/process.ts";
import type { KvU64 } from "../kv/kv.ts";

/** Options of {@linkcode Metrics}. */
export interface MetricsOptions {
  /**
   * How long a count of the alerts and waiting runs in KV is reused, ms; 0 counts at every
   * scrape. Default 60,000.
   */
  countTtlMs?: number;
}

/** Upper bounds of the step duration buckets, seconds. */
export const DURATION_BUCKETS: readonly number[] = [
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  300,
  1800,
];

interface Histogram {
  buckets: number[];
  sum: number;
  count: number;
}

interface AlertCounts {
  at: number;
  alerts: Map<string, number>;
  /** Ticks that missed their schedule's deadline, by pipeline. */
  deadlineMisses: Map<string, number>;
  /** Waiting runs by pipeline, then by what they wait for. */
  waiting: Map<string, Map<string, number>>;
  /** Queued runs held back by flow control, by pipeline, then by what holds them. */
  held: Map<string, Map<string, number>>;
  /** Limit slots held, by scope. */
  slots: Map<string, number>;
}

/** What holds a queued run back. */
const HELD_BY = ["limit", "throttle", "debounce"] as const;

/**
 * Most queued runs and limit slots one count reads: a backlog beyond it is counted up to
 * it, so a scrape stays bounded however many runs wait.
 */
export const FLOW_SCAN_LIMIT = 10_000;

/** What a waiting run waits for: a sleep, an event, a child run, or a retry. */
const WAIT_KINDS = ["sleep", "event", "child", "retry"] as const;

/** Collects metrics of one engine and renders them in the Prometheus text format. */
export class Metrics {
  readonly #engine: Engine;
  readonly #ttl: number;
  readonly #unsubscribe: () => void;
  /** Pipeline of each run this process is driving, for labels of task events. */
  readonly #pipelineOf = new Map<string, string>();
  readonly #finished = new Map<string, number>();
  readonly #retries = new Map<string, number>();
  readonly #durations = new Map<string, Histogram>();
  readonly #requests = new Map<string, number>();
  readonly #sends = new Map<string, number>();
  #wakes = 0;
  #eventStarts = 0;
  readonly #gauges: { name: string; help: string; read: () => number }[] = [];
  #counts: AlertCounts | undefined;
  #counting: Promise<AlertCounts> | undefined;

  /**
   * Starts listening to the engine's events.
   *
   * @param engine the engine
   * @param options how long a count of the alerts is reused
   */
  constructor(engine: Engine, options: MetricsOptions = {}) {
    this.#engine = engine;
    this.#ttl = options.countTtlMs ?? 60_000;
    this.#unsubscribe = engine.subscribe((event) => this.#observe(event));
  }

  /** Stops listening; resolves once a count in progress has finished. */
  async close(): Promise<void> {
    this.#unsubscribe();
    await this.#counting?.catch(() => {});
  }

  /**
   * Adds a gauge read at each scrape.
   *
   * @param name metric name
   * @param gauge what it measures (`help`) and how to read its value now
   */
  gauge(name: string, gauge: { help: string; read: () => number }): void {
    this.#gauges.push({ name, ...gauge });
  }

  /**
   * Counts one HTTP request: by method, route pattern (never the raw path: ids would
   * explode the series) and response status.
   */
  observeRequest(request: { method: string; route: string; status: number }): void {
    const { method, route, status } = request;
    increment(this.#requests, labels({ method, route, status: String(status) }));
  }

  /** Counts one event sent over HTTP: stored, the waits it woke, the runs it started. */
  observeSend(result: SendResult): void {
    increment(this.#sends, labels({ name: result.event.name }));
    this.#wakes += result.woke.length;
    this.#eventStarts += result.started.length;
  }

  /** The metrics in the Prometheus text format (version 0.0.4). */
  async render(): Promise<string> {
    const [runs, takeovers, counts, pruned, paused] = await Promise.all([
      this.#runCounts(),
      this.#engine.kv.get<KvU64>(keys.counter("lease_takeovers")),
      this.#alertCounts(),
      Array.fromAsync(this.#engine.kv.list<KvU64>({ prefix: keys.prunedCountPrefix() })),
      this.#engine.pausedPipelines(),
    ]);
    const out: string[] = [];
    const family = (name: string, type: string, help: string) =>
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);

    family("kvflow_runs", "gauge", "Runs stored in KV, by pipeline and status.");
    const pipelines = new Set([...this.#engine.pipelines.keys(), ...runs.counts.keys()]);
    for (const pipeline of [...pipelines].sort()) {
      for (const status of RUN_STATUSES) {
        const n = runs.counts.get(pipeline)?.get(status) ?? 0n;
        out.push(`kvflow_runs${labels({ pipeline, status })} ${n}`);
      }
    }
    family(
      "kvflow_pipeline_paused",
      "gauge",
      "1 while a pipeline is paused (its new runs wait, status paused), else 0.",
    );
    for (const pipeline of [...this.#engine.pipelines.keys()].sort()) {
      out.push(`kvflow_pipeline_paused${labels({ pipeline })} ${paused.has(pipeline) ? 1 : 0}`);
    }
    family(
      "kvflow_pipeline_retention_seconds",
      "gauge",
      "How long a pipeline's ended runs are kept before they are pruned, by how they ended.",
    );
    for (const [name, pipeline] of sorted(this.#engine.pipelines)) {
      for (const status of ["succeeded", "failed", "cancelled"] as const) {
        out.push(
          `kvflow_pipeline_retention_seconds${labels({ pipeline: name, status })} ${
            pipeline.retention[status] / 1000
          }`,
        );
      }
    }
    family("kvflow_runs_counted_at_seconds", "gauge", "When kvflow_runs was read.");
    out.push(`kvflow_runs_counted_at_seconds ${runs.at / 1000}`);

    family(
      "kvflow_runs_waiting",
      "gauge",
      "Waiting runs stored in KV, by pipeline and what the earliest wait is: sleep, event, " +
        "child (run) or retry. Counted with the alerts.",
    );
    const waitingPipelines = new Set([...this.#engine.pipelines.keys(), ...counts.waiting.keys()]);
    for (const pipeline of [...waitingPipelines].sort()) {
      for (const kind of WAIT_KINDS) {
        const n = counts.waiting.get(pipeline)?.get(kind) ?? 0;
        out.push(`kvflow_runs_waiting${labels({ pipeline, kind })} ${n}`);
      }
    }

    family(
      "kvflow_runs_held",
      "gauge",
      "Queued runs held back by flow control, by pipeline and by what holds them: limit, " +
        `throttle or debounce. Counted with the alerts, over at most ${FLOW_SCAN_LIMIT} queued runs.`,
    );
    const heldPipelines = new Set([...this.#engine.pipelines.keys(), ...counts.held.keys()]);
    for (const pipeline of [...heldPipelines].sort()) {
      for (const by of HELD_BY) {
        const n = counts.held.get(pipeline)?.get(by) ?? 0;
        out.push(`kvflow_runs_held${labels({ pipeline, by })} ${n}`);
      }
    }
    family(
      "kvflow_limit_slots_held",
      "gauge",
      "Slots of concurrency limits held by runs and step attempts, by scope. Counted with " +
        `the alerts, over at most ${FLOW_SCAN_LIMIT} slots.`,
    );
    for (const [scope, n] of sorted(counts.slots)) {
      out.push(`kvflow_limit_slots_held${labels({ scope })} ${n}`);
    }

    family(
      "kvflow_alerts_total",
      "counter",
      "Alerts of failed runs (one per failure of a run): stored in KV, and removed by retention.",
    );
    for (const [pipeline, n] of [...counts.alerts].sort()) {
      out.push(`kvflow_alerts_total${labels({ pipeline })} ${n}`);
    }
    family(
      "kvflow_deadline_missed_total",
      "counter",
      "Schedule ticks whose run had not succeeded by the schedule's deadline (one alert each), " +
        "stored and removed by retention. Counted with the alerts.",
    );
    const deadlinePipelines = new Set([
      ...[...this.#engine.pipelines.values()].filter((p) => p.schedule?.deadline).map((p) =>
        p.name
      ),
      ...counts.deadlineMisses.keys(),
    ]);
    for (const pipeline of [...deadlinePipelines].sort()) {
      const n = counts.deadlineMisses.get(pipeline) ?? 0;
      out.push(`kvflow_deadline_missed_total${labels({ pipeline })} ${n}`);
    }
    family(
      "kvflow_lease_takeovers_total",
      "counter",
      "Runs a worker took over from an expired or dead lease, by any process.",
    );
    out.push(`kvflow_lease_takeovers_total ${takeovers.value?.value ?? 0n}`);
    family(
      "kvflow_runs_pruned_total",
      "counter",
      "Ended runs deleted past their retention, with all they owned, by any process.",
    );
    for (const e of pruned) {
      out.push(
        `kvflow_runs_pruned_total${labels({ pipeline: e.key[2] as string })} ${e.value.value}`,
      );
    }

    family("kvflow_runs_finished_total", "counter", "Runs this process drove to an end.");
    for (const [l, n] of sorted(this.#finished)) out.push(`kvflow_runs_finished_total${l} ${n}`);
    family(
      "kvflow_step_retries_total",
      "counter",
      "Failed attempts this process scheduled a retry for (steps and fan-out items).",
    );
    for (const [l, n] of sorted(this.#retries)) out.push(`kvflow_step_retries_total${l} ${n}`);
    family(
      "kvflow_step_duration_seconds",
      "histogram",
      "Duration of step attempts this process ran, by outcome.",
    );
    for (const [l, h] of sorted(this.#durations)) {
      const inner = l.slice(1, -1);
      DURATION_BUCKETS.forEach((le, i) => {
        out.push(`kvflow_step_duration_seconds_bucket{${inner},le="${le}"} ${h.buckets[i]}`);
      });
      out.push(`kvflow_step_duration_seconds_bucket{${inner},le="+Inf"} ${h.count}`);
      out.push(`kvflow_step_duration_seconds_sum${l} ${round(h.sum)}`);
      out.push(`kvflow_step_duration_seconds_count${l} ${h.count}`);
    }

    family(
      "kvflow_events_sent_total",
      "counter",
      "Events this process stored from HTTP sends (repeats of an id not counted), by name.",
    );
    for (const [l, n] of sorted(this.#sends)) out.push(`kvflow_events_sent_total${l} ${n}`);
    family(
      "kvflow_event_wakes_total",
      "counter",
      "Waiting steps the events this process stored from HTTP sends woke.",
    );
    out.push(`kvflow_event_wakes_total ${this.#wakes}`);
    family(
      "kvflow_event_runs_started_total",
      "counter",
      "Runs the events this process stored from HTTP sends started (event triggers).",
    );
    out.push(`kvflow_event_runs_started_total ${this.#eventStarts}`);

    family("kvflow_http_requests_total", "counter", "HTTP requests served, by route and status.");
    for (const [l, n] of sorted(this.#requests)) out.push(`kvflow_http_requests_total${l} ${n}`);

    const worker = this.#engine.worker;
    family("kvflow_worker_active_runs", "gauge", "Runs this process's worker drives now.");
    out.push(`kvflow_worker_active_runs ${worker.activeRuns}`);
    family("kvflow_worker_serving", "gauge", "1 while this process's worker is started.");
    out.push(`kvflow_worker_serving ${worker.serving ? 1 : 0}`);
    for (const g of this.#gauges) {
      family(g.name, "gauge", g.help);
      out.push(`${g.name} ${g.read()}`);
    }
    family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    out.push(`process_resident_memory_bytes ${residentMemoryBytes()}`);
    return out.join("\n") + "\n";
  }

  #observe(event: EngineEvent): void {
    if (event.type === "run") {
      const { id, pipeline, status } = event.run;
      if (status === "running") this.#pipelineOf.set(id, pipeline);
      else this.#pipelineOf.delete(id);
      if (TERMINAL.has(status)) increment(this.#finished, labels({ pipeline, status }));
    } else if (event.type === "task") {
      const pipeline = this.#pipelineOf.get(event.runId) ?? "unknown";
      if (event.status === "retrying") {
        increment(this.#retries, labels({ pipeline, step: event.step }));
      }
      const ended = event.status === "succeeded" || event.status === "failed" ||
        event.status === "retrying";
      if (ended && event.item === -1 && event.durationMs !== undefined) {
        const key = labels({ pipeline, step: event.step, outcome: event.status });
        let h = this.#durations.get(key);
        if (!h) {
          h = { buckets: DURATION_BUCKETS.map(() => 0), sum: 0, count: 0 };
          this.#durations.set(key, h);
        }
        const seconds = event.durationMs / 1000;
        DURATION_BUCKETS.forEach((le, i) => {
          if (seconds <= le) h.buckets[i]++;
        });
        h.sum += seconds;
        h.count++;
      }
    }
  }

  /** The runs by pipeline and status: the counts the status moves keep, read in one list. */
  async #runCounts(): Promise<{ at: number; counts: Map<string, Map<string, bigint>> }> {
    const at = Date.now();
    const counts = new Map<string, Map<string, bigint>>();
    for await (const e of this.#engine.kv.list<KvU64>({ prefix: keys.runCountPrefix() })) {
      const [, , pipeline, status] = e.key as [string, string, string, string];
      let byStatus = counts.get(pipeline);
      if (!byStatus) counts.set(pipeline, byStatus = new Map());
      byStatus.set(status, e.value.value);
    }
    return { at, counts };
  }

  /**
   * The alert counts. Older than the TTL, they are recounted in the background and this
   * scrape gets the last ones; only the first scrape, or any with a TTL of 0, waits for a
   * count. One count at a time.
   */
  async #alertCounts(): Promise<AlertCounts> {
    const counts = this.#counts;
    if (counts && Date.now() - counts.at < this.#ttl) return counts;
    const counting = this.#counting ??= this.#count()
      .then((fresh) => (this.#counts = fresh))
      .finally(() => (this.#counting = undefined));
    if (counts && this.#ttl > 0) {
      counting.catch(() => {});
      return counts;
    }
    return await counting;
  }

  async #count(): Promise<AlertCounts> {
    const at = Date.now();
    const alerts = new Map<string, number>();
    for await (
      const e of this.#engine.kv.list<AlertRecord>({ prefix: keys.allAlertsPrefix() })
    ) {
      // a missed deadline is counted below, from its miss record
      if (!e.value.deadline) increment(alerts, e.value.pipeline);
    }
    const deadlineMisses = new Map<string, number>();
    for await (const e of this.#engine.kv.list({ prefix: keys.deadlineMissPrefix() })) {
      increment(deadlineMisses, e.key[2] as string);
    }
    // what retention removed still counts: the counters never go down
    for await (
      const e of this.#engine.kv.list<KvU64>({ prefix: keys.prunedAlertCountPrefix() })
    ) {
      const [, , pipeline, kind] = e.key as [string, string, string, string];
      increment(kind === "deadline" ? deadlineMisses : alerts, pipeline, Number(e.value.value));
    }
    const [waiting, held, slots] = await Promise.all([
      this.#countWaiting(),
      this.#countHeld(),
      this.#countSlots(),
    ]);
    return { at, alerts, deadlineMisses, waiting, held, slots };
  }

  /** Held queued runs by pipeline and what holds them: the status index, then the records. */
  async #countHeld(): Promise<Map<string, Map<string, number>>> {
    const kv = this.#engine.kv;
    const held = new Map<string, Map<string, number>>();
    let ids: string[] = [];
    const read = async () => {
      const runs = await kv.getMany<RunRecord[]>(ids.map((id) => keys.run(id)));
      ids = [];
      for (const { value: run } of runs) {
        if (run?.status !== "queued" || !run.held) continue;
        let byWhat = held.get(run.pipeline);
        if (!byWhat) held.set(run.pipeline, byWhat = new Map());
        increment(byWhat, run.held.by);
      }
    };
    const queued = kv.list({ prefix: keys.runsByStatusPrefix("queued") }, {
      limit: FLOW_SCAN_LIMIT,
    });
    for await (const e of queued) {
      ids.push(e.key[e.key.length - 1] as string);
      if (ids.length === 10) await read();
    }
    if (ids.length > 0) await read();
    return held;
  }

  /** Held limit slots by scope, from the slot keys (`[kvflow, slot, scope, key, index]`). */
  async #countSlots(): Promise<Map<string, number>> {
    const slots = new Map<string, number>();
    const list = this.#engine.kv.list({ prefix: keys.allSlotsPrefix() }, {
      limit: FLOW_SCAN_LIMIT,
    });
    for await (const e of list) increment(slots, e.key[2] as string);
    return slots;
  }

  /** Waiting runs by pipeline and kind: the status index, then the records, ten a read. */
  async #countWaiting(): Promise<Map<string, Map<string, number>>> {
    const kv = this.#engine.kv;
    const waiting = new Map<string, Map<string, number>>();
    let ids: string[] = [];
    const read = async () => {
      const runs = await kv.getMany<RunRecord[]>(ids.map((id) => keys.run(id)));
      ids = [];
      for (const { value: run } of runs) {
        if (run?.status !== "waiting") continue;
        let byKind = waiting.get(run.pipeline);
        if (!byKind) waiting.set(run.pipeline, byKind = new Map());
        increment(byKind, run.waitingFor?.kind ?? "retry");
      }
    };
    for await (const e of kv.list({ prefix: keys.runsByStatusPrefix("waiting") })) {
      ids.push(e.key[e.key.length - 1] as string);
      if (ids.length === 10) await read();
    }
    if (ids.length > 0) await read();
    return waiting;
  }
}

function labels(values: Record<string, string>): string {
  const parts = Object.entries(values).map(([k, v]) =>
    `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`
  );
  return `{${parts.join(",")}}`;
}

function increment(map: Map<string, number>, key: string, by = 1): void {
  map.set(key, (map.get(key) ?? 0) + by);
}

function sorted<V>(map: Map<string, V>): [string, V][] {
  return [...map].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function round(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}
