/**
 * The demo switch `--param simulateOutage=email` (or `=accounting`): that system is down
 * for the run's first round of attempts. Every attempt fails as a real outage would, the
 * retries run out, the run fails and alerts; then the outage is over, and
 * `deno task resume <run id>` finds the system back.
 *
 * A resume starts `ctx.attempt` at 1 again, so the attempts the outage has taken are
 * counted in a file per item under `out/.simulated-outage/`. A trial of the step (`deno
 * task try`) counts as its task: once the run's attempts are spent, the outage is over for
 * the trial too.
 *
 * @module
 */
import { join } from "node:path";
import type { StepContext } from "../../lib/mod.ts";
import { outDir } from "./config.ts";
import { fileSafe, readTextIfAny, writeFileAtomic } from "./files.ts";

/** The systems an outage can be simulated for. */
export const OUTAGES = ["email", "accounting"] as const;

/** A system an outage can be simulated for. */
export type Outage = typeof OUTAGES[number];

const SYMPTOMS: Record<Outage, string> = {
  email: "Mail server unreachable: connection refused",
  accounting: "Accounting API answered 503 Service Unavailable",
};

/**
 * Fails the attempt when the run simulates an outage of `system` that is not over yet.
 *
 * @param ctx the step's context (its params say whether to simulate)
 * @param system the system this step talks to
 * @param attempts how many attempts the outage lasts: the step's retry attempts
 * @throws {Error} a retryable error, as the real outage would
 */
export async function simulateOutage(
  ctx: StepContext,
  system: Outage,
  attempts: number,
): Promise<void> {
  if (ctx.run.params.simulateOutage !== system) return;
  // `deno task try` marks its key `:try`; it meets the outage as the run's attempts left it
  const task = ctx.idempotencyKey.replace(/:try$/, "");
  const counter = join(outDir(), ".simulated-outage", fileSafe(task));
  const failed = Number(await readTextIfAny(counter) ?? 0);
  if (failed >= attempts) return;
  await writeFileAtomic(counter, String(failed + 1));
  throw new Error(`${SYMPTOMS[system]} (simulateOutage=${system})`);
}
