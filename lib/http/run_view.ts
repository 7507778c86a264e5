/**
 * What the API (and the dashboard) show of runs and pipelines: plain JSON built from the
 * stored records, field by field, in the shapes of `schemas.ts`. One run's view reads
 * its record, steps, items, attempts, artifacts and alerts — six KV reads, in parallel.
 *
 * @module
 */
import { z } from "zod";
import type { Pipeline } from "../define/pipeline.ts";
import type { Engine } from "../engine/engine.ts";
import * as keys from "../kv/keys.ts";
import type {
  AttemptRecord,
  HeldState,
  PauseState,
  RunFlow,
  RunRecord,
  TaskRecord,
  WaitState,
} from "../model/records.ts";
import type { ArtifactMeta } from "../model/artifacts.ts";
import { type AlertRecord, runAlerts } from "../alerts/alert.ts";
import { nextTicks, type ScheduleState } from "../engine/scheduler.ts";
import { retentionJson } from "../define/retention.ts";
import { flowJson } from "../define/flow_view.ts";
import type { PipelineJson, RunDetail, RunJson, StepJson, WaitJson } from "./schemas.ts";
import type { Kv } from "../kv/kv.ts";
import { env } from "../platform/env.ts";

type AttemptJson = StepJson["attempts"][number];
type ItemJson = NonNullable<StepJson["items"]>[number];

/**
 * A run record as the API shows it (without internals such as the module path).
 *
 * @param run the stored record
 * @param now the time active runs' durations run to
 * @returns the JSON shape of `Run`
 */
export function runJson(run: RunRecord, now = Date.now()): RunJson {
  return {
    id: run.id,
    pipeline: run.pipeline,
    version: run.version,
    graph: run.graph ?? null,
    params: run.params,
    logicalDate: run.logicalDate,
    trigger: run.trigger,
    status: run.status,
    createdAt: run.createdAt,
    startedAt: run.startedAt,
    endedAt: run.endedAt,
    durationMs: run.startedAt === null ? null : Math.max(0, (run.endedAt ?? now) - run.startedAt),
    dueAt: run.dueAt,
    error: run.error ? { step: run.error.step, message: run.error.message } : null,
    failures: run.failures,
    takeovers: run.takeovers,
    parent: run.parent
      ? {
        runId: run.parent.runId,
        step: run.parent.step,
        item: run.parent.item,
        url: runUrl(run.parent.runId),
      }
      : null,
    event: run.event ?? null,
    eventUrl: run.event ? eventUrl(run.event) : null,
    waitingFor: run.status === "waiting" && run.waitingFor ? waitJson(run.waitingFor) : null,
    paused: run.paused ? { by: run.paused.by, at: run.paused.at, reason: run.paused.reason } : null,
    priority: run.priority ?? 0,
    held: run.status === "queued" && run.held ? heldJson(run.held) : null,
    flow: run.flow ? runFlowJson(run.flow) : null,
    traceId: run.trace?.traceId ?? null,
    traceUrl: run.trace ? traceUrl(run.trace.traceId) : null,
  };
}

/** Why a queued run is held, field by field. */
function heldJson(held: HeldState): NonNullable<RunJson["held"]> {
  return {
    by: held.by,
    key: held.key,
    since: held.since,
    until: held.until,
    reason: held.reason,
  };
}

/** A run's flow keys, field by field. */
function runFlowJson(flow: RunFlow): NonNullable<RunJson["flow"]> {
  const { limit, throttle, debounce } = flow;
  return {
    ...(limit ? { limit: { scope: limit.scope, key: limit.key, max: limit.max } } : {}),
    ...(throttle
      ? {
        throttle: {
          scope: throttle.scope,
          key: throttle.key,
          max: throttle.max,
          perMs: throttle.perMs,
        },
      }
      : {}),
    ...(debounce ? { debounce: { key: debounce.key } } : {}),
  };
}

/**
 * What a waiting step waits for, as the API shows it.
 *
 * @param wait the stored wait
 * @returns the JSON shape of `Wait`
 */
export function waitJson(wait: WaitState): WaitJson {
  return {
    kind: wait.kind,
    step: wait.step,
    item: wait.item,
    since: wait.since,
    until: wait.until,
    ...(wait.events ? { events: [...wait.events] } : {}),
    ...(wait.field !== undefined ? { field: wait.field } : {}),
    ...(wait.value !== undefined ? { value: wait.value } : {}),
    ...(wait.after !== undefined ? { after: wait.after } : {}),
    ...(wait.child !== undefined ? { child: wait.child, childUrl: runUrl(wait.child) } : {}),
  };
}

/** The child run a task started: kept after its wait, named by the wait while it lasts. */
function childOf(task: TaskRecord): string | undefined {
  return task.child ?? task.wait?.child;
}

/** Where the API serves a run. */
export function runUrl(id: string): string {
  return `/api/runs/${encodeURIComponent(id)}`;
}

