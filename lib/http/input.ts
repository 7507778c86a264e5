/**
 * Reading what a client sent: a JSON body bounded in size before it is read, of the right
 * content type and nesting depth, and inputs checked against zod schemas. Every failure is
 * an {@linkcode HttpError} with the status that names it (400, 404, 413, 415, 422).
 *
 * @module
 */
import type { z } from "zod";
import { type ErrorStatus, HttpError, quote } from "./errors.ts";
import type { Issue } from "./schemas.ts";

/** How deep a JSON body may nest: deeper values cannot be stored and only burn CPU. */
export const MAX_JSON_DEPTH = 32;

/**
 * Reads a request's JSON body: refuses one whose `Content-Length` exceeds `maxBytes`
 * before reading it, stops reading a longer stream at `maxBytes`, and checks the content
 * type and nesting.
 *
 * @param request the request
 * @param maxBytes the largest body accepted
 * @returns the parsed value, or undefined for an empty body
 * @throws {HttpError} 413 too large, 415 not JSON, 400 malformed
 */
export async function readJsonBody(request: Request, maxBytes: number): Promise<unknown> {
  const lengthHeader = request.headers.get("content-length");
  const declared = lengthHeader === null ? null : Number(lengthHeader);
  if (declared !== null && !(Number.isSafeInteger(declared) && declared >= 0)) {
    await discard(request);
    throw new HttpError(400, "bad_request", "Invalid Content-Length header");
  }
  if (declared !== null && declared > maxBytes) {
    await discard(request);
    throw tooLarge(maxBytes);
  }
  if (declared !== null && declared > 0) checkJsonType(request);
  const bytes = await readBounded(request, maxBytes);
  if (bytes.length === 0) return undefined;
  checkJsonType(request);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new HttpError(400, "malformed_json", "Body is not valid UTF-8");
  }
  if (text.trim() === "") return undefined;
  if (jsonDepth(text) > MAX_JSON_DEPTH) {
    throw new HttpError(
      400,
      "malformed_json",
      `Body nests deeper than ${MAX_JSON_DEPTH} levels`,
    );
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw new HttpError(400, "malformed_json", `Body is not valid JSON: ${why.slice(0, 200)}`);
  }
}

/**
 * Checks a value against a schema.
 *
 * @param schema the zod schema
 * @param value the input
 * @param failure the status, code and lead of the error when it fails
 * @returns the parsed value
 * @throws {HttpError} with one issue per problem
 */
export function validate<S extends z.ZodType>(
  schema: S,
  value: unknown,
  failure: { status: ErrorStatus; code: string; what: string },
): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = toIssues(result.error.issues);
  const first = issues[0];
  const where = first && first.path.length ? `${first.path.join(".")}: ` : "";
  throw new HttpError(
    failure.status,
    failure.code,
    `Invalid ${failure.what}: ${where}${first?.message ?? "rejected"}${
      issues.length > 1 ? ` (and ${issues.length - 1} more)` : ""
    }`,
    { issues },
  );
}

/** Zod's (or any schema's) issues as the API reports them, at most 20. */
export function toIssues(
  issues: readonly { path: readonly PropertyKey[]; message: string }[],
): Issue[] {
  return issues.slice(0, 20).map((i) => ({
    path: i.path.map((p) => typeof p === "number" ? p : String(p)),
    message: i.message,
  }));
}

/**
 * JSON with object keys sorted, to compare two values whatever the order of their keys.
 *
 * @param value plain JSON data
 * @returns its canonical text
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
        : v,
  );
}

function checkJsonType(request: Request): void {
  const type = request.headers.get("content-type");
  const [mime, ...parameters] = (type ?? "").toLowerCase().split(";").map((s) => s.trim());
  const json = mime === "application/json" || /^application\/[a-z0-9.+-]+\+json$/.test(mime);
  const charset = parameters.find((p) => p.startsWith("charset="))?.slice(8).replace(/"/g, "");
  if (!json || (charset !== undefined && charset !== "utf-8" && charset !== "utf8")) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      `Send the body as application/json (UTF-8), not ${
        type === null ? "without a Content-Type" : quote(type)
      }`,
    );
  }
}

async function readBounded(request: Request, maxBytes: number): Promise<Uint8Array> {
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge(maxBytes);
      }
      chunks.push(value);
    }
  } catch (error) {
    if (error instanceof HttpError) throw error;
    throw new HttpError(400, "bad_request", "The request body could not be read");
  } finally {
    reader.releaseLock();
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

async function discard(request: Request): Promise<void> {
  await request.body?.cancel().catch(() => {});
}

function tooLarge(maxBytes: number): HttpError {
  return new HttpError(413, "payload_too_large", `Body is larger than ${maxBytes} bytes`);
}

/** The deepest nesting of arrays and objects in JSON text (strings skipped). */
function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) {
      inString = true;
    } else if (c === 123 || c === 91) {
      if (++depth > max) max = depth;
    } else if (c === 125 || c === 93) {
      depth--;
    }
  }
  return max;
}
