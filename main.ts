/**
 * kvflow's command line: `deno task run <pipeline>`, `resume`, `status`, `runs`, … —
 * see `deno task run --help`.
 *
 * @module
 */
import { main } from "./lib/cli.ts";
import { pipelines } from "./pipelines/mod.ts";

if (import.meta.main) {
  Deno.exit(await main(Deno.args, { pipelines }));
}
