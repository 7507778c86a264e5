/**
 * The nightly pipeline through the real CLI, in real processes: the README's first
 * command on a fresh directory, usage errors, and a SIGKILL in the middle of the email
 * stage with a real SMTP server on the other end.
 *
 * @module
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { poll, runIdOf, Sandbox } from "./_support/harness.ts";
import { filesIn, ledgerRows, spawnFresh, startSmtp } from "./_support/nightly.ts";
import { computeCommissions } from "../pipelines/nightly/commissions.ts";
import { readNight } from "../pipelines/nightly/pull_sales.ts";
import { createSampleStore } from "../pipelines/nightly/sample_store.ts";

const MANAGERS = ["ada.berg", "bruno.costa", "chiara.engel", "dev.patel"];

Deno.test("`run nightly` on a fresh directory creates the sample store and writes reports, outbox mails and the ledger", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kvflow_fresh_" });
  try {
    const result = await spawnFresh(dir, ["run", "nightly"]).exit();
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const [, date] = result.stdout.match(/^▶ run \S+ · nightly · (\d{4}-\d{2}-\d{2}) · cli$/m)!;
    assert.match(result.stdout, /✓ run \S+ succeeded in /);
    const pdfs = await filesIn(`${dir}/out/reports/${date}`);
    assert.deepEqual([...pdfs.keys()], MANAGERS.map((m) => `${m}.pdf`));
    const emls = await filesIn(`${dir}/out/outbox/${date}`);
    assert.deepEqual([...emls.keys()], MANAGERS.map((m) => `${m}.eml`));
    assert.ok(ledgerRows(`${dir}/data/store.db`).length > 0, "no journal entries");
    await Deno.stat(`${dir}/data/kvflow.kv`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("usage errors of `run nightly` exit 2 with one line naming what to fix", async () => {
  await using box = await Sandbox.create();
  const cases = [
    [
      ["--param", "region=north"],
      /^kvflow: Invalid params for 'nightly': unknown param region \(known: simulateOutage, approval\)$/,
    ],
    [
      ["--param", "simulateOutage=printer"],
      /^kvflow: Invalid params for 'nightly': simulateOutage: .*"email".*"accounting"/,
    ],
    [["--date", "2026-02-30"], /^kvflow: Invalid date "2026-02-30": use YYYY-MM-DD$/],
    [["--date", "yesterday"], /^kvflow: Invalid date "yesterday": use YYYY-MM-DD$/],
  ] as const;
  const results = await Promise.all(cases.map(([args]) => box.cli(["run", "nightly", ...args])));
  for (const [i, result] of results.entries()) {
    const [args, message] = cases[i];
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stdout}${result.stderr}`);
    const lines = result.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, result.stderr);
    assert.match(lines[0], message);
  }
});

Deno.test("SIGKILL in the middle of the email stage: resume sends only the missing mail, one per manager, one journal entry per salesperson", async () => {
  await using box = await Sandbox.create();
  const salesDb = `${box.dir}/store.db`;
  const db = new DatabaseSync(salesDb);
  createSampleStore(db);
  db.close();
  // The third manager's mail is held at RCPT TO: it has started, but no server accepted it.
  await using smtp = await startSmtp({ holdRecipient: `${MANAGERS[2]}@store.example` });
  const env = {
    KVFLOW_SALES_DB: salesDb,
    KVFLOW_OUT_DIR: `${box.dir}/out`,
    KVFLOW_SMTP_URL: smtp.url,
  };

  const run = box.spawn(["run", "nightly", "--date", "2026-11-01"], { env });
  await smtp.held;
  const id = runIdOf((await run.waitForOutput(/^▶ run \S+ ·.*$/m))[0]);
  const done = await poll("the other three mails checkpointed", 10_000, async () => {
    const items = await box.withStore((store) => store.getItems(id, "email"));
    const ok = [...items].filter(([, item]) => item.status === "succeeded").map(([i]) => i);
    return ok.length === 3 ? ok : undefined;
  });
  assert.deepEqual(done.sort(), [0, 1, 3]);
  assert.equal(smtp.mails.length, 3);
  run.kill("SIGKILL");
  assert.equal((await run.exit()).signal, "SIGKILL");

  const resumed = await box.cli(["resume", id], { env });
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  assert.match(resumed.stdout, new RegExp(`✓ run ${id} succeeded`));

  const recipients = smtp.mails.map((m) => !Array.isArray(m.to) && m.to?.value[0].address).sort();
  assert.deepEqual(recipients, MANAGERS.map((m) => `${m}@store.example`));
  const ids = smtp.mails.map((m) => m.messageId);
  assert.equal(new Set(ids).size, 4, `duplicate Message-IDs: ${ids}`);
  assert.deepEqual(ids.at(-1), `<${id}.email.2@store.example>`);
  const status = await box.status(id, { env });
  assert.deepEqual(
    status.attempts.filter((a) => a.step === "email" && a.item === 2).map((a) => a.status),
    ["crashed", "succeeded"],
  );

  const check = new DatabaseSync(salesDb);
  const commissions = computeCommissions(readNight(check, "2026-10-31"));
  check.close();
  const earning = commissions.filter((c) => c.commissionCents !== 0);
  assert.deepEqual(
    ledgerRows(salesDb).map((row) => row.key).sort(),
    earning.map((c) => `nightly/2026-11-01/${c.salespersonId}`).sort(),
  );
});
