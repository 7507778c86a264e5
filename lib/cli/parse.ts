/**
 * Reading a command line: the commands, their flags, the usage text, and the shape
 * checks that make a bad command line a one-line usage error.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { UsageError } from "../model/errors.ts";
import { RUN_STATUSES, type RunStatus } from "../model/records.ts";
import { MAX_PRIORITY } from "../define/flow.ts";

/** The usage text, printed by `help` and when no command is given. */
export const USAGE = `kvflow — durable pipelines on Deno KV

usage: deno task <command> [arguments]

  run <pipeline|module.ts> [--param k=v]... [--params JSON] [--date YYYY-MM-DD] [--priority N]
      [--detach]
  resume <run-id> [--force]
  rerun <run-id> --from <step> [--force]
  cancel <run-id>
  pause <pipeline|run-id> [--json]
  unpause <pipeline|run-id> [--json]
  status <run-id> [--json]
  try <run-id> <step> [--item N] [--json]
  runs [--pipeline P] [--status S] [--limit N] [--json]
  send <event> [--data JSON] [--id ID] [--json]
  pipelines [--json]
  prune [--pipeline P] [--older-than 30d] [--dry-run] [--json]
  backfill <pipeline> --from YYYY-MM-DD --to YYYY-MM-DD [--max-active N] [--priority N]
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
  data: { type: "string" },
  id: { type: "string" },
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
  priority: { type: "string" },
  "older-than": { type: "string" },
  "dry-run": { type: "boolean" },
  item: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** The flags of a command line; each command reads the ones it knows. */
export type Flags = {
  param?: string[];
  params?: string;
  date?: string;
  data?: string;
  id?: string;
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
  priority?: string;
  "older-than"?: string;
  "dry-run"?: boolean;
  item?: string;
  help?: boolean;
};

/** Each command with what its one argument is, or null when it takes none. */
const COMMANDS = {
  run: "<pipeline>",
  resume: "<run-id>",
  rerun: "<run-id>",
  cancel: "<run-id>",
  pause: "<pipeline|run-id>",
  unpause: "<pipeline|run-id>",
  status: "<run-id>",
  try: "<run-id> <step>",
  runs: null,
  pipelines: null,
  prune: null,
  send: "<event> [--data JSON] [--id ID]",
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
 * import { parseCommand } from "./parse.ts";
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
  // `try` alone takes two: a run and its step
  const arity = name === "try" ? 2 : 1;
  if (what !== null && rest.length !== arity) {
    throw new UsageError(
      `${name} takes exactly ${arity === 1 ? "one argument" : "two arguments"}: ${name} ${what}`,
    );
  }
  if (name === "rerun" && !flags.from) throw new UsageError("rerun needs --from <step>");
  if (name === "backfill" && (!flags.from || !flags.to)) {
    throw new UsageError("backfill needs --from YYYY-MM-DD and --to YYYY-MM-DD");
  }
  priorityFlag(flags.priority);
  const status = flags.status;
  if (name === "runs" && status !== undefined && !RUN_STATUSES.includes(status as RunStatus)) {
    throw new UsageError(`Unknown status '${status}': use one of ${RUN_STATUSES.join(", ")}`);
  }
  return { command: name, args: rest, flags };
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

/**
 * The value of `--priority`: an integer from 0 to 10, or undefined when it was not given.
 *
 * @throws {UsageError} on anything else
 */
export function priorityFlag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d{1,2}$/.test(value) ? Number(value) : NaN;
  if (!(n >= 0 && n <= MAX_PRIORITY)) {
    throw new UsageError(
      `Invalid --priority ${JSON.stringify(value)}: use an integer from 0 to ${MAX_PRIORITY}`,
    );
  }
  return n;
}
