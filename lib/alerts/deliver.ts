/**
 * Delivering alerts from the KV outbox to the configured channels — a Slack-compatible
 * webhook and an e-mail over SMTP: retried with backoff, claimed so two workers do not
 * send together, and marked sent so each goes out once.
 *
 * @module
 */
import * as keys from "../kv/keys.ts";
import { commitAtomic } from "../kv/commit.ts";
import type { Kv } from "../kv/kv.ts";
import { type AlertRecord, alertText } from "./alert.ts";
import { logLine } from "../platform/log.ts";
import { sleep } from "../model/clock.ts";

/** Where alert e-mail goes. */
export interface AlertEmail {
  /** SMTP server, e.g. `smtp://user:pass@mail.example.com:587` or `smtps://…`. */
  smtpUrl: string;
  /** Recipients, comma-separated. */
  to: string;
  /** Sender. Default `kvflow <kvflow@localhost>`. */
  from?: string;
}

/** The channels alerts are delivered to. */
export interface AlertChannels {
  /** Slack-compatible webhook URL. */
  webhook?: string;
  /** E-mail over SMTP. */
  email?: AlertEmail;
}

/** Options of {@linkcode deliverAlert}. */
export interface DeliverOptions extends AlertChannels {
  /** The delivering worker's id. */
  owner: string;
  /** Delays between attempts, ms. Default 1 s, 2 s, 4 s, 8 s. */
  backoff?: readonly number[];
  /** Time limit of one attempt, ms. Default 10 s. */
  timeoutMs?: number;
  /** Stops retrying when aborted. */
  signal?: AbortSignal;
}

const CLAIM_MS = 60_000;

/**
 * Delivers a pending alert's channels once: claims the alert, tries each pending channel
 * with retries, and records each result. Does nothing when nothing is pending or another
 * worker is delivering it.
 *
 * @returns the alert afterwards, or null when there is no such alert
 */
export async function deliverAlert(
  kv: Kv,
  runId: string,
  seq: number,
  options: DeliverOptions,
): Promise<AlertRecord | null> {
  const entry = await kv.get<AlertRecord>(keys.alert(runId, seq));
  const alert = entry.value;
  if (!alert) {
    await kv.delete(keys.alertOutbox(runId, seq));
    return null;
  }
  if (alert.webhook !== "pending" && alert.email !== "pending") {
    await kv.delete(keys.alertOutbox(runId, seq));
    return alert;
  }
  if (alert.sending && alert.sending.until > Date.now() && alert.sending.owner !== options.owner) {
    return alert;
  }
  const claimed: AlertRecord = {
    ...alert,
    sending: { owner: options.owner, until: Date.now() + CLAIM_MS },
  };
  const claim = await commitAtomic(kv.atomic().check(entry).set(keys.alert(runId, seq), claimed));
  if (!claim.ok) return alert;
  const done: AlertRecord = { ...claimed };
  if (alert.webhook === "pending") {
    const error = options.webhook
      ? await withRetries(options, () => postWebhook(options.webhook!, alert, options))
      : "no webhook configured in the delivering worker";
    if (error === "aborted") return alert;
    Object.assign(
      done,
      error ? { webhook: "failed", webhookError: error } : {
        webhook: "sent",
        sentAt: Date.now(),
      },
    );
  }
  if (alert.email === "pending") {
    const error = options.email
      ? await withRetries(options, () => sendEmail(options.email!, alert, options))
      : "no SMTP server configured in the delivering worker";
    if (error === "aborted") return alert;
    Object.assign(
      done,
      error ? { email: "failed", emailError: error } : {
        email: "sent",
        emailSentAt: Date.now(),
      },
    );
  }
  delete done.sending;
  await commitAtomic(
    kv.atomic().set(keys.alert(runId, seq), done).delete(keys.alertOutbox(runId, seq)),
  );
  for (const [channel, error] of [["webhook", done.webhookError], ["e-mail", done.emailError]]) {
    if (error) {
      logLine(
        "error",
        `kvflow: could not deliver the alert of run ${runId} by ${channel}: ${error}`,
        { run: runId },
      );
    }
  }
  return done;
}

/** A failure worth retrying, or one that will fail the same way again. */
class DeliveryError extends Error {
  constructor(message: string, readonly permanent: boolean) {
    super(message);
  }
}

