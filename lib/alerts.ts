/**
 * Alerts: when a run fails, one alert is stored with it (in the same commit as the
 * failure), printed on stderr, and — when a webhook is configured — POSTed as
 * Slack-compatible JSON from a KV outbox, retried, and marked sent so it goes out once.
 *
 * @module
 */
import * as keys from "./keys.ts";
import { commitAtomic } from "./atomic.ts";

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
  webhook: "none" | "pending" | "sent" | "failed";
  /** When it was delivered. */
  sentAt?: number;
  /** Why delivery was given up. */
  webhookError?: string;
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

/** Options of {@linkcode deliverAlert}. */
export interface DeliverOptions {
  /** Webhook URL. */
  url: string;
  /** The delivering worker's id. */
  owner: string;
  /** Delays between attempts, ms. Default 1 s, 2 s, 4 s, 8 s. */
  backoff?: readonly number[];
  /** Time limit of one POST, ms. Default 10 s. */
  timeoutMs?: number;
  /** Stops retrying when aborted. */
  signal?: AbortSignal;
}

const CLAIM_MS = 60_000;

/**
 * Delivers a pending alert's webhook once: claims it, POSTs with retries, and records the
 * result. Does nothing when the alert was already sent, given up, or is being sent by
 * another worker.
 *
 * @returns the alert's webhook state afterwards, or null when there is no such alert
 */
export async function deliverAlert(
  kv: Deno.Kv,
  runId: string,
  seq: number,
  options: DeliverOptions,
): Promise<AlertRecord["webhook"] | null> {
  const entry = await kv.get<AlertRecord>(keys.alert(runId, seq));
  const alert = entry.value;
  if (!alert) {
    await kv.delete(keys.alertOutbox(runId, seq));
    return null;
  }
  if (alert.webhook !== "pending") {
    await kv.delete(keys.alertOutbox(runId, seq));
    return alert.webhook;
  }
  if (alert.sending && alert.sending.until > Date.now() && alert.sending.owner !== options.owner) {
    return alert.webhook;
  }
  const claimed: AlertRecord = {
    ...alert,
    sending: { owner: options.owner, until: Date.now() + CLAIM_MS },
  };
  const claim = await commitAtomic(kv.atomic().check(entry).set(keys.alert(runId, seq), claimed));
  if (!claim.ok) return alert.webhook;
  const backoff = options.backoff ?? [1000, 2000, 4000, 8000];
  let lastError = "";
  for (let attempt = 0; attempt <= backoff.length; attempt++) {
    if (attempt > 0) {
      await sleep(backoff[attempt - 1], options.signal);
      if (options.signal?.aborted) return "pending";
    }
    try {
      const response = await fetch(options.url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(payload(alert)),
        signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
      });
      await response.body?.cancel();
      if (response.ok) {
        await finishDelivery(kv, claimed, { webhook: "sent", sentAt: Date.now() });
        return "sent";
      }
      lastError = `HTTP ${response.status}`;
      if (response.status >= 400 && response.status < 500 && response.status !== 429) break;
    } catch (error) {
      lastError = error instanceof Error ? error.message : String(error);
    }
  }
  await finishDelivery(kv, claimed, { webhook: "failed", webhookError: lastError });
  console.error(
    `kvflow: could not deliver the alert of run ${runId} to the webhook: ${lastError}`,
  );
  return "failed";
}

async function finishDelivery(
  kv: Deno.Kv,
  alert: AlertRecord,
  change: Partial<AlertRecord>,
): Promise<void> {
  const done: AlertRecord = { ...alert, ...change };
  delete done.sending;
  await commitAtomic(
    kv.atomic()
      .set(keys.alert(alert.runId, alert.seq), done)
      .delete(keys.alertOutbox(alert.runId, alert.seq)),
  );
}

/** Alerts waiting in the outbox for at least `minAgeMs`. */
export async function pendingAlerts(
  kv: Deno.Kv,
  minAgeMs: number,
): Promise<{ runId: string; seq: number }[]> {
  const out: { runId: string; seq: number }[] = [];
  const now = Date.now();
  for await (const e of kv.list<number>({ prefix: keys.alertOutboxPrefix() }, { limit: 100 })) {
    if (now - e.value >= minAgeMs) {
      out.push({ runId: e.key[2] as string, seq: e.key[3] as number });
    }
  }
  return out;
}

/** The alerts stored with a run. */
export async function runAlerts(kv: Deno.Kv, runId: string): Promise<AlertRecord[]> {
  const out: AlertRecord[] = [];
  for await (const e of kv.list<AlertRecord>({ prefix: keys.alertPrefix(runId) })) {
    out.push(e.value);
  }
  return out;
}

function payload(alert: AlertRecord) {
  return {
    text: alertText(alert),
    kvflow: {
      runId: alert.runId,
      pipeline: alert.pipeline,
      seq: alert.seq,
      step: alert.step,
      attempts: alert.attempts,
      message: alert.message,
      logicalDate: alert.logicalDate,
      failedAt: new Date(alert.at).toISOString(),
    },
  };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
