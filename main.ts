/**
 * kvflow's entrypoint: the command line (`deno task run <pipeline>`, `resume`, `status`,
 * `runs`, `backfill`, `serve`, `worker` — see `deno task run --help`), and on Deno Deploy
 * the HTTP service driven by a heartbeat cron.
 *
 * The command line starts with the lazy registry (`pipelines/lazy.ts`) and imports only
 * what its command needs; Deploy imports every pipeline (`pipelines/mod.ts`).
 *
 * @module
 */
import { heartbeat, main } from "./lib/cli/cli.ts";
import { loaders } from "./pipelines/lazy.ts";
import { onDeploy } from "./lib/platform/env.ts";
import { everyMinute } from "./lib/platform/cron.ts";
import { exit } from "./lib/platform/process.ts";

if (onDeploy()) {
  // Deploy registers crons only while the module is first evaluated, before serving.
  const [{ startDeploy }, { pipelines }] = await Promise.all([
    import("./lib/engine/deploy.ts"),
    import("./pipelines/mod.ts"),
  ]);
  const deployment = await startDeploy(pipelines);
  everyMinute("kvflow heartbeat", () => deployment.heartbeat());
  deployment.serve();
} else if (import.meta.main) {
  if (Deno.args[0] === "serve" || Deno.args[0] === "worker") {
    everyMinute("kvflow heartbeat", heartbeat);
  }
  exit(await main(Deno.args, { pipelines: [], loaders }));
}
