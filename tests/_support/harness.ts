/**
 * Process-level test harness: a sandbox per test (temp dir with its own KV file, side
 * ledger and gate files) and real `deno run` subprocesses of the CLI, with their output
 * collected and their exit awaited so the sanitizers stay quiet.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import type { LedgerLine } from "../fixtures/_probe.ts";
import type { RunRecord } from "../../lib/mod.ts";
import { Store } from "../../lib/store/store.ts";

export type { LedgerLine };

/** The repository root. */
export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** The real CLI. */
export const MAIN = "main.ts";
/** The CLI with the fixture pipelines registered (for `worker` processes). */
export const FIXTURE_CLI = "tests/fixtures/cli.ts";

/** How a finished process ended. */
export interface Exit {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Options of a CLI process. */
export interface SpawnOptions {
  /** Extra environment, over the sandbox's. */
  env?: Record<string, string>;
  /** The entrypoint: {@linkcode MAIN} (default) or {@linkcode FIXTURE_CLI}. */
  entry?: string;
}

/** A running CLI process whose output is collected as it arrives. */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly args: readonly string[];
  stdout = "";
  stderr = "";
  readonly #done: Promise<Exit>;

  constructor(child: Deno.ChildProcess, args: readonly string[]) {
    this.child = child;
    this.args = args;
    const collect = async (stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr") => {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) this[into] += text;
    };
    const reading = Promise.all([
      collect(child.stdout, "stdout"),
      collect(child.stderr, "stderr"),
    ]);
    this.#done = Promise.all([child.status, reading]).then(([status]) => ({
      code: status.code,
      signal: status.signal,
      stdout: this.stdout,
      stderr: this.stderr,
    }));
  }

  /** The process id. */
  get pid(): number {
    return this.child.pid;
  }

  /** Sends a signal; a process that already exited is left alone. */
  kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
    }
  }

  /** Resolves once the process exited and its output streams closed. */
  exit(): Promise<Exit> {
    return this.#done;
  }

  /** Waits until stdout or stderr matches `pattern`, failing on exit or timeout. */
  async waitForOutput(pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> {
    let exited = false;
    this.#done.then(() => (exited = true));
    return await poll(`output ${pattern} of ${this.args.join(" ")}`, timeoutMs, () => {
      const match = this.stdout.match(pattern) ?? this.stderr.match(pattern);
      if (match) return match;
      if (exited) {
        throw new Error(
          `Process ${
            this.args.join(" ")
          } exited before printing ${pattern}:\n${this.stdout}\n${this.stderr}`,
        );
      }
      return undefined;
    });
  }
}

/** A temp dir with its own KV file, ledger and gates; kills what it started on dispose. */
export class Sandbox implements AsyncDisposable {
  readonly dir: string;
  readonly kvPath: string;
  readonly ledgerPath: string;
  readonly gateDir: string;
  readonly #procs = new Set<Proc>();

  private constructor(dir: string) {
    this.dir = dir;
    this.kvPath = `${dir}/kvflow.kv`;
    this.ledgerPath = `${dir}/ledger.jsonl`;
    this.gateDir = `${dir}/gates`;
  }

  /** Creates a sandbox in a new temp dir. */
  static async create(): Promise<Sandbox> {
    const dir = await Deno.makeTempDir({ prefix: "kvflow_proc_" });
    await Deno.mkdir(`${dir}/gates`);
    return new Sandbox(dir);
  }

  /** The environment every process of this sandbox gets. */
  env(extra: Record<string, string> = {}): Record<string, string> {
    return {
      KVFLOW_KV_PATH: this.kvPath,
      LEDGER: this.ledgerPath,
      GATE_DIR: this.gateDir,
      NO_COLOR: "1",
      ...extra,
    };
  }

