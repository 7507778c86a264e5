/**
 * The commands that read: `status`, `runs`, and `pipelines`, as text or as JSON.
 *
 * @module
 */
import type { RunStatus, TaskRecord } from "../model/records.ts";
import type { Pipeline } from "../define/pipeline.ts";
import { runAlerts } from "../alerts/alert.ts";
import { scheduleView } from "../engine/scheduler.ts";
import { retentionJson } from "../define/retention.ts";
import { flowJson, flowLines } from "../define/flow_view.ts";
import { EXIT, type Invocation, openCliEngine } from "./invocation.ts";
import { runLines, statusLines } from "./progress.ts";

/** `status`: a run, its steps and attempts, as text or with `--json` as JSON with its alerts. */
export async function status(invocation: Invocation): Promise<number> {
  const runId = invocation.args[0];
  const engine = await openCliEngine(invocation, invocation.context.pipelines);
  try {
    const run = await engine.store.requireRun(runId);
    const steps = await engine.store.getSteps(runId);
    const attempts = await engine.store.getAttempts(runId);
    const pipeline = engine.pipelines.get(run.pipeline);
    // the items of fan-out waits (a child run per item): each may wait on its own
    const items = new Map<string, Map<number, TaskRecord>>();
    for (const [name, record] of steps) {
      if (record.items !== undefined && stepWaits(pipeline, name)) {
        items.set(name, await engine.store.getItems(runId, name));
      }
    }
    if (invocation.flags.json) {
      const names = pipeline ? pipeline.steps.map((s) => s.name) : Object.keys(run.graph ?? {});
      const children = [
        ...[...steps.values()].map((r) => r.child),
        ...[...items.values()].flatMap((m) => [...m.values()].map((r) => r.child)),
      ].filter((c): c is string => c !== undefined);
      invocation.out(JSON.stringify(
        {
          ...run,
          children,
          steps: names.map((name) => {
            const record = steps.get(name);
            return {
              name,
              status: record?.status ?? "pending",
              attempts: record?.attempt ?? 0,
              error: record?.error ?? null,
              startedAt: record?.startedAt ?? null,
              endedAt: record?.endedAt ?? null,
              nextAt: record?.nextAt ?? null,
              items: record?.items ?? null,
              wait: record?.wait ?? null,
              child: record?.child ?? null,
              timedOut: record?.timedOut ?? false,
              waitingItems: [...(items.get(name) ?? [])]
                .filter(([, r]) => r.status === "waiting")
                .map(([item, r]) => ({ item, wait: r.wait ?? null, child: r.child ?? null })),
            };
          }),
          attempts: attempts.map(({ logs, ...a }) => ({ ...a, logs: logs.length })),
          alerts: await runAlerts(engine.kv, runId),
        },
        null,
        2,
      ));
    } else {
      for (const line of statusLines(run, pipeline, steps, attempts, invocation.paint, items)) {
        invocation.out(line);
      }
      // a missed deadline is alert 0; the failures' alerts are in the status lines already
      const [missed] = (await runAlerts(engine.kv, runId)).filter((a) => a.deadline);
      if (missed?.deadline) {
        invocation.out(
          `deadline missed: not succeeded by ${
            new Date(missed.deadline.at).toISOString()
          } (${missed.deadline.rule}): ${missed.deadline.reason} · alert webhook ${missed.webhook}`,
        );
      }
    }
    return EXIT.ok;
  } finally {
    await engine.close();
  }
}

/** Whether a step of the pipeline is a wait (a sleep, an event wait or a child run). */
function stepWaits(pipeline: Pipeline<unknown> | undefined, name: string): boolean {
  return pipeline?.steps.find((s) => s.name === name)?.wait !== undefined;
}

/** `runs`: the latest runs, filtered by pipeline and status. */
export async function runs(invocation: Invocation): Promise<number> {
  const status = invocation.flags.status;
  const limit = invocation.flags.limit === undefined ? 20 : Number(invocation.flags.limit);
  const engine = await openCliEngine(invocation, []);
  try {
    const page = await engine.store.listRuns({
      pipeline: invocation.flags.pipeline,
      status: status as RunStatus | undefined,
      limit,
    });
    if (invocation.flags.json) invocation.out(JSON.stringify(page.runs, null, 2));
    else for (const line of runLines(page.runs, invocation.paint)) invocation.out(line);
    return EXIT.ok;
  } finally {
    await engine.close();
  }
}

/**
 * `pipelines`: the registered pipelines, their steps and schedules, retention, flow control
 * and pauses.
 */
export async function pipelines(invocation: Invocation): Promise<number> {
  const engine = await openCliEngine(invocation, invocation.context.pipelines);
  try {
    const now = engine.store.clock.now();
    const paused = await engine.pausedPipelines();
    const list = [];
    for (const p of invocation.context.pipelines) {
      list.push({
        name: p.name,
        description: p.description ?? null,
        version: p.version,
        steps: p.steps.map((s) => ({
          name: s.name,
          needs: p.graph[s.name],
          fanOut: Boolean(s.fanOut),
        })),
        schedule: await scheduleView(engine.scheduler, p, now),
        retention: retentionJson(p.retention),
        flow: flowJson(p.flow),
        paused: paused.get(p.name) ?? null,
      });
    }
    if (invocation.flags.json) {
      invocation.out(JSON.stringify(list, null, 2));
      return EXIT.ok;
    }
    for (const p of list) {
      invocation.out(`${p.name}${p.description ? ` — ${p.description}` : ""}`);
      if (p.paused) {
        invocation.out(
          `  paused    since ${new Date(p.paused.at).toISOString()}: ${p.paused.reason} ` +
            `(triggers are queued; deno task unpause ${p.name})`,
        );
      }
      const s = p.schedule;
      invocation.out(
        s
          ? `  schedule  ${s.cron} (${s.timezone}), catch-up ${s.catchup}, overlap ${s.overlap}` +
            (s.deadline ? `\n  deadline  ${s.deadline}` : "") +
            `\n  last tick ${s.lastTick ?? "none yet"}\n  next      ${s.next.join(", ")}`
          : "  schedule  none (runs when triggered)",
      );
      invocation.out(
        `  retention succeeded ${p.retention.succeeded}, failed ${p.retention.failed}, ` +
          `cancelled ${p.retention.cancelled}`,
      );
      for (const line of flowLines(p.flow)) invocation.out(`  flow      ${line}`);
      for (const step of p.steps) {
        invocation.out(
          `  · ${step.name}${step.fanOut ? " (fan-out)" : ""}${
            step.needs.length ? ` ← ${step.needs.join(", ")}` : ""
          }`,
        );
      }
    }
    return EXIT.ok;
  } finally {
    await engine.close();
  }
}
