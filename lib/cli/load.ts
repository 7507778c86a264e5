/**
 * Finding the pipeline a command names: in the registry by name, or by importing the
 * module a path points to; and the lazy registry, whose pipelines are imported only when
 * a command needs them (`resume <id>` imports the run's pipeline, not all of them).
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { UsageError } from "../model/errors.ts";

/**
 * Pipelines by name, each imported when a command first needs it, so that starting the
 * CLI costs only the pipelines a command uses:
 * `{ nightly: async () => (await import("./nightly/mod.ts")).default }`. A loader must give
 * the pipeline of its name.
 */
export type PipelineLoaders = Readonly<Record<string, () => Promise<Pipeline<unknown>>>>;

/**
 * Imports the pipelines of `loaders` named in `names` (default: all of them); names
 * without a loader are skipped.
 *
 * @throws {TypeError} when a loader gives no pipeline, or one of another name
 */
export async function loadRegistered(
  loaders: PipelineLoaders,
  names: readonly string[] = Object.keys(loaders),
): Promise<Pipeline<unknown>[]> {
  return await Promise.all(
    names.filter((name) => Object.hasOwn(loaders, name)).map(async (name) => {
      const found = await loaders[name]();
      if (found?.kind !== "pipeline" || found.name !== name) {
        throw new TypeError(
          `The registry's loader of '${name}' gave ${
            found?.kind === "pipeline" ? `pipeline '${found.name}'` : "no pipeline"
          }`,
        );
      }
      return found;
    }),
  );
}

/** The names of `loaders` that `pipelines` (the static registry, which wins) lacks. */
export function lazyNames(
  pipelines: readonly Pipeline<unknown>[],
  loaders: PipelineLoaders = {},
): string[] {
  return Object.keys(loaders).filter((name) => !pipelines.some((p) => p.name === name));
}

/**
 * The registry a command needs to find `target` (a pipeline's name or a module path):
 * `pipelines`, plus the pipeline of that name from `loaders`. An unknown name imports
 * them all, so that the error lists every name.
 */
export async function registryFor(
  target: string,
  pipelines: readonly Pipeline<unknown>[],
  loaders: PipelineLoaders = {},
): Promise<readonly Pipeline<unknown>[]> {
  if (pipelines.some((p) => p.name === target)) return pipelines;
  if (Object.hasOwn(loaders, target)) {
    return [...pipelines, ...await loadRegistered(loaders, [target])];
  }
  if (looksLikePath(target)) return pipelines;
  return [...pipelines, ...await loadRegistered(loaders, lazyNames(pipelines, loaders))];
}

function looksLikePath(target: string): boolean {
  return /[\\/]/.test(target) || /\.(ts|js|mts|mjs|tsx)$/.test(target);
}

/**
 * Finds a pipeline by registered name or loads it from a module path.
 *
 * @throws {UsageError} on an unknown name, a module that fails to import, or one whose
 * default export is not a pipeline
 */
export async function loadPipeline(
  target: string,
  registry: readonly Pipeline<unknown>[],
): Promise<{ pipeline: Pipeline<unknown>; module?: string }> {
  const registered = registry.find((p) => p.name === target);
  if (registered) return { pipeline: registered };
  if (!looksLikePath(target)) {
    throw new UsageError(
      `Unknown pipeline '${target}': known pipelines are ${
        registry.map((p) => p.name).join(", ") || "(none)"
      } (or give a path to a module that default-exports a pipeline)`,
    );
  }
  const url = target.startsWith("file:") ? target : await fileUrl(target);
  let module: { default?: unknown };
  try {
    module = await import(url);
  } catch (error) {
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
    throw new UsageError(`Cannot load pipeline module ${target}: ${message}`);
  }
  const found = module.default as Pipeline<unknown> | undefined;
  if (!found || found.kind !== "pipeline") {
    throw new UsageError(
      `Module ${target} does not default-export a pipeline (export default pipeline("name", { ... }))`,
    );
  }
  return { pipeline: found, module: url };
}

/** The file URL of a path, from the working directory (node:path is loaded only here). */
async function fileUrl(path: string): Promise<string> {
  const [{ resolve }, { pathToFileURL }] = await Promise.all([
    import("node:path"),
    import("node:url"),
  ]);
  return pathToFileURL(resolve(path)).href;
}
