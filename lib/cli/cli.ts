/**
 * The command line: `run`, `resume`, `rerun`, `cancel`, `status`, `runs`, `pipelines`,
 * `serve`, `worker`. Usage errors exit 2 with one line; a failed run exits 1 and prints
 * the command that resumes it.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { Pipeline } from "../define/pipeline.ts";
import { KvUnavailableError, UsageError } from "../model/errors.ts";
import { type Engine, openEngine } from "../engine/engine.ts";
import { type Paint, paintFor, progressPrinter, runLines, statusLines } from "./progress.ts";
import { RUN_STATUSES, type RunRecord, type RunStatus, TERMINAL } from "../model/records.ts";
import { validateParams } from "../model/params.ts";
import { runAlerts } from "../alerts/alert.ts";
import { workerSettingsFromEnv } from "../engine/settings.ts";
import { env } from "../platform/env.ts";
import { exit, onStopSignal, stdout } from "../platform/process.ts";
import { formatMs } from "../define/duration.ts";
import { scheduleView } from "../engine/scheduler.ts";

/** Where the CLI writes, and the pipelines it knows. */
export interface CliContext {
  /** The static registry. */
  pipelines: readonly Pipeline<unknown>[];
  /** Standard output lines. Default: console.log. */
  out?: (line: string) => void;
  /** Standard error lines. Default: console.error. */
  err?: (line: string) => void;
}

const USAGE = `kvflow — durable pipelines on Deno KV

usage: deno task <command> [arguments]

  run <pipeline|module.ts> [--param k=v]... [--params JSON] [--date YYYY-MM-DD] [--detach]
  resume <run-id> [--force]
  rerun <run-id> --from <step> [--force]
  cancel <run-id>
  status <run-id> [--json]
  runs [--pipeline P] [--status S] [--limit N] [--json]
  pipelines [--json]
  backfill <pipeline> --from YYYY-MM-DD --to YYYY-MM-DD [--max-active N]
  serve [--port N]
  worker

environment: KVFLOW_KV_PATH (default ./data/kvflow.kv), KVFLOW_ALERT_WEBHOOK,
  KVFLOW_ALERT_EMAIL with KVFLOW_SMTP_URL (and KVFLOW_ALERT_FROM), KVFLOW_TOKEN,
  KVFLOW_READ_TOKEN, KVFLOW_LEASE_MS, KVFLOW_POLL_MS, KVFLOW_MAX_RUNS, KVFLOW_MAX_STEPS,
  KVFLOW_GRACE_MS`;

