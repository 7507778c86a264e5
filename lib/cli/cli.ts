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
import { lazyNames, loadRegistered } from "./load.ts";
import { paintFor } from "./progress.ts";

export { type CliContext, EXIT } from "./invocation.ts";
export type { PipelineLoaders } from "./load.ts";

/** A command's code. */
type Run = (invocation: Invocation) => Promise<number>;

/**
 * What runs each command, imported when it is the command given: a process loads only
 * the code of its command (`resume` does not load the HTTP service, say).
 */
const COMMANDS: Record<Command, () => Promise<Run>> = {
  run: async () => (await import("./foreground.ts")).run,
  resume: async () => (await import("./foreground.ts")).resume,
  rerun: async () => (await import("./foreground.ts")).rerun,
  cancel: async () => (await import("./foreground.ts")).cancel,
  pause: async () => (await import("./pause.ts")).pause,
  unpause: async () => (await import("./pause.ts")).unpause,
  status: async () => (await import("./inspect.ts")).status,
  try: async () => (await import("./try.ts")).tryStep,
  runs: async () => (await import("./inspect.ts")).runs,
  pipelines: async () => (await import("./inspect.ts")).pipelines,
  prune: async () => (await import("./prune.ts")).prune,
  send: async () => (await import("./send.ts")).send,
  backfill: async () => (await import("./serve.ts")).backfill,
  serve: async () => (await import("./serve.ts")).serve,
  worker: async () => (await import("./serve.ts")).worker,
};

/**
 * The commands that get the lazy registry (`CliContext.loaders`) as it is: `run`, `resume`,
 * `rerun` and `cancel` import only the pipeline they name or their run belongs to, and
 * `worker` imports them all while it takes up the runs it finds due. Every other command
 * gets the whole registry, imported before it starts.
 */
const LAZY: ReadonlySet<Command> = new Set(["run", "resume", "rerun", "cancel", "worker"]);

/**
 * The cron heartbeat of `serve` and `worker`: checks schedules and due runs once.
 * (They also check on their own short timer; the heartbeat is the clock that survives
 * on platforms that stop idle processes.)
 */
export async function heartbeat(): Promise<void> {
  await (await import("./serve.ts")).heartbeat();
}

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
    const code = await COMMANDS[command]();
    // a name in both registries is the static one's
    const registry = LAZY.has(command) || !context.loaders ? context : {
      ...context,
      pipelines: [
        ...context.pipelines,
        ...await loadRegistered(context.loaders, lazyNames(context.pipelines, context.loaders)),
      ],
      loaders: undefined,
    };
    return await code({ context: registry, flags, args: rest, out, err, paint });
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
