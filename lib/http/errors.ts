/**
 * HTTP errors: route code throws {@linkcode HttpError} (or a {@linkcode UsageError} from
 * the store), and {@linkcode errorResponse} turns whatever was thrown into the one error
 * shape of the API, `{ "error": { "code", "message", "issues"? } }`. A client's mistake
 * gets a 4xx naming it; anything else is a 500 that shows no internals.
 *
 * @module
 */
import { HTTPException } from "hono/http-exception";
import { KvUnavailableError, UsageError } from "../model/errors.ts";
import type { Issue } from "./schemas.ts";

/** Status codes the API answers errors with. */
export type ErrorStatus =
  | 400
  | 401
  | 403
  | 404
  | 405
  | 409
  | 413
  | 415
  | 422
  | 500
  | 503;

/**
 * An error with its HTTP status, for the client to see.
 *
 * @example
 * ```ts
 * import { HttpError } from "./errors.ts";
 * throw new HttpError(409, "conflict", "Run 42 is running: nothing to resume");
 * ```
 */
export class HttpError extends Error {
  /** The HTTP status. */
  readonly status: ErrorStatus;
  /** Machine-readable code. */
  readonly code: string;
  /** What was wrong with the input, field by field. */
  readonly issues?: Issue[];
  /** Extra response headers (`WWW-Authenticate`, `Allow`). */
  readonly headers?: Record<string, string>;

  /**
   * Creates it.
   *
   * @param status the HTTP status
   * @param code a machine-readable code
   * @param message one line for a person; never secrets or internals
   * @param options input issues and extra headers
   */
  constructor(
    status: ErrorStatus,
    code: string,
    message: string,
    options: { issues?: Issue[]; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.code = code;
    this.issues = options.issues;
    this.headers = options.headers;
  }
}

const USAGE_STATUS: Record<string, ErrorStatus> = {
  not_found: 404,
  conflict: 409,
  version_changed: 409,
  invalid_params: 422,
  too_large: 413,
  kv_unavailable: 503,
};

/**
 * The JSON error response for anything thrown while handling a request. Errors that are not
 * the client's are reported through `report` and answered with a reference, never a message.
 *
 * @param error what was thrown
 * @param report where unexpected errors go, with the reference given to the client
 * @returns the response
 */
export function errorResponse(
  error: unknown,
  report: (error: unknown, ref: string) => void,
): Response {
  if (error instanceof HttpError) {
    const { status, code, message, issues, headers } = error;
    return errorJson(status, issues ? { code, message, issues } : { code, message }, headers);
  }
  if (error instanceof UsageError) {
    return errorJson(USAGE_STATUS[error.code] ?? 400, { code: error.code, message: error.message });
  }
  if (error instanceof KvUnavailableError) {
    // not the client's fault, but nothing internal either: the operator's disk or network
    return errorJson(503, { code: error.code, message: error.message });
  }
  if (error instanceof HTTPException && error.status < 500) {
    return errorJson(error.status as ErrorStatus, {
      code: "http",
      message: error.message || "Bad request",
    });
  }
  const ref = crypto.randomUUID().slice(0, 8);
  report(error, ref);
  return errorJson(500, { code: "internal", message: `Internal server error (reference ${ref})` });
}

/**
 * A JSON error response.
 *
 * @param status the HTTP status
 * @param error the code, message and input issues
 * @param headers extra headers
 * @returns the response
 */
export function errorJson(
  status: ErrorStatus,
  error: { code: string; message: string; issues?: Issue[] },
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify({ error }), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

/**
 * Quotes a value a client sent for an error message: JSON-escaped and cut short, so a
 * huge or binary input cannot blow up or garble the answer.
 */
export function quote(value: string, max = 80): string {
  return JSON.stringify(value.length > max ? `${value.slice(0, max)}…` : value);
}