const OPTIONS = {
  param: { type: "string", multiple: true },
  params: { type: "string" },
  date: { type: "string" },
  detach: { type: "boolean" },
  force: { type: "boolean" },
  from: { type: "string" },
  json: { type: "boolean" },
  pipeline: { type: "string" },
  status: { type: "string" },
  limit: { type: "string" },
  port: { type: "string" },
  to: { type: "string" },
  "max-active": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** The flags of a command line; each command reads the ones it knows. */
export type Flags = {
  param?: string[];
  params?: string;
  date?: string;
  detach?: boolean;
  force?: boolean;
  from?: string;
  json?: boolean;
  pipeline?: string;
  status?: string;
  limit?: string;
  port?: string;
  to?: string;
  "max-active"?: string;
  help?: boolean;
};

/** The engine of a running `serve` or `worker`, for the cron heartbeat. */
let serving: Engine | undefined;

/**
 * The cron heartbeat of `serve` and `worker`: checks schedules and due runs once.
 * (They also check on their own short timer; the heartbeat is the clock that survives
 * on platforms that stop idle processes.)
 */
export async function heartbeat(): Promise<void> {
  await serving?.worker.sweep();
}

/** Exit codes. */
export const EXIT = { ok: 0, failed: 1, usage: 2, interrupted: 130 } as const;

/**
 * Runs the CLI.
 *
 * @param args the arguments after the program name
 * @param context the registry and output streams
 * @returns the process exit code
 */
export async function main(args: string[], context: CliContext): Promise<number> {
  const out = context.out ?? ((line: string) => console.log(line));
  const err = context.err ?? ((line: string) => console.error(line));
  try {
    const { command, args: rest, flags } = parseCommand(args);
    if (command === "help" || command === "usage") {
      (command === "usage" ? err : out)(USAGE);
      return command === "usage" ? EXIT.usage : EXIT.ok;
    }
    const cli = new Cli(context, flags, rest, out, err);
    switch (command) {
      case "run":
        return await cli.run();
      case "resume":
        return await cli.resume();
      case "rerun":
        return await cli.rerun();
      case "cancel":
        return await cli.cancel();
      case "status":
        return await cli.status();
      case "runs":
        return await cli.runs();
      case "pipelines":
        return await cli.pipelines();
      case "serve":
        return await cli.serve();
      case "worker":
        return await cli.worker();
      case "backfill":
        return await cli.backfill();
    }
  } catch (error) {
    if (error instanceof UsageError) {
      err(`kvflow: ${oneLine(error.message)}`);
      return EXIT.usage;
    }
    err(`kvflow: ${oneLine(error instanceof Error ? error.message : String(error))}`);
    if (env("KVFLOW_DEBUG") && error instanceof Error) err(error.stack ?? "");
    return EXIT.failed;
  }
}

/** Each command with what its one argument is, or null when it takes none. */
const COMMANDS = {
  run: "<pipeline>",
  resume: "<run-id>",
  rerun: "<run-id>",
  cancel: "<run-id>",
  status: "<run-id>",
  runs: null,
  pipelines: null,
  backfill: "<pipeline> --from YYYY-MM-DD --to YYYY-MM-DD",
  serve: null,
  worker: null,
} as const;

/** A command of the CLI. */
export type Command = keyof typeof COMMANDS;

/** A command line as {@linkcode parseCommand} reads it. */
export interface ParsedCommand {
  /** The command; `help` for `help` or `--help`, `usage` when none was given. */
  command: Command | "help" | "usage";
  /** Its positional arguments: the one a command takes, or none. */
  args: string[];
  /** The flags given. */
  flags: Flags;
}

/**
 * Reads a command line without running anything, checking its shape: known command and
 * options, the argument count, the flags a command cannot do without. Whether a pipeline
 * or a run exists is the command's to find out.
 *
 * @example
 * ```ts
 * import { parseCommand } from "./cli.ts";
 * const { command, args, flags } = parseCommand(["run", "nightly", "--param", "n=1"]);
 * console.log(command, args, flags.param); // run [ "nightly" ] [ "n=1" ]
 * ```
 *
 * @param args the arguments after the program name
 * @returns the command, its arguments and its flags
 * @throws {UsageError} naming what is wrong
 */
export function parseCommand(args: readonly string[]): ParsedCommand {
  const { values: flags, positionals } = parse(args);
  const [command, ...rest] = positionals;
  if (flags.help || command === "help") return { command: "help", args: rest, flags };
  if (command === undefined) return { command: "usage", args: [], flags };
  if (!Object.hasOwn(COMMANDS, command)) {
    throw new UsageError(
      `Unknown command '${command}': use one of ${Object.keys(COMMANDS).join(", ")}`,
    );
  }
  const name = command as Command;
  const what = COMMANDS[name];
  if (what === null && rest.length > 0) {
    throw new UsageError(`${name} takes no arguments, got: ${rest.join(" ")}`);
  }
  if (what !== null && rest.length !== 1) {
    throw new UsageError(`${name} takes exactly one argument: ${name} ${what}`);
  }
  if (name === "rerun" && !flags.from) throw new UsageError("rerun needs --from <step>");
  if (name === "backfill" && (!flags.from || !flags.to)) {
    throw new UsageError("backfill needs --from YYYY-MM-DD and --to YYYY-MM-DD");
  }
  const status = flags.status;
  if (name === "runs" && status !== undefined && !RUN_STATUSES.includes(status as RunStatus)) {
    throw new UsageError(`Unknown status '${status}': use one of ${RUN_STATUSES.join(", ")}`);
  }
  return { command: name, args: rest, flags };
}

/** A message as one line: line breaks and other controls a user typed are escaped. */
function oneLine(message: string): string {
  return message.replace(/\p{Cc}/gu, (c) => JSON.stringify(c).slice(1, -1));
}

function parse(args: readonly string[]): { values: Flags; positionals: string[] } {
  try {
    return parseArgs({
      args: [...args],
      options: OPTIONS,
      allowPositionals: true,
      strict: true,
    }) as {
      values: Flags;
      positionals: string[];
    };
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message.split("\n")[0] : String(error));
  }
}

class Cli {
  readonly #context: CliContext;
  readonly #flags: Flags;
  readonly #args: string[];
  readonly #out: (line: string) => void;
  readonly #err: (line: string) => void;
  readonly #paint: Paint;

  constructor(
    context: CliContext,
    flags: Flags,
    args: string[],
    out: (line: string) => void,
    err: (line: string) => void,
  ) {
    this.#context = context;
    this.#flags = flags;
    this.#args = args;
    this.#out = out;
    this.#err = err;
    this.#paint = paintFor(stdout());
  }

