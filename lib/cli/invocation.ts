/**
 * What every command gets: the registry and output streams the CLI was started with,
 * its arguments and flags, the exit codes, and the engine it opens.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { type Engine, openEngine } from "../engine/engine.ts";
import { workerSettingsFromEnv } from "../engine/settings.ts";
import type { RunRecord } from "../model/records.ts";
import type { Flags } from "./parse.ts";
import { loadPipeline } from "./load.ts";
import { type Paint, progressPrinter } from "./progress.ts";

/** Where the CLI writes, and the pipelines it knows. */
export interface CliContext {
  /** The static registry. */
  pipelines: readonly Pipeline<unknown>[];
  /** Standard output lines. Default: console.log. */
  out?: (line: string) => void;
  /** Standard error lines. Default: console.error. */
  err?: (line: string) => void;
}

/** Exit codes. */
export const EXIT = { ok: 0, failed: 1, usage: 2, interrupted: 130 } as const;

/** One command being run: its arguments and flags, where it writes, how it paints. */
export interface Invocation {
  /** The registry and output streams the CLI was started with. */
  readonly context: CliContext;
  /** The flags given. */
  readonly flags: Flags;
  /** The command's positional arguments. */
  readonly args: string[];
  /** Writes a line to standard output. */
  readonly out: (line: string) => void;
  /** Writes a line to standard error. */
  readonly err: (line: string) => void;
  /** Colours for standard output. */
  readonly paint: Paint;
}

/**
 * Opens the engine a command works on, with the worker settings of the environment.
 * A run started from a module path finds its pipeline by importing that module again.
 *
 * @param progress print the events of the runs it drives
 */
export async function openCliEngine(
  invocation: Invocation,
  pipelines: readonly Pipeline<unknown>[],
  progress = false,
): Promise<Engine> {
  return await openEngine({
    pipelines,
    ...workerSettingsFromEnv(),
    resolvePipeline: async (run) =>
      run.module ? (await loadPipeline(run.module, [])).pipeline : undefined,
    onEvent: progress ? progressPrinter(undefined, invocation.out, invocation.paint) : undefined,
  });
}

/**
 * Opens the engine for driving an existing run, printing its progress: the registry,
 * plus the module the run was started from when its pipeline is not registered.
 */
export async function openEngineForRun(invocation: Invocation, runId: string): Promise<Engine> {
  const registry = [...invocation.context.pipelines];
  const peek = await openEngine({ pipelines: [] });
  let run: RunRecord;
  try {
    run = await peek.store.requireRun(runId);
  } finally {
    await peek.close();
  }
  if (run.module && !registry.some((p) => p.name === run.pipeline)) {
    registry.push((await loadPipeline(run.module, [])).pipeline);
  }
  return await openCliEngine(invocation, registry, true);
}
