/**
 * The command line: `run`, `resume`, `rerun`, `cancel`, `pause`, `unpause`, `status`, `runs`,
 * `pipelines`, `prune`, `send`, `backfill`, `serve`, `worker`, `try`. Usage errors exit 2 with one line; a failed run exits 1
 * and prints the command that resumes it.
 *
 * @module
 */
import { UsageError } from "../model/errors.ts";
import { env } from "../platform/env.ts";
import { stdout } from "../platform/process.ts";
import { type Command, parseCommand, USAGE } from "./parse.ts";
import { type CliContext, EXIT, type Invocation } from "./invocation.ts";
import { paintFor } from "./progress.ts";
import * as foreground from "./foreground.ts";
import * as inspect from "./inspect.ts";
import * as longRunning from "./serve.ts";
import { send } from "./send.ts";
import { prune } from "./prune.ts";
import { pause, unpause } from "./pause.ts";
import { tryStep } from "./try.ts";

export { type CliContext, EXIT } from "./invocation.ts";
export { heartbeat } from "./serve.ts";

/** What runs each command. */
const COMMANDS: Record<Command, (invocation: Invocation) => Promise<number>> = {
  run: foreground.run,
  resume: foreground.resume,
  rerun: foreground.rerun,
  cancel: foreground.cancel,
  pause,
  unpause,
  status: inspect.status,
  try: tryStep,
  runs: inspect.runs,
  pipelines: inspect.pipelines,
  prune,
  send,
  backfill: longRunning.backfill,
  serve: longRunning.serve,
  worker: longRunning.worker,
};

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
    const paint = paintFor(stdout());
    return await COMMANDS[command]({ context, flags, args: rest, out, err, paint });
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

/** A message as one line: line breaks and other controls a user typed are escaped. */
function oneLine(message: string): string {
  return message.replace(/\p{Cc}/gu, (c) => JSON.stringify(c).slice(1, -1));
}
