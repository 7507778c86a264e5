/**
 * What kvflow stores about runs, steps, items and attempts: the records and their
 * statuses, as plain data. How each may change is `transitions.ts`.
 *
 * @module
 */
import type { Trigger } from "../define/context.ts";
import type { ErrorInfo } from "./errors.ts";

/** A run's status. */
export type RunStatus =
  | "queued"
  | "running"
  | "waiting"
  | "paused"
  | "succeeded"
  | "failed"
  | "cancelled";

/** A step's (or fan-out item's) status. */
export type StepStatus =
  | "pending"
  | "running"
  | "retrying"
  | "waiting"
  | "succeeded"
  | "failed"
  | "skipped";

/** Run statuses after which nothing happens until a person resumes or reruns. */
export const TERMINAL: ReadonlySet<RunStatus> = new Set(["succeeded", "failed", "cancelled"]);

/** Every run status, in the order a run usually passes them. */
export const RUN_STATUSES: readonly RunStatus[] = [
  "queued",
  "running",
  "waiting",
  "paused",
  "succeeded",
  "failed",
  "cancelled",
];

/** A run's OpenTelemetry trace: its trace id and the id of its root `run` span. */
export interface RunTrace {
  /** 32 hex digits. */
  traceId: string;
  /** 16 hex digits: the root span every driver session of the run nests under. */
  spanId: string;
}

/** The stored record of a run. */
export interface RunRecord {
  /** Sortable by creation time. */
  id: string;
  /** Pipeline name. */
  pipeline: string;
  /** Hash of the pipeline's step graph when the run was created (or last forced). */
  version: string;
  /**
   * The step graph the version hashes, to explain a change; null when it is too large
   * to keep in the run record (thousands of steps).
   */
  graph: Record<string, string[]> | null;
  /** Validated params. */
  params: Record<string, unknown>;
  /** `YYYY-MM-DD`. */
  logicalDate: string;
  /** For a scheduled or backfilled run: its schedule tick, ms since the epoch. */
  tick?: number | null;
  /** How it was started. */
  trigger: Trigger;
  /** The module the pipeline was loaded from, when it is not in the registry. */
  module?: string;
  /** Status. */
  status: RunStatus;
  /** Creation time, ms since epoch. */
  createdAt: number;
  /** First time a worker started it. */
  startedAt: number | null;
  /** When it last reached a terminal status. */
  endedAt: number | null;
  /** The time of this run's entry in the due-index, or null when it has none. */
  dueAt: number | null;
  /** Why it failed or was cancelled. */
  error: { step: string | null; message: string } | null;
  /** How many times it has failed; numbers its alerts. */
  failures: number;
  /** How many times a worker took it over from an expired lease. */
  takeovers: number;
  /** For a child run: the parent's run, step and item whose wait it ends. */
  parent?: { runId: string; step: string; item: number } | null;
  /** For a run an event started: that event's id. */
  event?: string | null;
  /**
   * The `Idempotency-Key` the run was created with, so pruning the run frees the key.
   * Records written before it was stored lack it; their keys are found by a scan.
   */
  idempotencyKey?: string | null;
  /**
   * The versionstamp of the run's bell (see `keys.bell`) when it was parked: a send or a
   * child's end rings the bell, which makes a parked run claimable before its due time.
   */
  bellSeen?: string | null;
  /** While parked with waiting steps: what the earliest of them waits for. */
  waitingFor?: WaitState | null;
  /** While `paused`: who paused it (the run itself, or its pipeline), when and why. */
  paused?: PauseState | null;
  /** Its priority, 0 to 10 (`define/flow.ts`); absent: 0. */
  priority?: number;
  /** Its trace, when it was created or driven with tracing on (`platform/tracing.ts`). */
  trace?: RunTrace;
  /**
   * The limit and throttle it counts against, with their keys computed from its params
   * when it was created (absent: none).
   */
  flow?: RunFlow | null;
  /**
   * The slot it holds under its limit while it is active (`keys.slot`); released in the
   * commit that ends it. Meaningless once the run ended (a resume takes a new one).
   */
  slot?: number | null;
  /** While `queued` and held back by flow control: by what, and until when. */
  held?: HeldState | null;
}

/** A run's limit and throttle, resolved for its params. */
export interface RunFlow {
  /** Concurrency limit: its scope, key and slots per key. */
  limit?: { scope: string; key: string; max: number };
  /** Throttle: its scope, key, starts per period and period. */
  throttle?: { scope: string; key: string; max: number; perMs: number };
  /** Debounce: the key its triggers were grouped by. */
  debounce?: { key: string };
}

/** Who holds a limit's slot (`keys.slot`): a run, or one attempt of a step of a run. */
export interface SlotHolder {
  /** The run, or the run whose step holds it. */
  run: string;
  /** The step whose attempt holds it, or null for the run itself. */
  step: string | null;
  /** The fan-out item, or -1. */
  item: number;
  /** The attempt holding it (0 for a run). */
  attempt: number;
  /** When it was taken, ms since the epoch. */
  at: number;
}

/** Why a queued run does not start yet. */
export interface HeldState {
  /**
   * `limit`: every slot of its key is taken; `throttle`: its key started its budget in
   * this period; `debounce`: its burst of triggers is not quiet yet.
   */
  by: "limit" | "throttle" | "debounce";
  /** The key. */
  key: string;
  /** Since when, ms since the epoch. */
  since: number;
  /** When it may start at the earliest (throttle, debounce), or null (a limit). */
  until: number | null;
  /** For people: "2 of 2 slots of 'acme' taken", say. */
  reason: string;
}

