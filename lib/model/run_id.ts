/**
 * The run-id format and the idempotency-key format: what a valid one looks like, how
 * long it may be, and the messages that refuse the rest. Checked before KV sees them, so
 * an unknown or malformed id fails fast and never reaches a key.
 *
 * @module
 */
import { UsageError } from "./errors.ts";

/** Most characters of a run id (ids are ASCII: a byte each in a key). */
export const MAX_RUN_ID_LENGTH = 200;
const RUN_ID = new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,${MAX_RUN_ID_LENGTH - 1}}$`);
/** Most characters of an idempotency key; with a pipeline's name its KV key stays short. */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

/** Whether a string can be a run id (so unknown ids fail fast, before KV sees them). */
export function isRunId(value: string): boolean {
  return RUN_ID.test(value);
}

/**
 * Checks a run id given by a caller.
 *
 * @throws {UsageError} when it is not a valid run id
 */
export function checkRunId(id: string): void {
  if (isRunId(id)) return;
  throw new UsageError(
    `Invalid run id ${quoteClipped(id)}: use 1 to ${MAX_RUN_ID_LENGTH} letters, ` +
      `digits, '_', '.', ':' or '-', starting with a letter or digit`,
  );
}

/**
 * A new run id: UTC time of creation to the second, then ten random letters (50 bits),
 * sortable by time. Six letters (30 bits) were too few: at 5,000 runs created a second,
 * two of them got the same id about once in 90 seconds, and the second creation failed.
 */
export function newRunId(now: number): string {
  const stamp = new Date(now).toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  const random = crypto.getRandomValues(new Uint8Array(10));
  const alphabet = "0123456789abcdefghjkmnpqrstvwxyz";
  return `${stamp}-${Array.from(random, (b) => alphabet[b & 31]).join("")}`;
}

/** The error for a run id that names no run (an id too long for a key names none). */
export function unknownRun(runId: string): UsageError {
  return new UsageError(`Unknown run: ${quoteClipped(runId)}`, "not_found");
}

/**
 * Checks an idempotency key: 1 to {@linkcode MAX_IDEMPOTENCY_KEY_LENGTH} characters,
 * without control characters.
 *
 * @throws {UsageError} on any other value
 */
export function checkIdempotencyKey(key: unknown): void {
  if (
    typeof key !== "string" || key.length === 0 || key.length > MAX_IDEMPOTENCY_KEY_LENGTH ||
    /\p{Cc}/u.test(key)
  ) {
    throw new UsageError(
      `Invalid idempotency key ${
        typeof key === "string" ? quoteClipped(key) : String(key)
      }: use 1 to ${MAX_IDEMPOTENCY_KEY_LENGTH} characters without control characters`,
    );
  }
}

/** A value for a one-line message: quoted, and cut after 80 characters. */
function quoteClipped(value: string): string {
  return value.length <= 80
    ? JSON.stringify(value)
    : `${JSON.stringify(value.slice(0, 80))}… (${value.length} characters)`;
}
