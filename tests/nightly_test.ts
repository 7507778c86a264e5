/**
 * The nightly pipeline end to end on an in-memory engine, with real peers on loopback: a
 * sample store in SQLite, a real SMTP server, a real HTTP accounting API, and a real PDF
 * reader. Each test's world points the pipeline at its own temp dir.
 *
 * @module
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
// @ts-types="@types/mailparser"
import { simpleParser } from "mailparser";
import { testPipeline } from "../lib/testing/mod.ts";
import nightly from "../pipelines/nightly/mod.ts";
import { filesIn, NightlyWorld, pdfToText, startSmtp } from "./_support/nightly.ts";
import type { Commission } from "../pipelines/nightly/commissions.ts";
import type { Night } from "../pipelines/nightly/pull_sales.ts";
import type { Report } from "../pipelines/nightly/reports.ts";
import type { Delivery } from "../pipelines/nightly/mail.ts";
import type { JournalEntry, Posting } from "../pipelines/nightly/ledger.ts";
import { formatCents } from "../pipelines/nightly/money.ts";
import { SCHEMA } from "../pipelines/nightly/schema.ts";

const MANAGERS = ["ada.berg", "bruno.costa", "chiara.engel", "dev.patel"];

Deno.test("nightly on the sample store: the night before the logical date becomes PDFs, outbox mails and one journal entry per salesperson", async () => {
  await using world = await NightlyWorld.create();
  const run = await world.run("2026-11-01");
  assert.equal(run.status, "succeeded", JSON.stringify(run.error));

  const night = await world.output<Night>(run.id, "pull-sales");
  assert.equal(night.date, "2026-10-31");
  assert.ok(night.lines.length > 0);
  const commissions = await world.output<Commission[]>(run.id, "commissions");
  assert.equal(commissions.length, 20);

  const pdfs = await filesIn(`${world.outDir}/reports/2026-11-01`);
  assert.deepEqual([...pdfs.keys()], MANAGERS.map((m) => `${m}.pdf`));
  const artifacts = await world.engine.store.getArtifacts(run.id);
  for (const [name, bytes] of pdfs) {
    assert.equal(new TextDecoder().decode(bytes.subarray(0, 5)), "%PDF-");
    assert.ok(artifacts.some((a) => a.name === name && a.contentType === "application/pdf"));
    const stored = await world.engine.store.readArtifact(run.id, name);
    assert.deepEqual(stored.bytes, bytes, `artifact ${name} differs from the file`);
  }

  const emls = await filesIn(`${world.outDir}/outbox/2026-11-01`);
  assert.deepEqual([...emls.keys()], MANAGERS.map((m) => `${m}.eml`));
  for (const [i, manager] of MANAGERS.entries()) {
    const mail = await simpleParser(new TextDecoder().decode(emls.get(`${manager}.eml`)));
    assert.equal(mail.messageId, `<${run.id}.email.${i}@store.example>`);
    assert.deepEqual(
      (Array.isArray(mail.to) ? mail.to : [mail.to]).flatMap((t) => t!.value.map((v) => v.address)),
      [`${manager}@store.example`],
    );
    assert.match(mail.subject ?? "", /^Nightly report \w+, Sat 31 Oct 2026: net sales EUR /);
    assert.equal(mail.attachments.length, 1);
    assert.deepEqual(new Uint8Array(mail.attachments[0].content), pdfs.get(`${manager}.pdf`));
  }

  const earning = commissions.filter((c) => c.commissionCents !== 0);
  const ledger = world.ledger();
  assert.deepEqual(
    ledger.map((row) => [row.key, row.amountCents]),
    earning.map((c) => [`nightly/2026-11-01/${c.salespersonId}`, Math.abs(c.commissionCents)]),
  );
});

Deno.test("nightly reports open in a real PDF reader, which finds each team's totals", async () => {
  await using world = await NightlyWorld.create();
  const run = await world.run("2026-11-01");
  assert.equal(run.status, "succeeded", JSON.stringify(run.error));
  const commissions = await world.output<Commission[]>(run.id, "commissions");
  for (const report of await world.output<Report[]>(run.id, "reports")) {
    const text = await pdfToText(await Deno.readFile(report.file));
    if (text === undefined) return;
    const team = commissions.filter((c) => c.managerId === report.manager.id);
    const sum = (pick: (c: Commission) => number) => team.reduce((a, c) => a + pick(c), 0);
    const totals = [sum((c) => c.salesCents), sum((c) => c.returnsCents), sum((c) => c.netCents)]
      .map(formatCents);
    const line = text.split("\n").find((l) => l.trimStart().startsWith("Team total"));
    assert.ok(line, `no team total line in:\n${text}`);
    assert.deepEqual(
      line.trim().split(/\s{2,}/),
      ["Team total", ...totals, formatCents(sum((c) => c.commissionCents))],
    );
    assert.match(
      text,
      new RegExp(`${report.manager.region} region · manager ${report.manager.name}`),
    );
    assert.match(text, /Sales of Saturday, 31 October 2026/);
    assert.match(text, /Report nightly\/2026-11-01\/\S+ · logical date 2026-11-01/);
    for (const c of team) assert.match(text, new RegExp(`${c.name} \\(${c.salespersonId}\\)`));
  }
});

Deno.test("backfill-ready: a second run and a rerun of the same night give byte-identical reports and no second journal entry", async () => {
  await using world = await NightlyWorld.create();
  const first = await world.run("2026-11-01");
  assert.equal(first.status, "succeeded", JSON.stringify(first.error));
  const pdfs = await filesIn(`${world.outDir}/reports/2026-11-01`);
  const ledger = world.ledger();
  assert.ok(ledger.length > 0);

  const second = await world.run("2026-11-01");
  assert.equal(second.status, "succeeded", JSON.stringify(second.error));
  assert.notEqual(second.id, first.id);
  assert.deepEqual(await filesIn(`${world.outDir}/reports/2026-11-01`), pdfs);
  assert.deepEqual(world.ledger(), ledger, "the second run changed the ledger");
  const postings = await world.output<Posting[]>(second.id, "update-accounting");
  assert.ok(postings.every((p) => p.result === "already posted"));

  const store = world.engine.store;
  await store.rerun(second, world.engine.pipeline("nightly"), "pull-sales");
  const rerun = await world.engine.runToEnd(second.id);
  assert.equal(rerun.status, "succeeded", JSON.stringify(rerun.error));
  assert.deepEqual(await filesIn(`${world.outDir}/reports/2026-11-01`), pdfs);
  for (const [name, bytes] of pdfs) {
    assert.deepEqual((await store.readArtifact(second.id, name)).bytes, bytes);
  }
  assert.deepEqual(world.ledger(), ledger, "the rerun changed the ledger");
});

Deno.test("a night without sales is a valid, empty night: zero reports, mails, no journal entries", async () => {
  await using world = await NightlyWorld.create();
  const empty = `${world.dir}/empty.db`;
  const db = new DatabaseSync(empty);
  db.exec(SCHEMA);
  db.exec(`INSERT INTO managers VALUES ('ada.berg', 'Ada Berg', 'ada@store.example', 'North');
    INSERT INTO salespeople VALUES ('S01', 'Lena Fischer', 'ada.berg', 500000);`);
  db.close();
  world.env({ KVFLOW_SALES_DB: empty });
  const run = await world.run("2026-11-01");
  assert.equal(run.status, "succeeded", JSON.stringify(run.error));
  const [report] = await world.output<Report[]>(run.id, "reports");
  assert.deepEqual(report.team, { salespeople: 1, aboveQuota: 0, netCents: 0, commissionCents: 0 });
  assert.equal((await world.output<Delivery[]>(run.id, "email")).length, 1);
  assert.deepEqual(await world.output<Posting[]>(run.id, "update-accounting"), []);
  const text = await pdfToText(await Deno.readFile(report.file));
  if (text !== undefined) assert.match(text, /No sales or returns\./);
});

Deno.test("with KVFLOW_SMTP_URL each manager gets one mail over SMTP, with the report attached", async () => {
  await using world = await NightlyWorld.create();
  await using smtp = await startSmtp();
  world.env({ KVFLOW_SMTP_URL: smtp.url, KVFLOW_MAIL_FROM: "Store reports <reports@shop.test>" });
  const run = await world.run("2026-11-01");
  assert.equal(run.status, "succeeded", JSON.stringify(run.error));

  const reports = await world.output<Report[]>(run.id, "reports");
  assert.equal(smtp.mails.length, reports.length);
  for (const [i, report] of reports.entries()) {
    const mail = smtp.mails.find((m) => m.messageId === `<${run.id}.email.${i}@shop.test>`);
    assert.ok(mail, `no mail for item ${i}`);
    assert.deepEqual(mail.from?.value, [{ name: "Store reports", address: "reports@shop.test" }]);
    assert.equal(
      mail.to && !Array.isArray(mail.to) && mail.to.value[0].address,
      report.manager.email,
    );
    assert.equal(
      mail.subject,
      `Nightly report ${report.manager.region}, Sat 31 Oct 2026: net sales EUR ${
        formatCents(report.team.netCents)
      }`,
    );
    assert.equal(mail.headers.get("x-kvflow-run"), run.id);
    assert.match(
      mail.text ?? "",
      new RegExp(`Commissions: +EUR ${formatCents(report.team.commissionCents)}`),
    );
    const [attachment] = mail.attachments;
    assert.equal(attachment.contentType, "application/pdf");
    assert.equal(attachment.filename, `nightly-2026-10-31-${report.manager.id}.pdf`);
    assert.deepEqual(new Uint8Array(attachment.content), await Deno.readFile(report.file));
  }
  const deliveries = await world.output<Delivery[]>(run.id, "email");
  assert.ok(deliveries.every((d) => d.via === "smtp" && /^250 /.test(d.response)));
  await assert.rejects(Deno.stat(`${world.outDir}/outbox`), Deno.errors.NotFound);
});

Deno.test("an SMTP server that refuses the login fails the email step at once, naming KVFLOW_SMTP_URL", async () => {
  await using world = await NightlyWorld.create();
  await using smtp = await startSmtp();
  world.env({ KVFLOW_SMTP_URL: smtp.badLoginUrl });
  const run = await world.run("2026-11-01");
  assert.equal(run.status, "failed");
  assert.equal(run.error?.step, "email");
  assert.match(
    run.error!.message,
    /SMTP server smtp:\/\/127\.0\.0\.1:\d+ refused the login of 'kvflow': .*535.*Fix the user and password in KVFLOW_SMTP_URL/,
  );
  assert.doesNotMatch(run.error!.message, /wrong/, "the password leaked into the message");
  const items = await world.engine.store.getItems(run.id, "email");
  assert.ok([...items.values()].every((item) => item.status === "failed" && item.attempt === 1));
  assert.equal(smtp.mails.length, 0);
  const steps = await world.engine.store.getSteps(run.id);
  assert.equal(steps.get("update-accounting")?.status, "succeeded", "independent branch");
});

Deno.test("with KVFLOW_ACCOUNTING_URL, 503s are retried and each journal entry is accepted exactly once", async () => {
  await using world = await NightlyWorld.create();
  const accepted = new Map<string, { entry: JournalEntry; run: string | null }>();
  const seen: string[] = [];
  let calls = 0;
  await using api = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const key = req.headers.get("idempotency-key") ?? "";
    const entry = await req.json() as JournalEntry;
    seen.push(key);
    if (++calls <= 3) return new Response("database maintenance", { status: 503 });
    if (accepted.has(key)) return Response.json({ replayed: key }, { status: 200 });
    if (entry.idempotencyKey !== key) return new Response("key mismatch", { status: 422 });
    accepted.set(key, { entry, run: req.headers.get("x-kvflow-run") });
    return Response.json({ id: accepted.size }, { status: 201 });
  });
  world.env({ KVFLOW_ACCOUNTING_URL: `http://127.0.0.1:${api.addr.port}/journal-entries` });
  const run = await world.run("2026-11-01");
  assert.equal(run.status, "succeeded", JSON.stringify(run.error));

  const commissions = await world.output<Commission[]>(run.id, "commissions");
  const earning = commissions.filter((c) => c.commissionCents !== 0);
  assert.deepEqual(
    [...accepted.keys()].sort(),
    earning.map((c) => `nightly/2026-11-01/${c.salespersonId}`).sort(),
  );
  for (const c of earning) {
    const { entry, run: from } = accepted.get(`nightly/2026-11-01/${c.salespersonId}`)!;
    assert.equal(entry.amountCents, Math.abs(c.commissionCents));
    assert.equal(entry.date, "2026-10-31");
    assert.equal(from, run.id);
  }
  assert.equal(seen.length, earning.length + 3, "an accepted entry was sent again");
  assert.deepEqual(world.ledger(), [], "the ledger table was written although the API is set");
  const attempts = await world.engine.store.getAttempts(run.id);
  assert.equal(attempts.filter((a) => a.status === "failed").length, 3);
});

Deno.test("an accounting API that refuses an entry (4xx) fails it at once, with the API's answer", async () => {
  await using world = await NightlyWorld.create();
  await using api = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    await req.body?.cancel();
    return new Response("unknown account 2410", { status: 422 });
  });
  world.env({ KVFLOW_ACCOUNTING_URL: `http://127.0.0.1:${api.addr.port}/entries` });
  const run = await world.run("2026-11-01");
  assert.equal(run.status, "failed");
  assert.equal(run.error?.step, "update-accounting");
  assert.match(
    run.error!.message,
    /refused journal entry nightly\/2026-11-01\/S\d+: HTTP 422: unknown account 2410/,
  );
  const items = await world.engine.store.getItems(run.id, "update-accounting");
  assert.ok([...items.values()].every((item) => item.attempt === 1), "a 4xx was retried");
});

Deno.test("a missing or corrupt sales database fails pull-sales at once, naming KVFLOW_SALES_DB", async () => {
  await using world = await NightlyWorld.create();
  world.env({ KVFLOW_SALES_DB: `${world.dir}/nope.db` });
  const missing = await world.run("2026-11-01");
  assert.equal(missing.status, "failed");
  assert.equal(missing.error?.step, "pull-sales");
  assert.match(
    missing.error!.message,
    /^Sales database not found: .*nope\.db \(KVFLOW_SALES_DB\)\. Point KVFLOW_SALES_DB at a SQLite file/,
  );

  const garbage = `${world.dir}/garbage.db`;
  await Deno.writeTextFile(garbage, "this is not a database, just text ".repeat(100));
  world.env({ KVFLOW_SALES_DB: garbage });
  const corrupt = await world.run("2026-11-01");
  assert.equal(corrupt.status, "failed");
  assert.match(
    corrupt.error!.message,
    /^Cannot use the sales database .*garbage\.db \(KVFLOW_SALES_DB\): file is not a database\. It must be a SQLite file with the tables managers, salespeople, products, sales and returns/,
  );
  const steps = await world.engine.store.getSteps(corrupt.id);
  assert.equal(steps.get("pull-sales")?.attempt, 1, "a corrupt database was retried");
});

Deno.test("simulateOutage=email (on the test kit's clock): retries run out, one alert, accounting finishes; a resume sends each mail once", async () => {
  await using world = await NightlyWorld.create();
  await using kit = await testPipeline(nightly);
  const failed = await kit.run({ date: "2026-11-01", params: { simulateOutage: "email" } });
  assert.equal(failed.status, "failed");
  assert.equal(failed.record.error?.step, "email");
  assert.match(
    failed.record.error!.message,
    /Mail server unreachable: connection refused \(simulateOutage=email\)/,
  );
  assert.equal(failed.alerts.length, 1);
  assert.equal(failed.steps.get("reports")?.status, "succeeded");
  assert.equal(failed.steps.get("update-accounting")?.status, "succeeded");
  const items = await failed.items("email");
  assert.ok([...items.values()].every((item) => item.attempt === 3));
  await assert.rejects(Deno.stat(`${world.outDir}/outbox`), Deno.errors.NotFound);
  const ledger = world.ledger();

  const done = await kit.resume(failed.id);
  assert.equal(done.status, "succeeded", JSON.stringify(done.record.error));
  const emls = await filesIn(`${world.outDir}/outbox/2026-11-01`);
  assert.deepEqual([...emls.keys()], MANAGERS.map((m) => `${m}.eml`));
  assert.deepEqual(world.ledger(), ledger);
  assert.equal(done.attempts("pull-sales").length, 1);
  assert.equal(done.attempts("email").filter((a) => a.status === "succeeded").length, 4);
});
