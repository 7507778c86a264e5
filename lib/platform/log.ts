/**
 * The lines kvflow prints while it serves (startup, errors, alerts, step logs): readable
 * text by default, one JSON object a line with `KVFLOW_LOG=json`, for log shippers.
 *
 * kvflow's own lines go to stderr, as they always did. A step's `ctx.log` lines are
 * printed too when they have somewhere to go: with `KVFLOW_LOG=json`, or with tracing
 * on, where Deno's exporter sends console output as OpenTelemetry log records carrying
 * the active span (the attempt's), so each line lands in its step's trace.
 *
 * @module
 */
import { env } from "./env.ts";
import { activeTraceId, tracingOn } from "./tracing.ts";

/** How bad a line is. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** What a line is about, when known. */
export interface LogFields {
  /** Run id. */
  run?: string;
  /** Step name. */
  step?: string;
  /** Fan-out item index. */
  item?: number;
  /** Attempt number, from 1. */
  attempt?: number;
  /** More fields (a step's own log fields). */
  fields?: Record<string, unknown>;
}

/** Whether lines are printed as JSON (`KVFLOW_LOG=json`). */
export const jsonLogs: boolean = readFormat();

/** Whether a step's `ctx.log` lines are printed: as JSON, or for the trace exporter. */
export const printStepLogs: boolean = jsonLogs || tracingOn;

function readFormat(): boolean {
  try {
    return env("KVFLOW_LOG") === "json";
  } catch {
    return false; // no permission to read the environment: text
  }
}

/**
 * A line as printed: `message` itself, or with `KVFLOW_LOG=json` one JSON object with
 * `time`, `level`, `message` and what is known of run, step, item, attempt and trace id.
 *
 * @example Text by default
 * ```ts
 * import { formatLogLine } from "./log.ts";
 * console.log(formatLogLine("info", "kvflow: worker started"));
 * ```
 */
export function formatLogLine(level: LogLevel, message: string, about: LogFields = {}): string {
  if (!jsonLogs) return message;
  const line: Record<string, unknown> = { time: new Date().toISOString(), level, message };
  if (about.run !== undefined) line.run = about.run;
  if (about.step !== undefined) line.step = about.step;
  if (about.item !== undefined && about.item >= 0) line.item = about.item;
  if (about.attempt !== undefined) line.attempt = about.attempt;
  const traceId = activeTraceId();
  if (traceId) line.traceId = traceId;
  if (about.fields) line.fields = about.fields;
  return JSON.stringify(line);
}

/** Prints one of kvflow's own lines on stderr. */
export function logLine(level: LogLevel, message: string, about?: LogFields): void {
  console.error(formatLogLine(level, message, about));
}

/**
 * Prints a step's `ctx.log` line with the console method of its level, so that the
 * exporter gives it its severity; called inside the attempt's span.
 */
export function logStepLine(level: LogLevel, message: string, about: LogFields): void {
  const text = jsonLogs ? formatLogLine(level, message, about) : `${stepPrefix(about)}${message}`;
  console[level](text);
}

function stepPrefix(about: LogFields): string {
  const item = about.item !== undefined && about.item >= 0 ? `[${about.item}]` : "";
  return `kvflow: run ${about.run} step ${about.step}${item} attempt ${about.attempt}: `;
}
