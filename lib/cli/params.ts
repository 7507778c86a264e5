/**
 * A run's params from the command line: `--params JSON` and `--param k=v` flags,
 * checked against the pipeline's schema.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { UsageError } from "../model/errors.ts";
import { validateParams } from "../model/params.ts";

/**
 * Builds params from `--params JSON` and `--param k=v` flags. Values of `--param` are
 * strings; when the schema rejects a string, its JSON reading (a number, a boolean) is
 * tried.
 *
 * @throws {UsageError} on malformed flags or params that fail the schema
 */
export function parseParams(
  pipeline: Pipeline<unknown>,
  pairs: readonly string[],
  json: string | undefined,
): Record<string, unknown> {
  let base: Record<string, unknown> = {};
  if (json !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch (error) {
      throw new UsageError(
        `Invalid --params: not JSON (${error instanceof Error ? error.message : error})`,
      );
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new UsageError("Invalid --params: expected a JSON object");
    }
    base = parsed as Record<string, unknown>;
  }
  const raw: Record<string, string> = {};
  for (const pair of pairs) {
    const at = pair.indexOf("=");
    if (at <= 0) {
      throw new UsageError(`Invalid --param ${JSON.stringify(pair)}: use --param key=value`);
    }
    raw[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const asStrings = { ...base, ...raw };
  try {
    return validateParams(pipeline, asStrings);
  } catch (error) {
    const coerced: Record<string, unknown> = { ...base };
    for (const [k, v] of Object.entries(raw)) coerced[k] = jsonOrString(v);
    try {
      return validateParams(pipeline, coerced);
    } catch {
      throw error;
    }
  }
}

function jsonOrString(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