  async run(): Promise<number> {
    const target = this.#args[0];
    const { pipeline, module } = await loadPipeline(target, this.#context.pipelines);
    const params = parseParams(pipeline, this.#flags.param ?? [], this.#flags.params);
    const engine = await this.#open([pipeline], !this.#flags.detach);
    try {
      const run = await engine.store.createRun(pipeline, {
        params,
        logicalDate: this.#flags.date,
        trigger: "cli",
        module,
      });
      if (this.#flags.detach) {
        this.#out(run.id);
        this.#err(
          `kvflow: run ${run.id} queued; a worker (deno task worker or serve) will pick it up. Follow it with: deno task status ${run.id}`,
        );
        return EXIT.ok;
      }
      return await this.#foreground(engine, run);
    } finally {
      await engine.close();
    }
  }

  async resume(): Promise<number> {
    const runId = this.#args[0];
    const engine = await this.#openFor(runId);
    try {
      const run = await engine.store.requireRun(runId);
      const requeued = await engine.store.resume(
        run,
        engine.pipeline(run.pipeline),
        this.#flags.force,
      );
      return await this.#foreground(engine, requeued);
    } finally {
      await engine.close();
    }
  }

  async rerun(): Promise<number> {
    const runId = this.#args[0];
    const engine = await this.#openFor(runId);
    try {
      const run = await engine.store.requireRun(runId);
      const requeued = await engine.store.rerun(
        run,
        engine.pipeline(run.pipeline),
        this.#flags.from!,
        this.#flags.force,
      );
      return await this.#foreground(engine, requeued);
    } finally {
      await engine.close();
    }
  }

  async cancel(): Promise<number> {
    const runId = this.#args[0];
    const engine = await this.#open([]);
    try {
      const run = await engine.store.cancel(runId);
      this.#out(`run ${run.id} cancelled`);
      return EXIT.ok;
    } finally {
      await engine.close();
    }
  }

  async status(): Promise<number> {
    const runId = this.#args[0];
    const engine = await this.#open(this.#context.pipelines);
    try {
      const run = await engine.store.requireRun(runId);
      const steps = await engine.store.getSteps(runId);
      const attempts = await engine.store.getAttempts(runId);
      const pipeline = engine.pipelines.get(run.pipeline);
      if (this.#flags.json) {
        const names = pipeline ? pipeline.steps.map((s) => s.name) : Object.keys(run.graph ?? {});
        this.#out(JSON.stringify(
          {
            ...run,
            steps: names.map((name) => {
              const record = steps.get(name);
              return {
                name,
                status: record?.status ?? "pending",
                attempts: record?.attempt ?? 0,
                error: record?.error ?? null,
                startedAt: record?.startedAt ?? null,
                endedAt: record?.endedAt ?? null,
                nextAt: record?.nextAt ?? null,
                items: record?.items ?? null,
              };
            }),
            attempts: attempts.map(({ logs, ...a }) => ({ ...a, logs: logs.length })),
            alerts: await runAlerts(engine.kv, runId),
          },
          null,
          2,
        ));
      } else {
        for (const line of statusLines(run, pipeline, steps, attempts, this.#paint)) {
          this.#out(line);
        }
      }
      return EXIT.ok;
    } finally {
      await engine.close();
    }
  }

