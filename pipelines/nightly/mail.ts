/**
 * Delivering one mail (nodemailer): over SMTP when `KVFLOW_SMTP_URL` is set, else as a
 * real `.eml` file in the outbox directory. Failures say what to fix; those a retry cannot
 * fix (a refused login, a refused recipient, a malformed URL) are not retried.
 *
 * Exactly once: the email stage checkpoints each message after delivery, so a retry,
 * resume or crash recovery re-sends only messages without a checkpoint. What remains is
 * the moment between the server's "250 OK" and the checkpoint: a crash there sends the
 * message again, with the same Message-ID, which lets mail systems drop the copy. The
 * outbox closes even that gap: a file already holding the Message-ID is not written again.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { z } from "zod";
// @ts-types="@types/nodemailer"
import type { SendMailOptions } from "nodemailer";
import { NonRetryableError } from "../../lib/mod.ts";
import { smtpUrl } from "./config.ts";
import { readTextIfAny, writeFileAtomic } from "./files.ts";

/** A mail to deliver. */
export interface Mail {
  /** Sender, `Name <address>`. */
  from: string;
  /** Recipient, `Name <address>`. */
  to: string;
  /** Subject line. */
  subject: string;
  /** Plain-text body. */
  text: string;
  /** `<id@domain>`: stable across retries, so a duplicate can be recognised. */
  messageId: string;
  /** Extra headers. */
  headers: Record<string, string>;
  /** Files attached, such as the report. */
  attachments: { filename: string; content: Uint8Array; contentType: string }[];
}

/** How a mail went out. */
export const Delivery = z.object({
  via: z.enum(["smtp", "outbox"]),
  to: z.string(),
  messageId: z.string(),
  /** The SMTP server (without credentials) or the outbox file. */
  where: z.string(),
  /** The server's answer, or what the outbox did. */
  response: z.string(),
});
/** How a mail went out. */
export type Delivery = z.infer<typeof Delivery>;

const TIMEOUTS = { connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000 };

/**
 * Delivers a mail over SMTP, or to `outboxFile` when no SMTP server is configured.
 *
 * @param mail the message
 * @param outboxFile where the `.eml` goes without SMTP
 * @returns how it went out
 * @throws {NonRetryableError} on a malformed `KVFLOW_SMTP_URL`, a refused login or recipient
 * @throws {Error} (retryable) when the server cannot be reached or answers 4xx
 */
export async function deliver(mail: Mail, outboxFile: string): Promise<Delivery> {
  const url = smtpUrl();
  return url ? await sendSmtp(mail, url) : await writeOutbox(mail, outboxFile);
}

async function sendSmtp(mail: Mail, url: string): Promise<Delivery> {
  const server = smtpServer(url);
  const nodemailer = await loadNodemailer();
  const transport = nodemailer.createTransport({ ...server.options, ...TIMEOUTS });
  try {
    const info = await transport.sendMail(message(mail));
    return {
      via: "smtp",
      to: mail.to,
      messageId: mail.messageId,
      where: server.where,
      response: info.response,
    };
  } catch (error) {
    throw smtpError(error, server);
  } finally {
    transport.close();
  }
}

async function writeOutbox(mail: Mail, file: string): Promise<Delivery> {
  const delivery = { via: "outbox" as const, to: mail.to, messageId: mail.messageId, where: file };
  const existing = await readTextIfAny(file);
  if (existing?.match(/^Message-ID: (.*)$/m)?.[1] === mail.messageId) {
    return { ...delivery, response: "already in the outbox" };
  }
  const nodemailer = await loadNodemailer();
  const outbox = nodemailer.createTransport({
    streamTransport: true,
    buffer: true,
    newline: "unix",
  });
  const built = await outbox.sendMail(message(mail));
  await writeFileAtomic(file, built.message as Uint8Array);
  return { ...delivery, response: "written to the outbox" };
}

/** Loaded on first use: every CLI command imports the pipeline registry, few send mail. */
async function loadNodemailer() {
  return (await import("nodemailer")).default;
}

function message(mail: Mail): SendMailOptions {
  return {
    from: mail.from,
    to: mail.to,
    subject: mail.subject,
    text: mail.text,
    messageId: mail.messageId,
    headers: mail.headers,
    attachments: mail.attachments.map((a) => ({
      filename: a.filename,
      content: Buffer.from(a.content),
      contentType: a.contentType,
    })),
  };
}

interface SmtpServer {
  options: {
    host: string;
    port: number;
    secure: boolean;
    auth?: { user: string; pass: string };
  };
  /** `smtp://host:port`, never the password. */
  where: string;
  user?: string;
}

function smtpServer(text: string): SmtpServer {
  const url = URL.canParse(text) ? new URL(text) : undefined;
  if (!url || (url.protocol !== "smtp:" && url.protocol !== "smtps:") || !url.hostname) {
    throw new NonRetryableError(
      "Invalid KVFLOW_SMTP_URL: use smtp://user:password@host:port (or smtps:// for TLS from the start)",
    );
  }
  const secure = url.protocol === "smtps:";
  const port = url.port ? Number(url.port) : secure ? 465 : 587;
  const user = decodeURIComponent(url.username);
  return {
    options: {
      host: url.hostname,
      port,
      secure,
      ...(user ? { auth: { user, pass: decodeURIComponent(url.password) } } : {}),
    },
    where: `${url.protocol}//${url.hostname}:${port}`,
    user: user || undefined,
  };
}

function smtpError(error: unknown, server: SmtpServer): Error {
  const e = error as { code?: string; responseCode?: number; message?: string };
  const why = e.message ?? String(error);
  if (e.code === "EAUTH") {
    return new NonRetryableError(
      `SMTP server ${server.where} refused the login${
        server.user ? ` of '${server.user}'` : ""
      }: ${why}. Fix the user and password in KVFLOW_SMTP_URL, then resume`,
      { cause: error },
    );
  }
  if (typeof e.responseCode === "number" && e.responseCode >= 500) {
    return new NonRetryableError(
      `SMTP server ${server.where} refused the message: ${why}. Check the recipient and the sender (KVFLOW_MAIL_FROM), then resume`,
      { cause: error },
    );
  }
  return new Error(`Cannot send through SMTP server ${server.where}: ${why}`, { cause: error });
}
