/**
 * Progress lines for a run in the foreground, and the text forms of a run's status and
 * of run lists. Plain lines, one per change, so they read the same in a terminal, a log
 * file and CI; colour only on a terminal.
 *
 * @module
 */
import { formatMs } from "../define/duration.ts";
import { heldText } from "../define/flow_view.ts";
import type { RunEvent } from "../engine/driver/driver.ts";
import { type AttemptRecord, type RunRecord, type TaskRecord, TERMINAL } from "../model/records.ts";
import type { Pipeline } from "../define/pipeline.ts";
import { env } from "../platform/env.ts";
import { runWaitText, sendCommand, stepName, waitText } from "./waiting.ts";

const MARK: Record<string, string> = {
  pending: "·",
  running: "▸",
  retrying: "↻",
  waiting: "⏸",
  succeeded: "✓",
  failed: "✗",
  skipped: "–",
};

/** Colours text on a terminal; identity elsewhere. */
export interface Paint {
  /** Green. */
  ok(text: string): string;
  /** Red. */
  bad(text: string): string;
  /** Yellow. */
  warn(text: string): string;
  /** Dim. */
  dim(text: string): string;
}

/** A {@linkcode Paint} for `stream`: ANSI colours on a terminal unless `NO_COLOR` is set. */
export function paintFor(stream: { isTerminal(): boolean }): Paint {
  const on = stream.isTerminal() && !env("NO_COLOR");
  const wrap = (code: number) => (text: string) => on ? `\x1b[${code}m${text}\x1b[0m` : text;
  return { ok: wrap(32), bad: wrap(31), warn: wrap(33), dim: wrap(2) };
}

/**
 * Returns an event handler that prints one line per step change of run `runId` (of
 * every run when `runId` is undefined).
 *
 * @param runId the run to follow
 * @param write where lines go
 * @param paint colours
 */
export function progressPrinter(
  runId: string | undefined,
  write: (line: string) => void,
  paint: Paint,
): (event: RunEvent) => void {
  return (event) => {
    if (event.type === "run") {
      const { run } = event;
      if ((runId === undefined || run.id === runId) && run.status === "waiting" && run.waitingFor) {
        const wait = run.waitingFor;
        write(
          `  ${paint.warn(MARK.waiting)} ${stepName(wait.step, wait.item).padEnd(24)} ${
            waitText(wait)
          }`,
        );
      }
      return;
    }
    if (runId !== undefined && event.runId !== runId) return;
    const name = event.item >= 0 ? `${event.step}[${event.item}]` : event.step;
    const label = name.padEnd(24);
    const attempt = `attempt ${event.attempt}`;
    switch (event.status) {
      case "running":
        if (event.item >= 0 && event.attempt === 1) return;
        if (event.item < 0 && event.items !== undefined) {
          write(`  ${MARK.running} ${label} ${event.items} items`);
          return;
        }
        write(`  ${paint.dim(`${MARK.running} ${label} ${attempt}`)}`);
        return;
      case "succeeded":
        if (event.item >= 0 && event.attempt === 1) return;
        write(
          `  ${paint.ok(MARK.succeeded)} ${label} ${attempt}  ${formatMs(event.durationMs ?? 0)}${
            event.items !== undefined ? `  ${event.items} items` : ""
          }`,
        );
        return;
      case "retrying": {
        const wait = event.nextAt ? formatMs(Math.max(0, event.nextAt - Date.now())) : "soon";
        write(
          `  ${paint.warn(MARK.retrying)} ${label} ${attempt} failed: ${
            firstLine(event.error?.message)
          } — retry in ${wait}`,
        );
        return;
      }
      case "failed":
        if (event.item < 0 && event.items !== undefined) {
          write(`  ${paint.bad(MARK.failed)} ${label} failed: ${firstLine(event.error?.message)}`);
          return;
        }
        write(
          `  ${paint.bad(MARK.failed)} ${label} failed after ${event.attempt} attempt${
            event.attempt === 1 ? "" : "s"
          }: ${firstLine(event.error?.message)}`,
        );
        return;
      case "skipped":
        write(`  ${paint.dim(`${MARK.skipped} ${label} skipped`)}`);
        return;
    }
  };
}

