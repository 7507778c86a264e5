/**
 * Where kvflow keeps its state, from the environment: `KVFLOW_KV_PATH` names a local
 * file (default `./data/kvflow.kv`), `:memory:`, or a KV Connect URL. On Deno Deploy
 * the app's own database is used. Only local files and memory have queues.
 *
 * @module
 */
import { kvUnavailable, KvUnavailableError, UsageError } from "../model/errors.ts";
import type { AlertEmail } from "../alerts/alerts.ts";

/** An open KV database and what it can do. */
export interface OpenedKv {
  /** The database. */
  kv: Deno.Kv;
  /** Where it is, for messages. */
  location: string;
  /** Whether `kv.enqueue` works here. */
  queues: boolean;
}

/** The default KV file. */
export const DEFAULT_KV_PATH = "./data/kvflow.kv";

/**
 * Opens the KV database at `path`, or where the environment says.
 *
 * @throws {KvUnavailableError} when it cannot be opened, saying where and why
 */
export async function openKv(path?: string): Promise<OpenedKv> {
  const onDeploy = Deno.env.get("DENO_DEPLOY") === "true";
  const location = path ?? Deno.env.get("KVFLOW_KV_PATH") ?? (onDeploy ? "" : DEFAULT_KV_PATH);
  const remote = /^https?:\/\//.test(location);
  const dir = location && location !== ":memory:" && !remote ? location.replace(/[^/]*$/, "") : "";
  try {
    if (dir) await Deno.mkdir(dir, { recursive: true });
    const kv = await Deno.openKv(location || undefined);
    return {
      kv,
      location: location || "(Deno Deploy database)",
      queues: !remote && !onDeploy,
    };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    // mkdir of a path through a regular file says only "File exists"
    const why =
      error instanceof Deno.errors.AlreadyExists || error instanceof Deno.errors.NotADirectory
        ? `part of ${JSON.stringify(dir)} is a file, not a directory (${message})`
        : message;
    throw new KvUnavailableError(
      `Cannot open the KV database at ${JSON.stringify(location)}: ${why}` +
        " (set KVFLOW_KV_PATH to a writable file, :memory:, or a KV Connect URL)",
      kvUnavailable(error)?.problem ?? "cannot-open",
      { cause: error },
    );
  }
}

/** Worker settings every entrypoint (CLI, Deploy) reads from the environment. */
export interface WorkerSettings {
  /** `KVFLOW_LEASE_MS`, default 15,000. */
  leaseMs: number;
  /** `KVFLOW_POLL_MS`, default 1,000. */
  pollMs: number;
  /** `KVFLOW_MAX_RUNS`, default 16. */
  maxRuns: number;
  /** `KVFLOW_MAX_STEPS`, default 64. */
  maxSteps: number;
  /** `KVFLOW_GROUP_COMMIT`: `off` commits each checkpoint on its own; default on. */
  groupCommit: boolean;
  /** `KVFLOW_ALERT_WEBHOOK`. */
  alertWebhook?: string;
  /** `KVFLOW_ALERT_EMAIL` through `KVFLOW_SMTP_URL`, from `KVFLOW_ALERT_FROM`. */
  alertEmail?: AlertEmail;
}

/**
 * Reads the worker settings from the environment.
 *
 * @throws {UsageError} on a malformed number, or alert e-mail without an SMTP server
 */
export function workerSettingsFromEnv(): WorkerSettings {
  return {
    leaseMs: envInt("KVFLOW_LEASE_MS", 15_000),
    pollMs: envInt("KVFLOW_POLL_MS", 1000),
    maxRuns: envInt("KVFLOW_MAX_RUNS", 16),
    maxSteps: envInt("KVFLOW_MAX_STEPS", 64),
    groupCommit: envSwitch("KVFLOW_GROUP_COMMIT", true),
    alertWebhook: Deno.env.get("KVFLOW_ALERT_WEBHOOK") || undefined,
    alertEmail: alertEmail(),
  };
}

function alertEmail(): AlertEmail | undefined {
  const to = Deno.env.get("KVFLOW_ALERT_EMAIL");
  if (!to) return undefined;
  const smtpUrl = Deno.env.get("KVFLOW_SMTP_URL");
  if (!smtpUrl) {
    throw new UsageError(
      "KVFLOW_ALERT_EMAIL is set but KVFLOW_SMTP_URL is not: set the SMTP server alerts go through",
    );
  }
  return { smtpUrl, to, from: Deno.env.get("KVFLOW_ALERT_FROM") || undefined };
}

function envSwitch(name: string, fallback: boolean): boolean {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  if (text === "on") return true;
  if (text === "off") return false;
  throw new UsageError(`Invalid ${name}=${JSON.stringify(text)}: use on or off`);
}

function envInt(name: string, fallback: number): number {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    throw new UsageError(`Invalid ${name}=${JSON.stringify(text)}: use a positive integer`);
  }
  return value;
}