/**
 * A trace in the tracing backend: `KVFLOW_TRACE_URL` (such as
 * `http://localhost:16686/trace/{traceId}`) with the trace id put in; null when unset.
 */
export function traceUrl(traceId: string): string | null {
  const template = env("KVFLOW_TRACE_URL");
  return template ? template.replaceAll("{traceId}", traceId) : null;
}

/** Where the API serves an event. */
export function eventUrl(id: string): string {
  return `/api/events/${encodeURIComponent(id)}`;
}

const paramsSchemas = new WeakMap<object, Record<string, unknown> | null>();

/**
 * A pipeline as the API shows it: its steps with their needs, its params' JSON Schema and
 * its schedule with the next ticks.
 *
 * @param pipeline the definition
 * @param state its schedule's stored state, for the last tick
 * @param pause its pause, while it is paused
 * @returns the JSON shape of `Pipeline`
 */
export function pipelineJson(
  pipeline: Pipeline<unknown>,
  state: ScheduleState | null = null,
  pause: PauseState | null = null,
): PipelineJson {
  return {
    name: pipeline.name,
    description: pipeline.description ?? null,
    version: pipeline.version,
    steps: pipeline.steps.map((s) => ({
      name: s.name,
      needs: [...(pipeline.graph[s.name] ?? [])],
      fanOut: Boolean(s.fanOut),
    })),
    params: paramsJsonSchema(pipeline),
    schedule: pipeline.schedule
      ? {
        cron: pipeline.schedule.cron,
        timezone: pipeline.schedule.timezone,
        catchup: pipeline.schedule.catchup,
        catchupLimit: pipeline.schedule.catchupLimit,
        overlap: pipeline.schedule.overlap,
        maxActive: pipeline.schedule.maxActive,
        deadline: pipeline.schedule.deadline?.text ?? null,
        lastTick: state ? new Date(state.lastTick).toISOString() : null,
        nextTicks: nextTicks(pipeline.schedule, Date.now(), 5).map((t) =>
          new Date(t).toISOString()
        ),
      }
      : null,
    retention: retentionJson(pipeline.retention),
    flow: flowJson(pipeline.flow),
    paused: pause ? { by: pause.by, at: pause.at, reason: pause.reason } : null,
  };
}

/**
 * The JSON Schema of a pipeline's params (the input side: what a client sends), or null
 * when it takes none. A schema that is not zod's, or that JSON Schema cannot express,
 * gives `{}` (anything; the server still validates).
 */
export function paramsJsonSchema(pipeline: Pipeline<unknown>): Record<string, unknown> | null {
  if (!pipeline.params) return null;
  const schema = pipeline.params as object;
  if (!paramsSchemas.has(schema)) {
    let json: Record<string, unknown> = {};
    if (schema instanceof z.ZodType) {
      try {
        json = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as Record<
          string,
          unknown
        >;
      } catch {
        // a schema with cycles or custom parts: describe it as "anything"
      }
    }
    paramsSchemas.set(schema, json);
  }
  return paramsSchemas.get(schema)!;
}

/**
 * Everything about one run: its record, each step (in pipeline order) with its attempts,
 * errors with stacks, log lines and fan-out items, its artifacts and its alerts.
 *
 * @param engine the engine whose KV holds the run
 * @param runId the run
 * @returns the view, or null when there is no such run
 */
export async function runDetail(engine: Engine, runId: string): Promise<RunDetail | null> {
  const run = await engine.store.getRun(runId);
  if (!run) return null;
  const [steps, items, attempts, artifacts, alerts] = await Promise.all([
    engine.store.getSteps(runId),
    listItems(engine.kv, runId),
    engine.store.getAttempts(runId),
    engine.store.getArtifacts(runId),
    runAlerts(engine.kv, runId),
  ]);
  const now = Date.now();
  const pipeline = engine.pipelines.get(run.pipeline);
  const sameGraph = pipeline !== undefined && pipeline.version === run.version;
  const names = sameGraph ? pipeline.steps.map((s) => s.name) : Object.keys(run.graph ?? {}).concat(
    [...steps.keys()].filter((name) => !(run.graph && name in run.graph)),
  );
  const attemptsOf = new Map<string, AttemptJson[]>();
  for (const a of attempts) {
    const key = `${a.step}\u0000${a.item}`;
    if (!attemptsOf.has(key)) attemptsOf.set(key, []);
    attemptsOf.get(key)!.push(attemptJson(a));
  }
  const stepViews = names.map((name): StepJson => {
    const record = steps.get(name);
    const def = sameGraph ? pipeline.byName.get(name) : undefined;
    const stepItems = items.get(name);
    const fanOut = def
      ? Boolean(def.fanOut)
      : record?.items !== undefined || stepItems !== undefined;
    return {
      name,
      needs: [...(run.graph?.[name] ?? (sameGraph ? pipeline.graph[name] : []) ?? [])],
      fanOut,
      generation: record?.generation ?? 0,
      ...taskJson(record, now, attemptsOf.get(`${name}\u0000-1`) ?? []),
      itemCount: record?.items ?? null,
      items: fanOut
        ? [...(stepItems ?? new Map<number, TaskRecord>())].sort(([a], [b]) => a - b).map((
          [index, item],
        ): ItemJson => ({
          index,
          ...taskJson(item, now, attemptsOf.get(`${name}\u0000${index}`) ?? []),
        }))
        : null,
    };
  });
  return {
    ...runJson(run, now),
    currentVersion: pipeline?.version ?? null,
    steps: stepViews,
    artifacts: artifacts.map((a) => artifactJson(a)),
    alerts: alerts.map((a) => alertJson(a)),
    children: childrenOf(run.id, steps, items),
  };
}

