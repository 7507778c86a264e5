/**
 * The worker processes of the flow-control benchmark (`bench/flow.ts`): the CLI with the
 * plain 5-step diamond, the same diamond under each kind of limit and each one's twin
 * without it, and the far side of the
 * slot-latency benchmark (a pipeline that shares its limit's scope with one only the
 * benchmark's own process knows).
 *
 * @module
 */
import { main } from "../lib/cli/cli.ts";
import type { Pipeline } from "../lib/mod.ts";
import { BENCH_DIAMOND } from "./entry.ts";
import {
  KEYED_DIAMOND,
  LIMITED_DIAMOND,
  ONE_STEP_FREE_DIAMOND,
  ONE_STEP_LIMITED_DIAMOND,
  PARAMS_DIAMOND,
  SLOT_FAR,
  STEP_LIMITED_DIAMOND,
} from "./flow_pipelines.ts";

if (import.meta.main) {
  Deno.exit(
    await main(Deno.args, {
      pipelines: [
        BENCH_DIAMOND,
        KEYED_DIAMOND,
        LIMITED_DIAMOND,
        STEP_LIMITED_DIAMOND,
        ONE_STEP_LIMITED_DIAMOND,
        PARAMS_DIAMOND,
        ONE_STEP_FREE_DIAMOND,
        SLOT_FAR,
      ] as Pipeline<unknown>[],
    }),
  );
}
