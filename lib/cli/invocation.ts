/**
 * What every command gets: the registry and output streams the CLI was started with,
 * its arguments and flags, the exit codes, and the engine it opens.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { type Engine, openEngine } from "../engine/engine.ts";
import { workerSettingsFromEnv } from "../engine/settings.ts";
import { type OpenedKv, openKv } from "../kv/open.ts";
import { requireRun } from "../store/queries.ts";
import type { Flags } from "./parse.ts";
import { loadPipeline, loadRegistered, type PipelineLoaders } from "./load.ts";
import { type Paint, progressPrinter } from "./progress.ts";

/** Where the CLI writes, and the pipelines it knows. */
export interface CliContext {
  /** The static registry. */
  pipelines: readonly Pipeline<unknown>[];
  /**
   * The lazy registry: more pipelines by name, imported only by the commands that need
   * them (`run <name>` and `resume <id>` import one; `pipelines`, `worker`, `serve`… all).
   */
  loaders?: PipelineLoaders;
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
  opened?: OpenedKv,
): Promise<Engine> {
  return await openEngine({
    pipelines,
    ...workerSettingsFromEnv(),
    ...(opened ? { kv: opened.kv, queues: opened.queues, closeKv: true } : {}),
    resolvePipeline: async (run) => {
      const loaders = invocation.context.loaders ?? {};
      if (Object.hasOwn(loaders, run.pipeline)) {
        return (await loadRegistered(loaders, [run.pipeline]))[0];
      }
      return run.module ? (await loadPipeline(run.module, [])).pipeline : undefined;
    },
    onEvent: progress ? progressPrinter(undefined, invocation.out, invocation.paint) : undefined,
  });
}

/**
 * Opens the engine for driving an existing run, printing its progress: the registry, plus
 * the run's pipeline from the lazy registry, or else from the module the run was started
 * from, when its pipeline is not in the static one. The database is opened once: the run
 * is read, and then driven, on the same handle.
 */
export async function openEngineForRun(invocation: Invocation, runId: string): Promise<Engine> {
  const registry = [...invocation.context.pipelines];
  const opened = await openKv();
  try {
    // a read of the record: the engine (which migrates, once) is opened for its pipeline
    const run = await requireRun(opened.kv, runId);
    if (!registry.some((p) => p.name === run.pipeline)) {
      const loaders = invocation.context.loaders ?? {};
      if (Object.hasOwn(loaders, run.pipeline)) {
        registry.push(...await loadRegistered(loaders, [run.pipeline]));
      } else if (run.module) registry.push((await loadPipeline(run.module, [])).pipeline);
    }
    return await openCliEngine(invocation, registry, true, opened);
  } catch (error) {
    opened.kv.close();
    throw error;
  }
}
