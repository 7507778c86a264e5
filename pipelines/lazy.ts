/**
 * The registry of pipelines as loaders: each pipeline's module is imported only when a
 * command needs it (`deno task resume <id>` imports the run's pipeline alone). The CLI
 * (`main.ts`) starts with this one; `mod.ts` imports them all, for Deno Deploy and cron
 * registration. Both name the same pipelines (a test checks it).
 *
 * @module
 */
import type { PipelineLoaders } from "../lib/cli/cli.ts";
import type { Pipeline } from "../lib/mod.ts";

/** Every registered pipeline by name, each imported on first use. */
export const loaders: PipelineLoaders = {
  example: async () => (await import("./example/mod.ts")).default as Pipeline<unknown>,
  nightly: async () => (await import("./nightly/mod.ts")).default as Pipeline<unknown>,
  "refund-credits": async () => (await import("./refunds/mod.ts")).default as Pipeline<unknown>,
  regions: async () => (await import("./regions/mod.ts")).default as Pipeline<unknown>,
  "region-report": async () => (await import("./regions/mod.ts")).regionReport as Pipeline<unknown>,
  "customer-statement": async () =>
    (await import("./statements/mod.ts")).default as Pipeline<unknown>,
};
