/**
 * The optional approval gate, `approval`: with `--param approval=required`, the night's
 * journal entries wait for finance's word — the event `nightly.approved` or
 * `nightly.rejected` whose `date` is the run's logical date. The run holds nothing while
 * it waits; after two days without an answer the step fails (resume to wait again).
 * Without the param the step ends at once and the night posts on its own.
 *
 * ```sh
 * deno task run nightly --date 2026-11-01 --param approval=required
 * deno task send nightly.approved --data '{"date":"2026-11-01"}'
 * deno task send nightly.rejected --data '{"date":"2026-11-01","reason":"totals look wrong"}'
 * ```
 *
 * @module
 */
import { NonRetryableError, waitFor } from "../../lib/mod.ts";

/** The events of the gate: the first to arrive for the night decides. */
export const APPROVAL_EVENTS = { approved: "nightly.approved", rejected: "nightly.rejected" };

/** How long the gate waits for an answer before the step fails. */
export const APPROVAL_TIMEOUT = "2d";

/** The step: waits only when the run's params say `approval: "required"`. */
export const approval = waitFor("approval", {
  events: { [APPROVAL_EVENTS.approved]: null, [APPROVAL_EVENTS.rejected]: null },
  match: { field: "date", equals: (_inputs, run) => run.logicalDate },
  timeout: APPROVAL_TIMEOUT,
  onTimeout: "fail",
  when: (_inputs, run) => run.params.approval === "required",
});

/**
 * Refuses to post a night that finance rejected.
 *
 * @param decision the gate's output
 * @throws {NonRetryableError} naming the reason the rejection gave
 */
export function checkApproval(decision: { event: string | null; data: unknown }): void {
  if (decision.event !== APPROVAL_EVENTS.rejected) return;
  const reason = (decision.data as { reason?: unknown } | null)?.reason;
  throw new NonRetryableError(
    `Rejected by finance: ${
      typeof reason === "string" && reason.trim() !== "" ? reason : "no reason given"
    }`,
  );
}
