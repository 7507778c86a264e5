/**
 * kvflow's entrypoint: the command line (`deno task run <pipeline>`, `resume`, `status`,
 * `runs`, `backfill`, `serve`, `worker` — see `deno task run --help`), and on Deno Deploy
 * the HTTP service driven by a heartbeat cron.
 *
 * @module
 */
import { heartbeat, main } from "./lib/cli/cli.ts";
import { pipelines } from "./pipelines/mod.ts";

if (Deno.env.get("DENO_DEPLOY") === "true") {
  // Deploy registers crons only while the module is first evaluated, before Deno.serve.
  const { startDeploy } = await import("./lib/engine/deploy.ts");
  const deployment = await startDeploy(pipelines);
  Deno.cron("kvflow heartbeat", "* * * * *", () => deployment.heartbeat());
  deployment.serve();
} else if (import.meta.main) {
  if (Deno.args[0] === "serve" || Deno.args[0] === "worker") {
    Deno.cron("kvflow heartbeat", "* * * * *", heartbeat);
  }
  Deno.exit(await main(Deno.args, { pipelines }));
}
