/**
 * Finding the pipeline a command names: in the registry by name, or by importing the
 * module a path points to.
 *
 * @module
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { Pipeline } from "../define/pipeline.ts";
import { UsageError } from "../model/errors.ts";

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
  const looksLikePath = /[\\/]/.test(target) || /\.(ts|js|mts|mjs|tsx)$/.test(target);
  if (!looksLikePath) {
    throw new UsageError(
      `Unknown pipeline '${target}': known pipelines are ${
        registry.map((p) => p.name).join(", ") || "(none)"
      } (or give a path to a module that default-exports a pipeline)`,
    );
  }
  const url = target.startsWith("file:") ? target : pathToFileURL(resolve(target)).href;
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