/** The lines `status` prints for a run. */
export function statusLines(
  run: RunRecord,
  pipeline: Pipeline<unknown> | undefined,
  steps: ReadonlyMap<string, TaskRecord>,
  attempts: readonly AttemptRecord[],
  paint: Paint,
  items: ReadonlyMap<string, ReadonlyMap<number, TaskRecord>> = new Map(),
): string[] {
  const now = Date.now();
  const waiting = runWaitText(run, now);
  const send = run.status === "waiting" && run.waitingFor ? sendCommand(run.waitingFor) : null;
  const lines = [
    `run ${run.id}`,
    `  pipeline   ${run.pipeline} (version ${run.version})`,
    `  status     ${colour(run.status, paint)}${heldNote(run, now)}${
      run.error ? `: ${firstLine(run.error.message)}` : waiting ? `: ${waiting}` : ""
    }`,
    ...(run.priority ? [`  priority   ${run.priority}`] : []),
    ...(run.paused ? pausedLines(run) : []),
    ...(send ? [`  send       ${send}`] : []),
    `  trigger    ${run.trigger}, logical date ${run.logicalDate}`,
    ...(run.parent
      ? [`  parent     run ${run.parent.runId}, step ${stepName(run.parent.step, run.parent.item)}`]
      : []),
    ...(run.event ? [`  event      started by event ${run.event}`] : []),
    `  params     ${JSON.stringify(run.params)}`,
    `  created    ${new Date(run.createdAt).toISOString()}${
      run.endedAt && run.startedAt ? `, took ${formatMs(run.endedAt - run.startedAt)}` : ""
    }`,
    "",
    `    ${"step".padEnd(24)} ${"status".padEnd(11)} attempts  duration`,
  ];
  const names = pipeline ? pipeline.steps.map((s) => s.name) : Object.keys(run.graph ?? {});
  for (const name of names) {
    const record = steps.get(name);
    const status = record?.status ?? "pending";
    const duration = record?.endedAt && record.startedAt
      ? formatMs(record.endedAt - record.startedAt)
      : "";
    lines.push(
      `  ${MARK[status]} ${name.padEnd(24)} ${colour(status.padEnd(11), paint, status)} ${
        String(record?.attempt ?? 0).padStart(8)
      }  ${duration}${record?.items !== undefined ? `  (${record.items} items)` : ""}${
        record ? taskNote(record, now) : ""
      }`,
    );
    const waitingItems = [...(items.get(name) ?? [])].filter(([, r]) => r.status === "waiting");
    for (const [item, record] of waitingItems.slice(0, ITEM_LINES)) {
      lines.push(
        `      ${MARK.waiting} ${stepName(name, item).padEnd(22)} ${
          colour("waiting".padEnd(11), paint)
        }${taskNote(record, now)}`,
      );
    }
    if (waitingItems.length > ITEM_LINES) {
      lines.push(`      … and ${waitingItems.length - ITEM_LINES} more waiting items`);
    }
  }
  const failed = names.map((n) => [n, steps.get(n)] as const).filter(([, r]) =>
    r?.status === "failed"
  );
  for (const [name, record] of failed) {
    lines.push("", paint.bad(`  ${name} failed: ${record!.error?.message ?? ""}`));
    const last = attempts.filter((a) => a.step === name && a.status !== "succeeded").at(-1);
    const stack = last?.error?.stack?.split("\n").slice(1, 6) ?? [];
    for (const frame of stack) lines.push(paint.dim(`    ${frame.trim()}`));
    for (const log of last?.logs.slice(-10) ?? []) {
      lines.push(
        `    ${
          paint.dim(new Date(log.at).toISOString().slice(11, 23))
        } ${log.level} ${log.message}${log.fields ? ` ${JSON.stringify(log.fields)}` : ""}`,
      );
    }
  }
  if (run.status === "failed" || run.status === "cancelled") {
    lines.push("", `  resume with: deno task resume ${run.id}`);
  }
  return lines;
}

/** Waiting items listed under their step by `status`; the rest are counted. */
const ITEM_LINES = 10;

/** What a task waits for, or the child run it started, after its status line. */
function taskNote(record: TaskRecord, now: number): string {
  if (record.status === "waiting" && record.wait) return `  ${waitText(record.wait, now)}`;
  if (record.timedOut) return "  (its wait timed out)";
  if (record.child) return `  child run ${record.child}`;
  return "";
}

/** One line per run, for `runs`. */
export function runLines(runs: readonly RunRecord[], paint: Paint): string[] {
  if (runs.length === 0) return ["no runs"];
  const lines = [
    `${"run".padEnd(24)} ${"pipeline".padEnd(16)} ${"status".padEnd(10)} ${"trigger".padEnd(9)} ${
      "date".padEnd(10)
    } duration`,
  ];
  for (const r of runs) {
    const duration = r.endedAt && r.startedAt ? formatMs(r.endedAt - r.startedAt) : "";
    const waiting = runWaitText(r);
    lines.push(
      `${r.id.padEnd(24)} ${r.pipeline.padEnd(16)} ${
        colour(r.status.padEnd(10), paint, r.status)
      } ${r.trigger.padEnd(9)} ${r.logicalDate} ${duration}${waiting ? ` ${waiting}` : ""}${
        heldNote(r)
      }${pauseNote(r)}${r.priority ? ` priority ${r.priority}` : ""}`,
    );
  }
  return lines;
}

/** ` (held: limit — 2 of 2 slots of 'acme' taken)` after a held queued run's status. */
function heldNote(run: RunRecord, now = Date.now()): string {
  return run.status === "queued" && run.held ? ` (${heldText(run.held, now)})` : "";
}

/**
 * ` (pipeline paused: nightly maintenance)` after a paused run's status in a list, or
 * ` (pausing: …)` while its holder finishes the attempts in flight (`status` says more).
 */
function pauseNote(run: RunRecord): string {
  const pause = run.paused;
  if (!pause || TERMINAL.has(run.status)) return "";
  const by = pause.by === "pipeline" ? "pipeline paused" : "paused";
  return ` (${run.status === "paused" ? by : `pausing, ${by}`}: ${pause.reason})`;
}

function colour(text: string, paint: Paint, status = text): string {
  if (status === "succeeded") return paint.ok(text);
  if (status === "failed" || status === "cancelled") return paint.bad(text);
  if (status === "retrying" || status === "waiting") return paint.warn(text);
  return text;
}

function firstLine(text: string | undefined): string {
  return (text ?? "").split("\n")[0];
}

/** What `status` says of a paused run: who paused it, when, why, and the way on. */
function pausedLines(run: RunRecord): string[] {
  const pause = run.paused!;
  const by = pause.by === "pipeline" ? `pipeline ${run.pipeline}` : "run";
  const when = new Date(pause.at).toISOString();
  return [
    `  paused     ${by} paused at ${when}: ${pause.reason}${
      run.status === "paused" ? "" : " (attempts in flight finish first)"
    }`,
    `  unpause    deno task unpause ${pause.by === "pipeline" ? run.pipeline : run.id}`,
  ];
}