/**
 * A pause, as stored under the pause keys and, once the run let go of its lease and its
 * due entry, in a `paused` run's record.
 */
export interface PauseState {
  /** `run`: the run was paused; `pipeline`: its pipeline was, before the run started. */
  by: "run" | "pipeline";
  /** When the pause was committed, ms since the epoch. */
  at: number;
  /** Why, as given by whoever paused it. */
  reason: string;
}

/** What a waiting step (status `waiting`) waits for, and until when. */
export interface WaitState {
  /** A sleep, an event or a child run. */
  kind: "sleep" | "event" | "child";
  /** The step that waits. */
  step: string;
  /** The fan-out item that waits (a child per item), or -1. */
  item: number;
  /** When the wait began, ms since the epoch. */
  since: number;
  /** When the sleep ends or the timeout passes, ms since the epoch. */
  until: number;
  /** The awaited event names. */
  events?: string[];
  /** The payload field that must equal `value`, or "" for any event of the names. */
  field?: string;
  /** The correlation value, as a string. */
  value?: string;
  /** Events sent since then count (the run's creation, or the wait's window). */
  after?: number;
  /** The child run. */
  child?: string;
}

/** Who may write a run's checkpoints, and until when. */
export interface Lease {
  /** The worker's id. */
  owner: string;
  /** Host of the worker, to detect a dead local holder early. */
  host: string;
  /** Process id of the worker. */
  pid: number;
  /** Ms since epoch after which any worker may take the run over. */
  deadline: number;
  /**
   * Set by a pause of the held run: the rewrite changes the lease's versionstamp, so the
   * holder's next checkpoint fails its check, finds its own lease marked, and stops
   * starting steps before it commits again (see `store/pause.ts`).
   */
  paused?: true;
}

/** A reference to bytes stored in chunks. */
export interface BlobRef {
  /** Unique within the run. */
  id: string;
  /** Total bytes. */
  size: number;
  /** Number of chunks. */
  chunks: number;
}

/** A value as stored: inline when small, else serialized into a blob. */
export type Stored = { inline: unknown } | { blob: BlobRef };

/** The stored state of one step (or of one fan-out item). */
export interface TaskRecord {
  /** Status. */
  status: StepStatus;
  /** Attempts started so far. */
  attempt: number;
  /** Bumped by each rerun; part of the idempotency key. */
  generation: number;
  /**
   * Attempts made before the last resume or rerun reset `attempt`; attempt records are
   * numbered from here, so a resume adds to the history instead of overwriting it.
   */
  base?: number;
  /** When the current or last attempt started. */
  startedAt: number | null;
  /** When it reached its last status. */
  endedAt: number | null;
  /** When a retry is due. */
  nextAt: number | null;
  /** The last error. */
  error: ErrorInfo | null;
  /** While it waits (status `waiting`): what for, and until when. */
  wait?: WaitState;
  /**
   * Set by a resume or rerun on a task that had ended: when. A wait step started again
   * takes only events sent after it, not the one it took or timed out before.
   */
  after?: number;
  /** For a step (or item) that invokes a pipeline: its child run. */
  child?: string;
  /**
   * The limit slot its running attempt holds (`keys.slot` of scope, key, index): written
   * with the attempt's start, released with its end or by the takeover of a dead holder.
   */
  slot?: [string, string, number] | null;
  /** A skipped task skipped by a wait's timeout (`onTimeout: "skip"`): not a failure. */
  timedOut?: true;
  /** The output, once succeeded (absent for fan-out steps: their items hold it). */
  output?: Stored;
  /** For a fan-out step: how many items its list had. */
  items?: number;
  /**
   * Attempts that ended because their worker died (crash, kill or lost lease) since the
   * last resume or rerun. They do not spend the retry policy's attempts: a step whose
   * worker died runs again even with `attempts: 1`, up to `MAX_CRASHES` times.
   */
  crashes?: number;
  /**
   * Attempts that a gracefully stopping worker aborted and handed back (see
   * `releaseTask`) since the last resume or rerun. Like crashes they do not spend
   * the retry policy's attempts; unlike crashes they have no cap: a rolling restart is
   * not the step's fault.
   */
  released?: number;
}

/** One line logged by a step. */
export interface LogLine {
  /** Ms since epoch. */
  at: number;
  /** Level. */
  level: "debug" | "info" | "warn" | "error";
  /** Message. */
  message: string;
  /** Structured fields. */
  fields?: Record<string, unknown>;
}

/** The stored record of one attempt. */
export interface AttemptRecord {
  /** Step name. */
  step: string;
  /** Fan-out item index, or -1. */
  item: number;
  /** Position in the task's whole history, from 1: resumes and reruns continue it. */
  n: number;
  /** The attempt number `ctx.attempt` had: from 1 after each resume or rerun. */
  attempt: number;
  /** How it ended. */
  status: "succeeded" | "failed" | "crashed" | "interrupted";
  /** Start, ms since epoch. */
  startedAt: number;
  /** End, ms since epoch (for a crash: when the crash was found). */
  endedAt: number;
  /** Error, unless it succeeded. */
  error: ErrorInfo | null;
  /** Log lines. */
  logs: LogLine[];
}
