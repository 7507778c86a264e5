/**
 * Params: what a pipeline's schema accepts, refused field by field with messages a user
 * can act on, and only plain data (what KV stores as it is and JSON can show).
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { UsageError } from "./errors.ts";

/**
 * Validates params against a pipeline's schema. What passes is plain data: objects,
 * arrays, strings, finite numbers, booleans, null and dates, so KV stores it as it is and
 * every JSON answer and `status --json` can show it.
 *
 * @throws {UsageError} naming each field that fails, with code `invalid_params` and the
 * problems as `issues`
 */
export function validateParams(
  pipeline: Pipeline<unknown>,
  params: unknown,
): Record<string, unknown> {
  const refuse = (issues: { path: PropertyKey[]; message: string }[], reason?: string) =>
    new UsageError(
      `Invalid params for '${pipeline.name}': ${
        reason ?? issues.map((i) => `${paramPath(i.path)}: ${oneLine(i.message)}`).join("; ")
      }`,
      "invalid_params",
      issues,
    );
  if (params === null || typeof params !== "object" || Array.isArray(params)) {
    throw refuse([{ path: [], message: "Expected an object" }], "expected an object");
  }
  if (!pipeline.params) {
    const names = Object.keys(params);
    if (names.length > 0) {
      throw refuse(
        names.map((k) => ({ path: [k], message: "Unknown param" })),
        `it takes no params, got ${names.map(paramName).join(", ")}`,
      );
    }
    return {};
  }
  const result = pipeline.params.safeParse(params);
  if (!result.success) {
    throw refuse(result.error.issues.map((i) => ({ path: [...i.path], message: i.message })));
  }
  const value = result.data;
  // zod objects drop unknown keys silently; a typo in a param name must not pass unseen.
  // Known keys come from the schema's shape, else from what the parsed value kept; own
  // keys only, or `constructor` and `__proto__` would pass as known.
  const shape = (pipeline.params as { shape?: Record<string, unknown> }).shape;
  const known = (k: string) =>
    shape
      ? Object.hasOwn(shape, k)
      : value !== null && typeof value === "object" && Object.hasOwn(value, k);
  const unknownParams = Object.keys(params).filter((k) => !known(k));
  if (unknownParams.length > 0) {
    throw refuse(
      unknownParams.map((k) => ({ path: [k], message: "Unknown param" })),
      `unknown param${unknownParams.length === 1 ? "" : "s"} ${
        unknownParams.map(paramName).join(", ")
      }${shape ? ` (known: ${Object.keys(shape).join(", ")})` : ""}`,
    );
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new UsageError(`Invalid params schema of '${pipeline.name}': it must produce an object`);
  }
  const problem = notPlainData(value, [], []);
  if (problem) throw refuse([problem]);
  return value as Record<string, unknown>;
}

/** How deep params may nest: no real config is deeper, and checking must not blow the stack. */
const MAX_PARAMS_DEPTH = 64;

/** Where a value stops being plain data (see {@linkcode validateParams}), or null. */
function notPlainData(
  value: unknown,
  path: PropertyKey[],
  parents: object[],
): { path: PropertyKey[]; message: string } | null {
  if (typeof value === "number") {
    return Number.isFinite(value) ? null : { path, message: `${value} is not a finite number` };
  }
  if (value === null || typeof value === "string" || typeof value === "boolean") return null;
  if (typeof value !== "object") {
    const what = typeof value === "bigint"
      ? "a BigInt"
      : value === undefined
      ? "undefined"
      : `a ${typeof value}`;
    return { path, message: `${what} is not JSON data` };
  }
  if (value instanceof Date) {
    return Number.isNaN(value.getTime()) ? { path, message: "Invalid Date" } : null;
  }
  if (parents.includes(value)) return { path, message: "the value refers to itself" };
  if (parents.length >= MAX_PARAMS_DEPTH) {
    return { path, message: `nests deeper than ${MAX_PARAMS_DEPTH} levels` };
  }
  const inside = [...parents, value];
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const problem = notPlainData(value[i], [...path, i], inside);
      if (problem) return problem;
    }
    return null;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    return { path, message: `a ${proto?.constructor?.name || "class instance"} is not JSON data` };
  }
  for (const [k, v] of Object.entries(value)) {
    // an optional param given as undefined is an absent one
    if (v === undefined) continue;
    const problem = notPlainData(v, [...path, k], inside);
    if (problem) return problem;
  }
  return null;
}

/** A param's name for a one-line message: quoted when it has spaces, controls or quotes. */
function paramName(key: PropertyKey): string {
  const text = String(key);
  return /^[^\s\p{C}"]{1,80}$/u.test(text)
    ? text
    : JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

/** A schema's message with control characters escaped: it may quote a key a user sent. */
function oneLine(message: string): string {
  return message.replace(/\p{Cc}/gu, (c) => JSON.stringify(c).slice(1, -1));
}

function paramPath(path: readonly PropertyKey[]): string {
  return path.length ? path.map(paramName).join(".") : "(params)";
}