/**
 * The child runs a run's steps and items started, in step order then item order, from
 * the `child` their task records keep.
 *
 * @param runId the parent run
 * @param steps its step records
 * @param items its fan-out items' records, by step
 * @returns one link per child
 */
export function childrenOf(
  runId: string,
  steps: ReadonlyMap<string, TaskRecord>,
  items: ReadonlyMap<string, ReadonlyMap<number, TaskRecord>>,
): RunDetail["children"] {
  const out: RunDetail["children"] = [];
  const add = (step: string, item: number, child: string | undefined) => {
    if (child === undefined) return;
    out.push({ runId, step, item, url: runUrl(runId), child, childUrl: runUrl(child) });
  };
  for (const [name, record] of steps) {
    add(name, -1, childOf(record));
    const byIndex = [...(items.get(name) ?? [])].sort(([a], [b]) => a - b);
    for (const [index, item] of byIndex) add(name, index, childOf(item));
  }
  return out;
}

function taskJson(record: TaskRecord | undefined, now: number, attempts: AttemptJson[]) {
  const startedAt = record?.startedAt ?? null;
  const endedAt = record?.endedAt ?? null;
  const status = record?.status ?? "pending";
  return {
    status,
    attempt: record?.attempt ?? 0,
    startedAt,
    endedAt,
    durationMs: startedAt === null
      ? null
      : status === "running"
      ? Math.max(0, now - startedAt)
      : endedAt === null
      ? null
      : Math.max(0, endedAt - startedAt),
    nextAt: record?.nextAt ?? null,
    error: record?.error ? errorJson(record.error) : null,
    attempts,
    wait: status === "waiting" && record?.wait ? waitJson(record.wait) : null,
    child: (record && childOf(record)) ?? null,
    timedOut: record?.timedOut === true,
  };
}

function attemptJson(a: AttemptRecord): AttemptJson {
  return {
    n: a.n,
    attempt: a.attempt,
    status: a.status,
    startedAt: a.startedAt,
    endedAt: a.endedAt,
    durationMs: Math.max(0, a.endedAt - a.startedAt),
    error: a.error ? errorJson(a.error) : null,
    logs: a.logs.map((l) => ({
      at: l.at,
      level: l.level,
      message: l.message,
      ...(l.fields ? { fields: l.fields } : {}),
    })),
  };
}

function errorJson(e: NonNullable<TaskRecord["error"]>) {
  return {
    name: e.name,
    message: e.message,
    ...(e.stack ? { stack: e.stack } : {}),
    retryable: e.retryable,
  };
}

function artifactJson(a: ArtifactMeta): RunDetail["artifacts"][number] {
  return {
    name: a.name,
    contentType: a.contentType,
    size: a.size,
    step: a.step,
    item: a.item,
    createdAt: a.createdAt,
    url: `${runUrl(a.runId)}/artifacts/${encodeURIComponent(a.name)}`,
  };
}

function alertJson(a: AlertRecord): RunDetail["alerts"][number] {
  return {
    seq: a.seq,
    at: a.at,
    step: a.step,
    attempts: a.attempts,
    message: a.message,
    logicalDate: a.logicalDate,
    webhook: a.webhook,
    ...(a.sentAt !== undefined ? { sentAt: a.sentAt } : {}),
    ...(a.webhookError !== undefined ? { webhookError: a.webhookError } : {}),
  };
}

/** Every fan-out item of a run, by step and index, in one list. */
async function listItems(
  kv: Kv,
  runId: string,
): Promise<Map<string, Map<number, TaskRecord>>> {
  const out = new Map<string, Map<number, TaskRecord>>();
  for await (const e of kv.list<TaskRecord>({ prefix: keys.itemRunPrefix(runId) })) {
    const step = e.key[e.key.length - 2] as string;
    if (!out.has(step)) out.set(step, new Map());
    out.get(step)!.set(e.key[e.key.length - 1] as number, e.value);
  }
  return out;
}
