/**
 * What a waiting run or step waits for, in words, for `status`, `runs` and a run in the
 * foreground: "sleeping until …", "waiting for event X or Y with field = value until …",
 * "waiting for child run … until …", and the command that sends the awaited event.
 *
 * @module
 */
import { formatMs } from "../define/duration.ts";
import type { RunRecord, WaitState } from "../model/records.ts";

/**
 * A time as `2026-11-03 01:30:00 UTC (in 47h 59m)`: absolute, so it reads the same in a
 * log tomorrow, and relative, so it reads at a glance now.
 */
export function dueText(at: number, now = Date.now()): string {
  const absolute = `${new Date(at).toISOString().slice(0, 19).replace("T", " ")} UTC`;
  const delta = at - now;
  return `${absolute} (${delta >= 0 ? `in ${formatMs(delta)}` : `${formatMs(-delta)} ago`})`;
}

/** What a wait waits for and until when, as one phrase. */
export function waitText(wait: WaitState, now = Date.now()): string {
  const until = dueText(wait.until, now);
  switch (wait.kind) {
    case "sleep":
      return `sleeping until ${until}`;
    case "child":
      return `waiting for child run ${wait.child ?? "(starting)"} until ${until}`;
    case "event": {
      const names = (wait.events ?? []).join(" or ");
      const match = wait.field ? ` with ${wait.field} = ${wait.value}` : "";
      return `waiting for event ${names}${match} until ${until}`;
    }
  }
}

/**
 * Why a run that is `waiting` is, and when it is due: what its earliest waiting step
 * waits for, or a retry; null for a run that does not wait.
 */
export function runWaitText(run: RunRecord, now = Date.now()): string | null {
  if (run.status !== "waiting") return null;
  const wait = run.waitingFor;
  if (wait) return `${stepName(wait.step, wait.item)} ${waitText(wait, now)}`;
  return run.dueAt === null ? "waiting" : `a retry is due ${dueText(run.dueAt, now)}`;
}

/** A step's name, with its item for a fan-out item: `step[3]`. */
export function stepName(step: string, item: number): string {
  return item >= 0 ? `${step}[${item}]` : step;
}

/**
 * The command that sends the first event a wait takes, with its correlation filled in:
 * `deno task send nightly.approved --data '{"date":"2026-11-01"}'`; null for other waits.
 */
export function sendCommand(wait: WaitState): string | null {
  const name = wait.kind === "event" ? wait.events?.[0] : undefined;
  if (name === undefined) return null;
  const data = wait.field ? JSON.stringify({ [wait.field]: wait.value }) : "{}";
  return `deno task send ${name} --data '${data.replaceAll("'", "'\\''")}'`;
}