  /** Starts `deno run -A <entry> ...args` in the repository root. */
  spawn(args: readonly string[], options: SpawnOptions = {}): Proc {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", options.entry ?? MAIN, ...args],
      cwd: ROOT,
      env: this.env(options.env),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const proc = new Proc(child, args);
    this.#procs.add(proc);
    proc.exit().then(() => this.#procs.delete(proc));
    return proc;
  }

  /** Runs the CLI to its end. */
  async cli(args: readonly string[], options: SpawnOptions = {}): Promise<Exit> {
    return await this.spawn(args, options).exit();
  }

  /** Runs `status <id> --json` and parses it. */
  async status(runId: string, options: SpawnOptions = {}): Promise<RunStatusJson> {
    const result = await this.cli(["status", runId, "--json"], options);
    if (result.code !== 0) {
      throw new Error(`status ${runId} exited ${result.code}: ${result.stderr}`);
    }
    return JSON.parse(result.stdout);
  }

  /** Reads the run record straight from the KV file. */
  async run(runId: string): Promise<RunRecord> {
    return await this.withStore((store) => store.requireRun(runId));
  }

  /** Every run of a pipeline, read straight from the KV file, a page at a time. */
  async runsOf(pipeline: string): Promise<RunRecord[]> {
    return await this.withStore(async (store) => {
      const runs: RunRecord[] = [];
      let cursor: string | undefined;
      do {
        const page = await store.listRuns({ pipeline, limit: 1000, cursor });
        runs.push(...page.runs);
        cursor = page.cursor;
      } while (cursor);
      return runs;
    });
  }

  /** Waits until the run's record satisfies `done`. */
  async waitForRun(
    runId: string,
    done: (run: RunRecord) => boolean,
    timeoutMs = 10_000,
  ): Promise<RunRecord> {
    let last: RunRecord | undefined;
    try {
      return await poll(`run ${runId}`, timeoutMs, async () => {
        last = await this.run(runId);
        return done(last) ? last : undefined;
      });
    } catch (error) {
      throw new Error(`${(error as Error).message}: it is ${last?.status}`);
    }
  }

  /** Opens the sandbox's KV file in this process for `fn`, then closes it. */
  async withStore<T>(fn: (store: Store) => Promise<T>): Promise<T> {
    const kv = await Deno.openKv(this.kvPath);
    try {
      return await fn(new Store(kv, { queues: false }));
    } finally {
      kv.close();
    }
  }

  /** Every key in the KV file with its versionstamp: equal snapshots mean nothing was written. */
  async snapshot(): Promise<Map<string, string>> {
    return await this.withStore(async ({ kv }) => {
      const entries = new Map<string, string>();
      for await (const e of kv.list({ prefix: [] })) {
        entries.set(JSON.stringify(e.key), e.versionstamp);
      }
      return entries;
    });
  }

  /** Every line of the side ledger so far. */
  async ledger(): Promise<LedgerLine[]> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.ledgerPath);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return [];
      throw error;
    }
    return text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
  }

  /** Waits until a ledger line matches. */
  async waitForLedger(
    what: string,
    match: (line: LedgerLine) => boolean,
    timeoutMs = 10_000,
  ): Promise<LedgerLine> {
    return await poll(`ledger line: ${what}`, timeoutMs, async () => {
      return (await this.ledger()).find(match);
    });
  }

  /** Opens gate `name`: steps waiting at it continue. */
  async openGate(name: string): Promise<void> {
    await Deno.writeTextFile(`${this.gateDir}/${name}`, "open");
  }

  /** Kills every process still running, awaits them, removes the temp dir. */
  async [Symbol.asyncDispose](): Promise<void> {
    const left = [...this.#procs];
    for (const proc of left) {
      proc.kill("SIGCONT");
      proc.kill("SIGKILL");
    }
    await Promise.all(left.map((p) => p.exit()));
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** What `status <id> --json` prints (the fields tests read). */
export interface RunStatusJson extends RunRecord {
  steps: {
    name: string;
    status: string;
    attempts: number;
    error: { name: string; message: string } | null;
    items: number | null;
  }[];
  attempts: { step: string; item: number; n: number; status: string }[];
  alerts: unknown[];
}

/** Calls `check` every 25 ms until it returns a value, failing after `timeoutMs`. */
export async function poll<T>(
  what: string,
  timeoutMs: number,
  check: () => T | undefined | Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const value = await check();
    if (value !== undefined && value !== null) return value;
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The ledger lines of one step (and item), of one event, in order. */
export function lines(
  ledger: readonly LedgerLine[],
  step: string,
  event: LedgerLine["event"] = "start",
  item = -1,
): LedgerLine[] {
  return ledger.filter((l) => l.step === step && l.event === event && l.item === item);
}

/** Extracts the run id from the `▶ run <id> · …` line a foreground run prints first. */
export function runIdOf(stdout: string): string {
  const match = stdout.match(/^▶ run (\S+) ·/m);
  if (!match) throw new Error(`No run id in output:\n${stdout}`);
  return match[1];
}