  async runs(): Promise<number> {
    const status = this.#flags.status;
    const limit = this.#flags.limit === undefined ? 20 : Number(this.#flags.limit);
    const engine = await this.#open([]);
    try {
      const page = await engine.store.listRuns({
        pipeline: this.#flags.pipeline,
        status: status as RunStatus | undefined,
        limit,
      });
      if (this.#flags.json) this.#out(JSON.stringify(page.runs, null, 2));
      else for (const line of runLines(page.runs, this.#paint)) this.#out(line);
      return EXIT.ok;
    } finally {
      await engine.close();
    }
  }

  async pipelines(): Promise<number> {
    const engine = await this.#open(this.#context.pipelines);
    try {
      const now = engine.store.clock.now();
      const list = [];
      for (const p of this.#context.pipelines) {
        list.push({
          name: p.name,
          description: p.description ?? null,
          version: p.version,
          steps: p.steps.map((s) => ({
            name: s.name,
            needs: p.graph[s.name],
            fanOut: Boolean(s.fanOut),
          })),
          schedule: await scheduleView(engine.scheduler, p, now),
        });
      }
      if (this.#flags.json) {
        this.#out(JSON.stringify(list, null, 2));
        return EXIT.ok;
      }
      for (const p of list) {
        this.#out(`${p.name}${p.description ? ` — ${p.description}` : ""}`);
        const s = p.schedule;
        this.#out(
          s
            ? `  schedule  ${s.cron} (${s.timezone}), catch-up ${s.catchup}, overlap ${s.overlap}` +
              `\n  last tick ${s.lastTick ?? "none yet"}\n  next      ${s.next.join(", ")}`
            : "  schedule  none (runs when triggered)",
        );
        for (const step of p.steps) {
          this.#out(
            `  · ${step.name}${step.fanOut ? " (fan-out)" : ""}${
              step.needs.length ? ` ← ${step.needs.join(", ")}` : ""
            }`,
          );
        }
      }
      return EXIT.ok;
    } finally {
      await engine.close();
    }
  }

  async backfill(): Promise<number> {
    const name = this.#args[0];
    const maxActive = this.#flags["max-active"] === undefined
      ? undefined
      : Number(this.#flags["max-active"]);
    const engine = await this.#open(this.#context.pipelines);
    const started = Date.now();
    try {
      const runs = await engine.backfill(name, this.#flags.from!, this.#flags.to!, {
        maxActive,
        onProgress: (done, total, run, created) =>
          this.#out(
            `  ${done}/${total} ${run.logicalDate} ${run.id} ${run.status}${
              created ? "" : " (existed)"
            }`,
          ),
      });
      const failed = runs.filter((r) => r.status !== "succeeded");
      this.#out(
        `backfill of ${name} ${this.#flags.from}..${this.#flags.to}: ${runs.length} runs, ${
          runs.length - failed.length
        } succeeded, ${failed.length} not, in ${formatMs(Date.now() - started)}`,
      );
      for (const r of failed) this.#out(`  resume with: deno task resume ${r.id}`);
      return failed.length === 0 ? EXIT.ok : EXIT.failed;
    } finally {
      await engine.close();
    }
  }

  async serve(): Promise<number> {
    const port = Number(this.#flags.port ?? env("PORT") ?? 8000);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new UsageError(`Invalid port ${JSON.stringify(this.#flags.port)}: use 0 to 65535`);
    }
    const engine = await this.#open(this.#context.pipelines);
    engine.start();
    serving = engine;
    // loaded only here: the HTTP service and dashboard are slow to import
    const { serve } = await import("../http/service.ts");
    const server = serve(engine, {
      port,
      token: env("KVFLOW_TOKEN") || undefined,
      readToken: env("KVFLOW_READ_TOKEN") || undefined,
      log: this.#err,
    });
    // Requests and event streams end before the engine closes under them.
    await this.#untilSignal(engine, () => server.shutdown());
    serving = undefined;
    return EXIT.ok;
  }

  async worker(): Promise<number> {
    const engine = await this.#open(this.#context.pipelines);
    engine.start();
    serving = engine;
    this.#err(`kvflow: worker ${engine.worker.id} started; Ctrl-C stops it`);
    await this.#untilSignal(engine);
    serving = undefined;
    return EXIT.ok;
  }

  /** Waits for SIGINT/SIGTERM, then stops gracefully; a second signal exits at once. */
  async #untilSignal(engine: Engine, beforeClose?: () => Promise<void>): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    let stopping = false;
    const onSignal = () => {
      if (stopping) exit(EXIT.interrupted);
      stopping = true;
      this.#err("kvflow: stopping: finishing running steps (signal again to exit at once)");
      resolve();
    };
    const stopListening = onStopSignal(onSignal);
    await promise;
    await beforeClose?.();
    await engine.close(Number(env("KVFLOW_GRACE_MS") ?? 10_000));
    stopListening();
  }

  async #foreground(engine: Engine, run: RunRecord): Promise<number> {
    const started = Date.now();
    this.#out(`▶ run ${run.id} · ${run.pipeline} · ${run.logicalDate} · ${run.trigger}`);
    const interrupt = new AbortController();
    const onSignal = () => {
      if (interrupt.signal.aborted) exit(EXIT.interrupted);
      interrupt.abort();
      engine.worker.interrupt("Interrupted by signal (Ctrl-C)");
    };
    const stopListening = onStopSignal(onSignal);
    try {
      const end = await engine.runToEnd(run.id, { signal: interrupt.signal });
      await engine.worker.settleAlerts();
      const took = formatMs(Date.now() - started);
      if (end.status === "succeeded") {
        this.#out(this.#paint.ok(`✓ run ${end.id} succeeded in ${took}`));
        return EXIT.ok;
      }
      const why = end.error
        ? `: ${end.error.step ? `step '${end.error.step}': ` : ""}${end.error.message}`
        : "";
      this.#out(
        this.#paint.bad(
          `✗ run ${end.id} ${
            TERMINAL.has(end.status) ? end.status : `left ${end.status}`
          } after ${took}${why}`,
        ),
      );
      this.#out(`  fix the cause, then resume with: deno task resume ${end.id}`);
      return interrupt.signal.aborted ? EXIT.interrupted : EXIT.failed;
    } catch (error) {
      if (!(error instanceof KvUnavailableError)) throw error;
      // The run stays as its last commit left it; its lease runs out, or resume takes it.
      this.#err(
        `kvflow: run ${run.id} stopped: ${error.message}; its checkpoints are kept: fix the cause, then resume with: deno task resume ${run.id}`,
      );
      return EXIT.failed;
    } finally {
      stopListening();
    }
  }

  async #open(pipelines: readonly Pipeline<unknown>[], progress = false): Promise<Engine> {
    return await openEngine({
      pipelines,
      ...workerSettingsFromEnv(),
      resolvePipeline: async (run) =>
        run.module ? (await loadPipeline(run.module, [])).pipeline : undefined,
      onEvent: progress ? progressPrinter(undefined, this.#out, this.#paint) : undefined,
    });
  }

  async #openFor(runId: string): Promise<Engine> {
    const registry = [...this.#context.pipelines];
    const peek = await openEngine({ pipelines: [] });
    let run: RunRecord;
    try {
      run = await peek.store.requireRun(runId);
    } finally {
      await peek.close();
    }
    if (run.module && !registry.some((p) => p.name === run.pipeline)) {
      registry.push((await loadPipeline(run.module, [])).pipeline);
    }
    return await this.#open(registry, true);
  }
}

