/**
 * kvflow's HTTP service and dashboard for an engine of your own: `serve(engine, options)`.
 * It is its own entry point (`@kvflow/kvflow/http`) so that pipeline modules, which import
 * the main one, do not load the service and dashboard in every worker and CLI process.
 *
 * @example
 * ```ts ignore
 * import { openEngine } from "@kvflow/kvflow";
 * import { serve } from "@kvflow/kvflow/http";
 * import nightly from "./pipelines/nightly/mod.ts";
 *
 * const engine = await openEngine({ pipelines: [nightly] });
 * engine.start();
 * serve(engine, { port: 8000, token: Deno.env.get("KVFLOW_TOKEN") });
 * ```
 *
 * @module
 */
export { serve, type ServeOptions, type Server, type ServiceOptions } from "./service.ts";
export { type Tokens } from "./auth.ts";
export { type NetAddr } from "../platform/serve.ts";
