/**
 * The static registry of pipelines. Deno Deploy and cron registration need every
 * pipeline imported here, not discovered at run time.
 *
 * @module
 */
import type { Pipeline } from "../lib/mod.ts";
import example from "./example/mod.ts";
import nightly from "./nightly/mod.ts";
import refunds from "./refunds/mod.ts";
import regions, { regionReport } from "./regions/mod.ts";
import statements from "./statements/mod.ts";

/** Every registered pipeline. */
export const pipelines: readonly Pipeline<unknown>[] = [
  example as Pipeline<unknown>,
  nightly as Pipeline<unknown>,
  refunds as Pipeline<unknown>,
  regions as Pipeline<unknown>,
  regionReport as Pipeline<unknown>,
  statements as Pipeline<unknown>,
];