/**
 * Finds a pipeline by registered name or loads it from a module path.
 *
 * @throws {UsageError} on an unknown name, a module that fails to import, or one whose
 * default export is not a pipeline
 */
export async function loadPipeline(
  target: string,
  registry: readonly Pipeline<unknown>[],
): Promise<{ pipeline: Pipeline<unknown>; module?: string }> {
  const registered = registry.find((p) => p.name === target);
  if (registered) return { pipeline: registered };
  const looksLikePath = /[\\/]/.test(target) || /\.(ts|js|mts|mjs|tsx)$/.test(target);
  if (!looksLikePath) {
    throw new UsageError(
      `Unknown pipeline '${target}': known pipelines are ${
        registry.map((p) => p.name).join(", ") || "(none)"
      } (or give a path to a module that default-exports a pipeline)`,
    );
  }
  const url = target.startsWith("file:") ? target : pathToFileURL(resolve(target)).href;
  let module: { default?: unknown };
  try {
    module = await import(url);
  } catch (error) {
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
    throw new UsageError(`Cannot load pipeline module ${target}: ${message}`);
  }
  const found = module.default as Pipeline<unknown> | undefined;
  if (!found || found.kind !== "pipeline") {
    throw new UsageError(
      `Module ${target} does not default-export a pipeline (export default pipeline("name", { ... }))`,
    );
  }
  return { pipeline: found, module: url };
}

/**
 * Builds params from `--params JSON` and `--param k=v` flags. Values of `--param` are
 * strings; when the schema rejects a string, its JSON reading (a number, a boolean) is
 * tried.
 *
 * @throws {UsageError} on malformed flags or params that fail the schema
 */
export function parseParams(
  pipeline: Pipeline<unknown>,
  pairs: readonly string[],
  json: string | undefined,
): Record<string, unknown> {
  let base: Record<string, unknown> = {};
  if (json !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch (error) {
      throw new UsageError(
        `Invalid --params: not JSON (${error instanceof Error ? error.message : error})`,
      );
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new UsageError("Invalid --params: expected a JSON object");
    }
    base = parsed as Record<string, unknown>;
  }
  const raw: Record<string, string> = {};
  for (const pair of pairs) {
    const at = pair.indexOf("=");
    if (at <= 0) {
      throw new UsageError(`Invalid --param ${JSON.stringify(pair)}: use --param key=value`);
    }
    raw[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const asStrings = { ...base, ...raw };
  try {
    return validateParams(pipeline, asStrings);
  } catch (error) {
    const coerced: Record<string, unknown> = { ...base };
    for (const [k, v] of Object.entries(raw)) coerced[k] = jsonOrString(v);
    try {
      return validateParams(pipeline, coerced);
    } catch {
      throw error;
    }
  }
}

function jsonOrString(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