/** Runs `attempt` with the backoff; resolves to null on success, else the last error. */
async function withRetries(
  options: DeliverOptions,
  attempt: () => Promise<void>,
): Promise<string | null> {
  const backoff = options.backoff ?? [1000, 2000, 4000, 8000];
  let last = "";
  for (let i = 0; i <= backoff.length; i++) {
    if (i > 0) {
      await sleep(backoff[i - 1], options.signal);
      if (options.signal?.aborted) return "aborted";
    }
    try {
      await attempt();
      return null;
    } catch (error) {
      last = error instanceof Error ? error.message : String(error);
      if (error instanceof DeliveryError && error.permanent) break;
    }
  }
  return last;
}

async function postWebhook(
  url: string,
  alert: AlertRecord,
  options: DeliverOptions,
): Promise<void> {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(payload(alert)),
    signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
  });
  await response.body?.cancel();
  if (response.ok) return;
  const status = response.status;
  throw new DeliveryError(`HTTP ${status}`, status >= 400 && status < 500 && status !== 429);
}

async function sendEmail(
  email: AlertEmail,
  alert: AlertRecord,
  options: DeliverOptions,
): Promise<void> {
  // loaded on first use: most processes never send mail, and it is slow to import
  const nodemailer = (await import("nodemailer")).default;
  const transport = nodemailer.createTransport({
    url: email.smtpUrl,
    connectionTimeout: options.timeoutMs ?? 10_000,
    greetingTimeout: options.timeoutMs ?? 10_000,
    socketTimeout: options.timeoutMs ?? 10_000,
  });
  try {
    await transport.sendMail({
      from: email.from ?? "kvflow <kvflow@localhost>",
      to: email.to,
      subject: alert.deadline
        ? `kvflow: ${alert.pipeline} missed its deadline (${alert.logicalDate}): ${alert.deadline.reason}`
        : `kvflow: ${alert.pipeline} run ${alert.runId} failed${
          alert.step ? ` at ${alert.step}` : ""
        }`,
      // one Message-ID per failure, so a receiving system can drop a duplicate
      messageId: `<alert.${alert.runId}.${alert.seq}@kvflow>`,
      text: alert.deadline ? deadlineMailText(alert) : [
        alertText(alert),
        "",
        `pipeline:     ${alert.pipeline}`,
        `run:          ${alert.runId}`,
        `logical date: ${alert.logicalDate}`,
        `step:         ${alert.step ?? "-"} (${alert.attempts} attempts)`,
        `failed at:    ${new Date(alert.at).toISOString()}`,
        `error:        ${alert.message}`,
        "",
        `status:  deno task status ${alert.runId}`,
        `resume:  deno task resume ${alert.runId}`,
      ].join("\n"),
    });
  } catch (error) {
    const code = (error as { code?: string; responseCode?: number }).code;
    const status = (error as { responseCode?: number }).responseCode ?? 0;
    const message = error instanceof Error ? error.message : String(error);
    // bad credentials or a rejected address will fail the same way on every retry
    throw new DeliveryError(
      code === "EAUTH"
        ? `SMTP login refused (check the user and password in the SMTP URL): ${message}`
        : message,
      code === "EAUTH" || code === "EENVELOPE" || (status >= 500 && status < 600),
    );
  } finally {
    transport.close();
  }
}

function deadlineMailText(alert: AlertRecord): string {
  const miss = alert.deadline!;
  return [
    alertText(alert),
    "",
    `pipeline:     ${alert.pipeline}`,
    `tick:         ${new Date(miss.tick).toISOString()} (logical date ${alert.logicalDate})`,
    `deadline:     ${new Date(miss.at).toISOString()} (${miss.rule})`,
    `why:          ${miss.reason}`,
    `run:          ${alert.runId}`,
    "",
    `status:  deno task status ${alert.runId}`,
  ].join("\n");
}

/** Alerts waiting in the outbox for at least `minAgeMs`. */
export async function pendingAlerts(
  kv: Kv,
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
      ...(alert.deadline
        ? {
          deadline: {
            tick: new Date(alert.deadline.tick).toISOString(),
            at: new Date(alert.deadline.at).toISOString(),
            rule: alert.deadline.rule,
            reason: alert.deadline.reason,
          },
        }
        : {}),
    },
  };
}
