/**
 * The alert of a failed run: what is stored with the run (in the same commit as the
 * failure), its one-line text, and reading a run's alerts back.
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
  /** Which failure of the run this is, from 1. */
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
  /** Who is delivering it, until when: keeps two workers from sending it together. */
  sending?: { owner: string; until: number };
}

/** The one-line form of an alert, for stderr and chat. */
export function alertText(alert: AlertRecord): string {
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
