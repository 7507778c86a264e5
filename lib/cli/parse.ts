/**
 * Reading a command line: the commands, their flags, the usage text, and the shape
 * checks that make a bad command line a one-line usage error.
 *
 * @module
 */
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

/**
 * The options every command line may carry. Read by {@linkcode parse}, not by `node:util`'s
 * `parseArgs`: that import alone costs a `resume` about 5 ms of CPU at start.
 */
const OPTIONS: Readonly<Record<string, OptionSpec>> = {
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
};

/** One option: a flag, or one that takes a value (and may be given more than once). */
interface OptionSpec {
  type: "string" | "boolean";
  multiple?: boolean;
  short?: string;
}

/** The long names of the options that have a one-letter form, by that letter. */
const SHORT: ReadonlyMap<string, string> = new Map(
  Object.entries(OPTIONS).flatMap(([name, o]) => o.short ? [[o.short, name]] : []),
);

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

/**
 * Splits a command line into flags and positional arguments, strictly: an unknown option,
 * a flag given a value, or an option without its value is a usage error. `--name value`
 * and `--name=value` are the same, except that a value starting with `-` must be given
 * with `=`; `-h` is `--help`; everything after `--` is positional; a repeated option keeps
 * its last value, `--param` every value in order.
 */
function parse(args: readonly string[]): { values: Flags; positionals: string[] } {
  const values: Record<string, string | boolean | string[]> = {};
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg.length < 2 || arg[0] !== "-") {
      positionals.push(arg);
      continue;
    }
    if (arg[1] !== "-") {
      // -h, or a group of one-letter flags such as -hh
      for (const letter of arg.slice(1)) {
        const name = SHORT.get(letter);
        if (!name) throw unknownOption(`-${letter}`);
        values[name] = true;
      }
      continue;
    }
    // `=` after the name: `--=x` is an option named `=x`, as `parseArgs` reads it
    const eq = arg.indexOf("=", 3);
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const option = Object.hasOwn(OPTIONS, name) ? OPTIONS[name] : undefined;
    if (!option) throw unknownOption(`--${name}`);
    if (option.type === "boolean") {
      if (eq >= 0) throw new UsageError(`Option '--${name}' does not take an argument`);
      values[name] = true;
      continue;
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      if (i + 1 >= args.length) {
        throw new UsageError(`Option '--${name} <value>' argument missing`);
      }
      value = args[++i];
      if (value.length > 1 && value[0] === "-") {
        throw new UsageError(
          `Option '--${name}' argument is ambiguous: to give a value that starts with '-', use '--${name}=${value}'`,
        );
      }
    }
    if (option.multiple) values[name] = [...(values[name] as string[] | undefined ?? []), value];
    else values[name] = value;
  }
  return { values: values as Flags, positionals };
}

function unknownOption(option: string): UsageError {
  return new UsageError(
    `Unknown option '${option}': to give an argument that starts with '-', put it after '--'`,
  );
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
