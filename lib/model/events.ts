/**
 * What kvflow stores about events and the waits they end: the event record, what a send
 * delivers to a waiting step, the wait's index entry, and what an event did to each run.
 * Plain data; `store/events.ts` writes and reads them.
 *
 * @module
 */
import type { ErrorInfo } from "./errors.ts";
import type { RunStatus } from "./records.ts";
import { UsageError } from "./errors.ts";

/** How an event was sent. */
export type EventSource = "code" | "cli" | "http";

/** A stored event. */
export interface EventRecord {
  /** Its id: given by the sender (which makes a send idempotent) or made up. */
  id: string;
  /** Its name. */
  name: string;
  /** Its payload: plain JSON data. */
  data: unknown;
  /** When it was stored, ms since the epoch. */
  at: number;
  /** How it was sent. */
  source: EventSource;
  /** The correlations it is indexed by: [field, value] ("" and "" for by name only). */
  index: [string, string][];
  /** The runs it started (event triggers). */
  started: string[];
}

/** What a send or a child's end left in a waiting step's inbox. */
export type Delivery =
  | {
    kind: "event";
    /** The event: name, id and time. */
    event: { name: string; id: string; at: number };
    /** Its payload. */
    data: unknown;
    /** The time of the due entry the delivery wrote (the driver deletes it). */
    dueAt: number;
  }
  | {
    kind: "child";
    /** The child run. */
    child: string;
    /** How it ended. */
    status: RunStatus;
    /** Why it failed or was cancelled. */
    error: { step: string | null; message: string } | null;
    /** The time of the due entry the delivery wrote. */
    dueAt: number;
  };

/** The value of a wait's index entry: who waits, and for what else. */
export interface WaitEntry {
  /** The waiting run. */
  runId: string;
  /** Its waiting step. */
  step: string;
  /** Its waiting item, or -1. */
  item: number;
  /** Every event name the wait takes (one entry each). */
  names: string[];
  /** The payload field it matches by ("" for any event of the names). */
  field: string;
  /** The value that field must have. */
  value: string;
}

/** What an event did to a run. */
export interface EventEffect {
  /**
   * Woke a waiting step, started the run, joined a debounced burst's queued run (which
   * starts with the last trigger's params), or did not pass the wait's schema.
   */
  kind: "woke" | "started" | "joined" | "mismatch";
  /** The run. */
  runId: string;
  /** The waiting step ("" for a run the event started). */
  step: string;
  /** The waiting item, or -1. */
  item: number;
  /** When, ms since the epoch. */
  at: number;
  /** For a mismatch: why. */
  message?: string;
}

/** The due-index value of a delivery's wake-up entry (a run's own entry holds its id). */
export interface RungDue {
  rung: [step: string, item: number];
}

/** Most characters of a correlation value (a longer one matches no wait). */
export const MAX_CORRELATION_LENGTH = 200;

/** Most bytes of an event's payload, as JSON. */
export const MAX_EVENT_BYTES = 32 * 1024;

/** Most characters of an event id. */
export const MAX_EVENT_ID_LENGTH = 100;
const EVENT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$/;

/** How long events are kept by default: 30 days. */
export const DEFAULT_EVENT_RETENTION_MS = 30 * 86_400_000;

/**
 * Checks an event id.
 *
 * @throws {UsageError} when it is not 1 to 100 letters, digits, '_', '.', ':' or '-'
 */
export function checkEventId(id: unknown): string {
  if (typeof id === "string" && EVENT_ID.test(id)) return id;
  throw new UsageError(
    `Invalid event id ${
      JSON.stringify(typeof id === "string" ? id.slice(0, 120) : id)
    }: use 1 to ${MAX_EVENT_ID_LENGTH} letters, digits, '_', '.', ':' or '-', starting with a letter or digit`,
    "invalid_event",
    [{ path: ["id"], message: "Invalid event id" }],
  );
}

/** A new event id: sortable by time, random after. */
export function newEventId(now: number): string {
  const random = crypto.getRandomValues(new Uint8Array(8));
  return `ev-${now.toString(36)}-${
    Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("")
  }`;
}

/** The id of the run an event starts for a pipeline: one per event id and pipeline. */
export function eventRunId(pipeline: string, eventId: string): string {
  // a pipeline name has no ':', so the id names its pipeline and event unambiguously
  return `${pipeline}:on:${eventId}`;
}

/** The id of the child run a step (and item) of a parent run starts. */
export function childRunId(parent: string, step: string, item: number): string {
  // a step name has no ':'
  const id = `${parent}:${step}${item >= 0 ? `:${item}` : ""}`;
  // run ids have at most 200 characters: a deep chain of children gets a hashed tail
  if (id.length <= 200) return id;
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  return `${id.slice(0, 180)}:${(h >>> 0).toString(16)}`;
}

/** The correlation value of a payload's field, as indexed: a string, or undefined. */
export function correlationOf(data: unknown, field: string): string | undefined {
  if (field === "") return "";
  if (data === null || typeof data !== "object" || Array.isArray(data)) return undefined;
  const value = (data as Record<string, unknown>)[field];
  if (typeof value === "string") return value.length <= MAX_CORRELATION_LENGTH ? value : undefined;
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  if (typeof value === "boolean") return String(value);
  return undefined;
}

/** A child's failure as its parent's step records it. */
export function childError(
  child: string,
  status: RunStatus,
  error: { step: string | null; message: string } | null,
): ErrorInfo {
  return {
    name: "ChildRunFailed",
    message: `Child run ${child} ${status}${error?.step ? ` at step '${error.step}'` : ""}: ${
      error?.message ?? status
    }`,
    retryable: false,
  };
}
