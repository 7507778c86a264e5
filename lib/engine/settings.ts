/**
 * Worker settings from the environment (`KVFLOW_LEASE_MS`, `KVFLOW_MAX_RUNS`, alerts, …),
 * read the same way by every entrypoint: the CLI and Deno Deploy.
 *
 * @module
 */
import { UsageError } from "../model/errors.ts";
import type { AlertEmail } from "../alerts/deliver.ts";
import { env } from "../platform/env.ts";
import { type Duration, toMs } from "../define/duration.ts";

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
  /** `KVFLOW_WATCH`: `off` leaves other processes' commits to the sweep; default on. */
  watch: boolean;
  /** `KVFLOW_EVENT_RETENTION` (a duration such as `90d`), default 30 days. */
  eventRetention?: Duration;
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
    watch: envSwitch("KVFLOW_WATCH", true),
    eventRetention: envDuration("KVFLOW_EVENT_RETENTION"),
    alertWebhook: env("KVFLOW_ALERT_WEBHOOK") || undefined,
    alertEmail: alertEmail(),
  };
}

function alertEmail(): AlertEmail | undefined {
  const to = env("KVFLOW_ALERT_EMAIL");
  if (!to) return undefined;
  const smtpUrl = env("KVFLOW_SMTP_URL");
  if (!smtpUrl) {
    throw new UsageError(
      "KVFLOW_ALERT_EMAIL is set but KVFLOW_SMTP_URL is not: set the SMTP server alerts go through",
    );
  }
  return { smtpUrl, to, from: env("KVFLOW_ALERT_FROM") || undefined };
}

function envSwitch(name: string, fallback: boolean): boolean {
  const text = env(name);
  if (text === undefined || text === "") return fallback;
  if (text === "on") return true;
  if (text === "off") return false;
  throw new UsageError(`Invalid ${name}=${JSON.stringify(text)}: use on or off`);
}

function envDuration(name: string): Duration | undefined {
  const text = env(name);
  if (text === undefined || text === "") return undefined;
  try {
    toMs(text as Duration, name);
  } catch {
    throw new UsageError(
      `Invalid ${name}=${JSON.stringify(text)}: use a duration like 30d, 12h or 90m`,
    );
  }
  return text as Duration;
}

function envInt(name: string, fallback: number): number {
  const text = env(name);
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    throw new UsageError(`Invalid ${name}=${JSON.stringify(text)}: use a positive integer`);
  }
  return value;
}
