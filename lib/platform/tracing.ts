/**
 * OpenTelemetry traces of runs, through `@opentelemetry/api` and Deno's built-in
 * exporter (on when the process starts with `OTEL_DENO=true`).
 *
 * One trace per run, across processes: the process that creates a run makes a short
 * `run <pipeline>` span and the run record keeps its ids (`RunRecord.trace`). Every
 * driver session (claim to park, end, hand-back or loss) is a `session <pipeline>` span
 * under that remote parent; each step attempt and fan-out item attempt is a span under
 * the session, and so are the retry backoffs and the waits (sleep, event, child), made
 * when they end with the time they began. A child run's root span nests under the
 * session of its parent that started it.
 *
 * With tracing off, {@linkcode tracingOn} is false: no span is made, no id stored, and
 * the driver's step path only tests a field that is undefined.
 *
 * This is a seam: a Node.js port would set up an OpenTelemetry SDK instead.
 *
 * @module
 */
import type { Attributes, Context, Span } from "@opentelemetry/api";
import type { ErrorInfo } from "../model/errors.ts";
import type { RunRecord, RunTrace } from "../model/records.ts";
import { env } from "./env.ts";

/** Whether this process exports traces: Deno's exporter is on (`OTEL_DENO=true`). */
export const tracingOn: boolean = readFlag();

function readFlag(): boolean {
  try {
    return env("OTEL_DENO") === "true";
  } catch {
    return false; // no permission to read the environment: no tracing
  }
}

/**
 * The OpenTelemetry API, imported only when tracing is on: loading it costs a process's
 * start ≈ 15 ms, and with tracing off nothing here is called.
 */
const otel = tracingOn ? await import("@opentelemetry/api") : undefined;

const tracer = otel?.trace.getTracer("kvflow");

/** What a run's spans carry: pipeline, run id, logical date, trigger. */
function runAttributes(
  run: Pick<RunRecord, "id" | "pipeline" | "logicalDate" | "trigger">,
): Attributes {
  return {
    "kvflow.pipeline": run.pipeline,
    "kvflow.run_id": run.id,
    "kvflow.logical_date": run.logicalDate,
    "kvflow.trigger": run.trigger,
  };
}

/** The context of a span made in another process (or earlier), to make children under. */
function remoteContext(parent: RunTrace): Context {
  return otel!.trace.setSpanContext(otel!.ROOT_CONTEXT, {
    traceId: parent.traceId,
    spanId: parent.spanId,
    traceFlags: otel!.TraceFlags.SAMPLED,
    isRemote: true,
  });
}

/**
 * Begins a run's trace: makes its `run <pipeline>` span (under `parent` for a child run,
 * else under the active span, such as the HTTP request that creates it) and ends it.
 *
 * @returns the ids to store with the run, or undefined when tracing is off
 */
export function startRunTrace(
  run: Pick<RunRecord, "id" | "pipeline" | "logicalDate" | "trigger" | "parent">,
  parent?: RunTrace,
): RunTrace | undefined {
  if (!tracingOn) return undefined;
  const attributes = runAttributes(run);
  if (run.parent) attributes["kvflow.parent_run_id"] = run.parent.runId;
  const span = tracer!.startSpan(
    `run ${run.pipeline}`,
    { attributes },
    parent ? remoteContext(parent) : otel!.context.active(),
  );
  span.end();
  const { traceId, spanId } = span.spanContext();
  return { traceId, spanId };
}

/** An attempt's span and the context its body runs in. */
export interface AttemptSpan {
  span: Span;
  context: Context;
}

/** The spans of one driver session of a run: the session and what happens in it. */
export class SessionSpans {
  readonly #span: Span;
  readonly #context: Context;
  readonly #attributes: Attributes;

  /**
   * Opens the session span of a claimed run under the run's stored trace.
   *
   * @param run the claimed run
   * @param runTrace the run's trace
   */
  constructor(run: RunRecord, runTrace: RunTrace) {
    this.#attributes = runAttributes(run);
    this.#span = tracer!.startSpan(`session ${run.pipeline}`, {
      attributes: { ...this.#attributes, "kvflow.takeovers": run.takeovers },
    }, remoteContext(runTrace));
    this.#context = otel!.trace.setSpan(otel!.ROOT_CONTEXT, this.#span);
  }

  /** The session span's ids: a child run created in this session nests under them. */
  get trace(): RunTrace {
    const { traceId, spanId } = this.#span.spanContext();
    return { traceId, spanId };
  }

  /** Starts the span of an attempt of `step` (item `item`, or -1). */
  attempt(step: string, item: number, attempt: number): AttemptSpan {
    const span = tracer!.startSpan(
      item < 0 ? `step ${step}` : `step ${step}[${item}]`,
      { attributes: this.#taskAttributes(step, item, { "kvflow.attempt": attempt }) },
      this.#context,
    );
    return { span, context: otel!.trace.setSpan(this.#context, span) };
  }

  /**
   * Ends an attempt's span with its outcome, and its error recorded when it failed, at
   * `end` (ms since the epoch: the time its result was recorded) or now.
   */
  endAttempt(
    attempt: AttemptSpan,
    outcome: string,
    error?: ErrorInfo | null,
    end?: number,
  ): void {
    endSpan(attempt.span, outcome, error, end);
  }

  /**
   * Records a span that began before now and ends now: a retry's backoff, or a wait
   * (sleep, event, child), possibly begun in another session.
   */
  interval(
    name: string,
    task: { step: string; item: number; start: number; end: number; outcome: string },
    attributes: Attributes,
    error?: ErrorInfo | null,
  ): void {
    const span = tracer!.startSpan(
      task.item < 0 ? `${name} ${task.step}` : `${name} ${task.step}[${task.item}]`,
      { startTime: task.start, attributes: this.#taskAttributes(task.step, task.item, attributes) },
      this.#context,
    );
    endSpan(span, task.outcome, error, task.end);
  }

  /** Ends the session with the driver's outcome (succeeded, failed, waiting, lost, ...). */
  end(outcome: string): void {
    endSpan(
      this.#span,
      outcome,
      outcome === "failed" ? { name: "RunFailed", message: "Run failed", retryable: false } : null,
    );
  }

  #taskAttributes(step: string, item: number, more: Attributes): Attributes {
    const attributes: Attributes = { ...this.#attributes, "kvflow.step": step, ...more };
    if (item >= 0) attributes["kvflow.item"] = item;
    return attributes;
  }
}

/** Runs `fn` with `attempt`'s span active: its `fetch` calls and console lines nest under it. */
export function withinAttempt<T>(attempt: AttemptSpan, fn: () => T): T {
  return otel!.context.with(attempt.context, fn);
}

/** The trace id of the active span, if any (for log lines). */
export function activeTraceId(): string | undefined {
  if (!tracingOn) return undefined;
  return otel!.trace.getActiveSpan()?.spanContext().traceId;
}

function endSpan(span: Span, outcome: string, error?: ErrorInfo | null, end?: number): void {
  span.setAttribute("kvflow.outcome", outcome);
  if (error) {
    span.recordException({ name: error.name, message: error.message, stack: error.stack });
    span.setStatus({ code: otel!.SpanStatusCode.ERROR, message: error.message });
  }
  span.end(end);
}
