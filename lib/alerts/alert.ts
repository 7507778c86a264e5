/**
 * The alert of a failed run (stored with the run, in the same commit as the failure) or of
 * a tick whose run had not succeeded by its schedule's deadline; its one-line text, and
 * reading a run's alerts back.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import type { Kv } from "../kv/kv.ts";

/** Delivery state of one alert channel. */
export type ChannelState = "none" | "pending" | "sent" | "failed";

/** The stored alert of one failure of a run. */
export interface AlertRecord {
  /** The run. */
  runId: string;
  /** Its pipeline. */
  pipeline: string;
  /** Which failure of the run this is, from 1; 0 for a missed deadline. */
  seq: number;
  /** When the run failed. */
  at: number;
  /** The step that failed, if one did. */
  step: string | null;
  /** Attempts the step made. */
  attempts: number;
  /** The error message. */
  message: string;
  /** The run's logical date. */
  logicalDate: string;
  /** Webhook delivery: not configured, waiting, delivered, or given up. */
  webhook: ChannelState;
  /** When the webhook was delivered. */
  sentAt?: number;
  /** Why webhook delivery was given up. */
  webhookError?: string;
  /** E-mail delivery: not configured, waiting, delivered, or given up. */
  email?: ChannelState;
  /** When the e-mail was accepted by the SMTP server. */
  emailSentAt?: number;
  /** Why e-mail delivery was given up. */
  emailError?: string;
  /** For a missed deadline (the run may not exist): the tick, the deadline and why. */
  deadline?: DeadlineMissInfo;
  /** Who is delivering it, until when: keeps two workers from sending it together. */
  sending?: { owner: string; until: number };
}

/** A tick's missed deadline. */
export interface DeadlineMissInfo {
  /** The tick, ms since the epoch. */
  tick: number;
  /** The deadline, ms since the epoch. */
  at: number;
  /** The deadline as declared, e.g. `07:00 Europe/Berlin` or `5s after the tick`. */
  rule: string;
  /** Why the run had not succeeded: failed at a step, still running, waiting, no run. */
  reason: string;
}

/** The one-line form of an alert, for stderr and chat. */
export function alertText(alert: AlertRecord): string {
  const miss = alert.deadline;
  if (miss) {
    return `kvflow ALERT: '${alert.pipeline}' missed its deadline: the run of tick ${
      new Date(miss.tick).toISOString()
    } (${alert.logicalDate}) had not succeeded by ${
      new Date(miss.at).toISOString()
    } (${miss.rule}): ${miss.reason} — run ${alert.runId}`;
  }
  const where = alert.step
    ? `at step '${alert.step}' after ${alert.attempts} attempt${alert.attempts === 1 ? "" : "s"}`
    : "";
  return `kvflow ALERT: run ${alert.runId} of '${alert.pipeline}' (${alert.logicalDate}) failed ${where}: ${alert.message} — resume with: deno task resume ${alert.runId}`;
}

/** The alerts stored with a run. */
export async function runAlerts(kv: Kv, runId: string): Promise<AlertRecord[]> {
  const out: AlertRecord[] = [];
  for await (const e of kv.list<AlertRecord>({ prefix: keys.alertPrefix(runId) })) {
    out.push(e.value);
  }
  return out;
}
