/**
 * What the nightly pipeline's tests share: a world per test (a temp dir with a sample
 * store, an out dir and an in-memory engine, wired through the environment the pipeline
 * reads), a real SMTP server, a real PDF reader, and reads of the store database.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { DatabaseSync } from "node:sqlite";
// @ts-types="@types/smtp-server"
import { SMTPServer } from "smtp-server";
// @ts-types="@types/mailparser"
import { type ParsedMail, simpleParser } from "mailparser";
import { type Engine, openEngine, type RunRecord } from "../../lib/mod.ts";
import { MAIN, Proc, ROOT } from "./harness.ts";
import nightly from "../../pipelines/nightly/mod.ts";
import { createSampleStore } from "../../pipelines/nightly/sample_store.ts";

/** A temp dir with a sample store and an out dir, an engine, and the environment to match. */
export class NightlyWorld implements AsyncDisposable {
  readonly dir: string;
  readonly salesDb: string;
  readonly outDir: string;
  readonly engine: Engine;
  readonly #saved = new Map<string, string | undefined>();

  private constructor(dir: string, engine: Engine) {
    this.dir = dir;
    this.salesDb = `${dir}/store.db`;
    this.outDir = `${dir}/out`;
    this.engine = engine;
  }

  /** Creates a world whose sales database is a fresh sample store. */
  static async create(): Promise<NightlyWorld> {
    const dir = await Deno.makeTempDir({ prefix: "kvflow_nightly_" });
    const engine = await openEngine({ path: ":memory:", pipelines: [nightly], onAlert: () => {} });
    const world = new NightlyWorld(dir, engine);
    const db = new DatabaseSync(world.salesDb);
    createSampleStore(db);
    db.close();
    world.env({
      KVFLOW_SALES_DB: world.salesDb,
      KVFLOW_OUT_DIR: world.outDir,
      KVFLOW_SMTP_URL: undefined,
      KVFLOW_ACCOUNTING_URL: undefined,
      KVFLOW_MAIL_FROM: undefined,
    });
    return world;
  }

  /** Sets (or, with undefined, unsets) variables until the world is disposed. */
  env(vars: Record<string, string | undefined>): void {
    for (const [name, value] of Object.entries(vars)) {
      if (!this.#saved.has(name)) this.#saved.set(name, Deno.env.get(name));
      if (value === undefined) Deno.env.delete(name);
      else Deno.env.set(name, value);
    }
  }

  /** Creates a nightly run for `logicalDate` and drives it to its end. */
  async run(logicalDate: string, params: Record<string, unknown> = {}): Promise<RunRecord> {
    const run = await this.engine.store.createRun(this.engine.pipeline("nightly"), {
      logicalDate,
      params,
    });
    return await this.engine.runToEnd(run.id);
  }

  /** A step's output. */
  async output<T>(runId: string, step: string): Promise<T> {
    return await this.engine.store.getOutput(runId, step) as T;
  }

  /** The rows of the ledger table, oldest first. */
  ledger(): LedgerRow[] {
    return ledgerRows(this.salesDb);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.engine.close();
    for (const [name, value] of this.#saved) {
      if (value === undefined) Deno.env.delete(name);
      else Deno.env.set(name, value);
    }
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** A row of `journal_entries`. */
export interface LedgerRow {
  key: string;
  amountCents: number;
  debit: string;
  credit: string;
  runId: string;
}

/** The ledger table of a store database; empty when it has none yet. */
export function ledgerRows(path: string): LedgerRow[] {
  const db = new DatabaseSync(path);
  try {
    const table = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'journal_entries'").get();
    if (!table) return [];
    return db.prepare(`
      SELECT idempotency_key AS key, amount_cents AS amountCents, debit_account AS debit,
        credit_account AS credit, run_id AS runId
      FROM journal_entries ORDER BY rowid`).all() as unknown as LedgerRow[];
  } finally {
    db.close();
  }
}

/** Options of {@linkcode startSmtp}. */
export interface SmtpOptions {
  /** Holds the first session that names this recipient at RCPT TO, until its client goes. */
  holdRecipient?: string;
}

/** A real SMTP server on loopback that parses every message it accepts. */
export interface TestSmtp extends AsyncDisposable {
  /** `smtp://user:password@127.0.0.1:port` with the right password. */
  url: string;
  /** The same with a wrong password. */
  badLoginUrl: string;
  /** Every accepted message, parsed. */
  mails: ParsedMail[];
  /** Resolves when the held session reached RCPT TO. */
  held: Promise<void>;
}

/** The SMTP test server's user and password. */
export const SMTP_USER = { user: "kvflow", password: "s3cret" };

/** Starts an SMTP server on 127.0.0.1 with a random port. */
export async function startSmtp(options: SmtpOptions = {}): Promise<TestSmtp> {
  const mails: ParsedMail[] = [];
  const held = Promise.withResolvers<void>();
  let holding = false;
  const server = new SMTPServer({
    authMethods: ["PLAIN", "LOGIN"],
    allowInsecureAuth: true,
    disabledCommands: ["STARTTLS"],
    logger: false,
    onAuth(auth, _session, callback) {
      if (auth.username === SMTP_USER.user && auth.password === SMTP_USER.password) {
        callback(null, { user: auth.username });
      } else {
        callback(new Error("Invalid username or password"));
      }
    },
    onRcptTo(address, _session, callback) {
      if (!holding && address.address === options.holdRecipient) {
        holding = true;
        held.resolve();
        return; // never answered: the client waits until it is killed
      }
      callback();
    },
    onData(stream, _session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => {
        simpleParser(Buffer.concat(chunks)).then((mail) => {
          mails.push(mail);
          callback();
        }, callback);
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.server.address() as { port: number };
  return {
    url: `smtp://${SMTP_USER.user}:${SMTP_USER.password}@127.0.0.1:${port}`,
    badLoginUrl: `smtp://${SMTP_USER.user}:wrong@127.0.0.1:${port}`,
    mails,
    held: held.promise,
    async [Symbol.asyncDispose]() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * The text of a PDF as a real reader sees it (`pdftotext` of poppler-utils). Without
 * pdftotext: in CI (`CI=true`) a failure, elsewhere a loud skip (undefined).
 */
export async function pdfToText(pdf: Uint8Array): Promise<string | undefined> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("pdftotext", {
      args: ["-layout", "-", "-"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    if (Deno.env.get("CI") === "true") {
      throw new Error("pdftotext is missing: install poppler-utils (.ci/run does)");
    }
    console.warn(
      "\n!!! SKIPPED: pdftotext is not installed, so no real PDF reader checked the reports." +
        " Install it: apt-get install poppler-utils !!!\n",
    );
    return undefined;
  }
  const writer = child.stdin.getWriter();
  await writer.write(pdf);
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  if (code !== 0) throw new Error(`pdftotext failed: ${new TextDecoder().decode(stderr)}`);
  return new TextDecoder().decode(stdout);
}

/** The files of a directory, by name, with their bytes. */
export async function filesIn(dir: string): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile) files.set(entry.name, await Deno.readFile(`${dir}/${entry.name}`));
  }
  return new Map([...files].sort(([a], [b]) => a.localeCompare(b)));
}

/**
 * Starts the real CLI (`main.ts`) with `dir` as its working directory, as on a fresh
 * machine: only PATH, HOME and Deno's cache location come from this environment.
 */
export function spawnFresh(dir: string, args: readonly string[]): Proc {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", `${ROOT}deno.json`, `${ROOT}${MAIN}`, ...args],
    cwd: dir,
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return new Proc(child, args);
}
