/**
 * `prune`: deletes ended runs past their pipeline's retention (or `--older-than`) with
 * everything they own, and reports what went; `--dry-run` reports what would go.
 *
 * @module
 */
import { type Duration, toMs } from "../define/duration.ts";
import { formatRetention } from "../define/retention.ts";
import { UsageError } from "../model/errors.ts";
import { EXIT, type Invocation, openCliEngine } from "./invocation.ts";

/** `prune [--pipeline P] [--older-than 30d] [--dry-run] [--json]`. */
export async function prune(invocation: Invocation): Promise<number> {
  const { flags } = invocation;
  let olderThanMs: number | undefined;
  if (flags["older-than"] !== undefined) {
    try {
      olderThanMs = toMs(flags["older-than"] as Duration, "--older-than");
    } catch {
      throw new UsageError(
        `Invalid --older-than '${flags["older-than"]}': use a duration like 30d, 12h or 90m`,
      );
    }
  }
  const registry = invocation.context.pipelines;
  if (flags.pipeline !== undefined && !registry.some((p) => p.name === flags.pipeline)) {
    throw new UsageError(
      `Unknown pipeline '${flags.pipeline}': known pipelines are ${
        registry.map((p) => p.name).join(", ")
      }`,
    );
  }
  const engine = await openCliEngine(invocation, registry);
  try {
    const dryRun = Boolean(flags["dry-run"]);
    const report = await engine.prune({ pipeline: flags.pipeline, olderThanMs, dryRun });
    if (flags.json) {
      invocation.out(JSON.stringify({ dryRun, ...report }, null, 2));
      return EXIT.ok;
    }
    const verb = dryRun ? "would prune" : "pruned";
    const by = olderThanMs === undefined
      ? "past their retention"
      : `ended more than ${formatRetention(olderThanMs)} ago`;
    invocation.out(
      `${verb} ${report.runs} run${report.runs === 1 ? "" : "s"} ${by} ` +
        `(${report.keys} key${report.keys === 1 ? "" : "s"})`,
    );
    for (const [pipeline, byStatus] of Object.entries(report.byPipeline).sort()) {
      const parts = Object.entries(byStatus).map(([status, n]) => `${n} ${status}`);
      invocation.out(`  ${pipeline.padEnd(24)} ${parts.join(", ")}`);
    }
    const flow = report.flow;
    if (flow && flow.limitKeys + flow.throttleEntries > 0) {
      invocation.out(
        `${dryRun ? "would forget" : "forgot"} ${flow.limitKeys} idle limit key${
          flow.limitKeys === 1 ? "" : "s"
        } and ${flow.throttleEntries} throttle entr${
          flow.throttleEntries === 1 ? "y" : "ies"
        } older than two days`,
      );
    }
    // (old correlation heads are left to workers: a head goes once one saw it an hour)
    const events = report.events ?? 0;
    if (events > 0) {
      const age = olderThanMs === undefined
        ? "past their retention"
        : `stored more than ${formatRetention(olderThanMs)} ago`;
      invocation.out(`${verb} ${events} event${events === 1 ? "" : "s"} ${age}`);
    }
    const misses = report.deadlineMisses;
    if (misses > 0) {
      invocation.out(
        `${dryRun ? "would remove" : "removed"} ${misses} missed-deadline record${
          misses === 1 ? "" : "s"
        } past their retention`,
      );
    }
    return EXIT.ok;
  } finally {
    await engine.close();
  }
}
