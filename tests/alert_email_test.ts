import assert from "node:assert/strict";
import { SMTPServer } from "smtp-server";
import { openEngine, pipeline, step } from "../lib/mod.ts";
import { runAlerts } from "../lib/alerts/alert.ts";

interface Mail {
  from: string;
  to: string[];
  raw: string;
}

/** A real SMTP server on loopback that keeps what it receives. */
async function smtpServer(options: { password?: string } = {}) {
  const mails: Mail[] = [];
  let logins = 0;
  const server = new SMTPServer({
    disabledCommands: options.password ? ["STARTTLS"] : ["STARTTLS", "AUTH"],
    allowInsecureAuth: true,
    authOptional: !options.password,
    logger: false,
    onAuth(auth, _session, callback) {
      logins++;
      if (auth.password === options.password) return callback(null, { user: auth.username });
      callback(new Error("Invalid username or password"));
    },
    onData(stream, session, callback) {
      const chunks: Uint8Array[] = [];
      stream.on("data", (c: Uint8Array) => chunks.push(c));
      stream.on("end", () => {
        mails.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: new TextDecoder().decode(concat(chunks)),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.server.address() as { port: number }).port;
  return {
    mails,
    logins: () => logins,
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

const failing = pipeline("payroll", {
  steps: [
    step("pay", { retry: { attempts: 2, delay: "5ms" } }, () => {
      throw new Error("Bank API returned 503");
    }),
  ],
});

Deno.test("a failed run e-mails its alert once over SMTP", async () => {
  const smtp = await smtpServer();
  try {
    await using engine = await openEngine({
      path: ":memory:",
      pipelines: [failing],
      onAlert: () => {},
      alertEmail: { smtpUrl: `smtp://127.0.0.1:${smtp.port}`, to: "oncall@example.com" },
      alertBackoff: [10, 10],
    });
    const run = await engine.store.createRun(failing);
    assert.equal((await engine.runToEnd(run.id)).status, "failed");
    await engine.worker.settleAlerts();
    assert.equal(smtp.mails.length, 1);
    const mail = smtp.mails[0];
    assert.deepEqual(mail.to, ["oncall@example.com"]);
    assert.match(mail.raw, new RegExp(`Subject: kvflow: payroll run ${run.id} failed at pay`));
    assert.match(mail.raw, /Bank API returned 503/);
    assert.match(mail.raw, new RegExp(`Message-ID: <alert\\.${run.id}\\.1@kvflow>`, "i"));
    const [alert] = await runAlerts(engine.kv, run.id);
    assert.equal(alert.email, "sent");
    assert.equal(alert.webhook, "none");
    // a later sweep finds nothing left to send
    await engine.worker.sweep();
    await engine.worker.settleAlerts();
    assert.equal(smtp.mails.length, 1);
  } finally {
    await smtp.close();
  }
});

Deno.test("an SMTP server that refuses the login marks the alert e-mail failed, naming the cause", async () => {
  const smtp = await smtpServer({ password: "right" });
  const errors: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => errors.push(args.join(" "));
  try {
    await using engine = await openEngine({
      path: ":memory:",
      pipelines: [failing],
      onAlert: () => {},
      alertEmail: {
        smtpUrl: `smtp://alerts:wrong@127.0.0.1:${smtp.port}`,
        to: "oncall@example.com",
      },
      alertBackoff: [10, 10, 10],
    });
    const run = await engine.store.createRun(failing);
    await engine.runToEnd(run.id);
    await engine.worker.settleAlerts();
    const [alert] = await runAlerts(engine.kv, run.id);
    assert.equal(alert.email, "failed");
    assert.match(alert.emailError ?? "", /SMTP login refused/);
    assert.equal(smtp.logins(), 1, "a refused login is not retried");
    assert.equal(smtp.mails.length, 0);
    assert.ok(errors.some((e) => e.includes("could not deliver the alert")));
  } finally {
    console.error = original;
    await smtp.close();
  }
});
