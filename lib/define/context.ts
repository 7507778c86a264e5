/**
 * What a step sees when it runs: its run, its attempt, its logger, artifacts, and the
 * signal that aborts it.
 *
 * @module
 */

/** How a run was started. */
export type Trigger = "cli" | "http" | "schedule" | "backfill" | "event" | "child";

/** What a step knows about the run it belongs to. */
export interface RunInfo {
  /** The run id. */
  readonly id: string;
  /** The pipeline's name. */
  readonly pipeline: string;
  /** The validated params. */
  readonly params: Readonly<Record<string, unknown>>;
  /**
   * The logical date (`YYYY-MM-DD`) the run is about: the schedule tick for scheduled runs,
   * the `--date` given, or the day the run was created. "Yesterday" means the day before this.
   */
  readonly logicalDate: string;
  /** For a scheduled or backfilled run, its schedule tick as an ISO date-time; else null. */
  readonly tick: string | null;
  /** How the run was started. */
  readonly trigger: Trigger;
}

/** Structured logging; lines are stored with the attempt that wrote them. */
export interface Logger {
  /** Logs a debug line. */
  debug(message: string, fields?: Record<string, unknown>): void;
  /** Logs an info line. */
  info(message: string, fields?: Record<string, unknown>): void;
  /** Logs a warning. */
  warn(message: string, fields?: Record<string, unknown>): void;
  /** Logs an error line. */
  error(message: string, fields?: Record<string, unknown>): void;
}

/** A stored artifact, passed between steps and shown by reference. */
export interface ArtifactRef {
  /** Marks the value as an artifact reference. */
  readonly artifact: true;
  /** The run that stored it. */
  readonly runId: string;
  /** Its name, unique within the run. */
  readonly name: string;
  /** Its MIME type. */
  readonly contentType: string;
  /** Its size in bytes. */
  readonly size: number;
}

/** Options of {@linkcode StepContext.artifact}. */
export interface ArtifactOptions {
  /** MIME type; default `application/octet-stream` (`text/plain` for strings). */
  contentType?: string;
}

/** The second argument of every step function. */
export interface StepContext {
  /** The run this attempt belongs to. */
  readonly run: RunInfo;
  /** The step's name. */
  readonly step: string;
  /** This attempt's number, from 1. A retry or a crash recovery increments it. */
  readonly attempt: number;
  /**
   * Stable across attempts, resumes and crash recoveries of this step (or item); changes
   * only on an explicit rerun. Pass it to email and accounting APIs.
   */
  readonly idempotencyKey: string;
  /** Aborted when the step times out or the run is cancelled or interrupted. */
  readonly signal: AbortSignal;
  /** Structured logger whose lines are stored with this attempt. */
  readonly log: Logger;
  /**
   * Stores bytes as an artifact of the run and returns a reference to return or pass on.
   * Storing the same name again replaces it.
   */
  artifact(
    name: string,
    data: Uint8Array | string,
    options?: ArtifactOptions,
  ): Promise<ArtifactRef>;
  /** Reads an artifact of this run back, by reference or by name. */
  readArtifact(ref: ArtifactRef | string): Promise<Uint8Array>;
}

/** The context of one item of a fan-out step. */
export interface ItemContext<In> extends StepContext {
  /** The item's position in the list and the list's length. */
  readonly item: { readonly index: number; readonly total: number };
  /** The outputs of the steps this step needs. */
  readonly inputs: In;
}
