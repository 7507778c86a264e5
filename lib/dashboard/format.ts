/**
 * Plain functions behind the dashboard's pages: step layers, durations, times, labels.
 *
 * @module
 */
import { z } from "zod";
import type { Pipeline } from "../define/pipeline.ts";
import type { AttemptRecord, RunRecord, StepStatus, TaskRecord } from "../model/records.ts";
import { TERMINAL } from "../model/records.ts";
import type { ErrorInfo } from "../model/errors.ts";

/** The icon shown with each run, step and attempt status. */
export const ICONS: Record<string, string> = {
  queued: "…",
  running: "▸",
  waiting: "↻",
  paused: "⏸",
  succeeded: "✓",
  failed: "✗",
  cancelled: "⊘",
  pending: "…",
  retrying: "↻",
  skipped: "–",
  crashed: "↯",
  interrupted: "⏸",
};

/** Steps in topological layers, each in the graph's own order. */
export function layersOf(graph: Readonly<Record<string, readonly string[]>>): string[][] {
  const depth = new Map<string, number>();
  const visit = (name: string, seen: Set<string>): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (seen.has(name)) return 0; // a stored graph is acyclic; never loop on a bad one
    seen.add(name);
    const needs = (graph[name] ?? []).filter((n) => n in graph);
    const d = needs.length ? 1 + Math.max(...needs.map((n) => visit(n, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  const layers: string[][] = [];
  for (const name of Object.keys(graph)) (layers[visit(name, new Set())] ??= []).push(name);
  return layers.filter(Boolean);
}

/** A duration in words a person reads at a glance: `420 ms`, `3.4 s`, `2 min 5 s`. */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function runDuration(run: RunRecord, now: number): string {
  if (run.startedAt === null) return "—";
  const end = run.endedAt ?? (TERMINAL.has(run.status) ? run.startedAt : now);
  const text = duration(end - run.startedAt);
  return TERMINAL.has(run.status) ? text : `${text} so far`;
}

export function utc(at: number): string {
  return `${new Date(at).toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

export function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function errorText(error: ErrorInfo): string {
  return error.name && error.name !== "Error" ? `${error.name}: ${error.message}` : error.message;
}

export function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

export function taskKey(step: string, item: number): string {
  return `${step}\u0000${item}`;
}

export function taskLabel(step: string, item: number): string {
  return item >= 0 ? `${step}[${item}]` : step;
}

/** The id of an attempt's entry on the run page, for links from elsewhere (the grid). */
export function attemptAnchor(step: string, item: number, n: number): string {
  return `attempt-${taskLabel(step, item)}-${n}`;
}

export function attemptsByTask(attempts: AttemptRecord[]): Map<string, AttemptRecord[]> {
  const out = new Map<string, AttemptRecord[]>();
  for (const a of attempts) {
    const key = taskKey(a.step, a.item);
    const list = out.get(key) ?? [];
    list.push(a);
    out.set(key, list);
  }
  for (const list of out.values()) list.sort((a, b) => a.n - b.n);
  return out;
}

export function stepOrder(graph: Readonly<Record<string, readonly string[]>>): string[] {
  return layersOf(graph).flat();
}

export function itemSummary(total: number, items: Map<number, TaskRecord> | undefined): string {
  const count: Partial<Record<StepStatus, number>> = {};
  for (const item of items?.values() ?? []) count[item.status] = (count[item.status] ?? 0) + 1;
  const parts = (["succeeded", "failed", "running", "retrying", "pending"] as const)
    .filter((s) => count[s])
    .map((s) => `${count[s]} ${s}`);
  return `${total} item${total === 1 ? "" : "s"}${parts.length ? `: ${parts.join(", ")}` : ""}`;
}

/** One top-level param of a pipeline. */
export interface ParamField {
  name: string;
  type: string;
  required: boolean;
  default?: string;
}

/** The top-level params of a zod object schema, or null for another kind of schema. */
export function paramFields(pipeline: Pipeline<unknown>): ParamField[] | null {
  if (!pipeline.params) return [];
  try {
    const schema = z.toJSONSchema(pipeline.params as z.ZodType, {
      io: "input",
      unrepresentable: "any",
    }) as {
      properties?: Record<string, { type?: string | string[]; format?: string; default?: unknown }>;
      required?: string[];
    };
    if (!schema.properties) return null;
    return Object.entries(schema.properties).map(([name, p]) => ({
      name,
      type: [p.type ?? "any"].flat().join(" | ") + (p.format ? ` (${p.format})` : ""),
      required: schema.required?.includes(name) ?? false,
      ...(p.default === undefined ? {} : { default: safeJson(p.default) }),
    }));
  } catch {
    return null;
  }
}

export function runHref(id: string): string {
  return `/runs/${encodeURIComponent(id)}`;
}

export function eventHref(id: string): string {
  return `/events/${encodeURIComponent(id)}`;
}

export function pipelineHref(name: string): string {
  return `/pipelines/${encodeURIComponent(name)}`;
}

export function hash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(36);
}
