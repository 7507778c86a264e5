/**
 * The pipelines of the flow-control benchmark (`bench/flow.ts`), shared with its worker
 * processes (`bench/flow_entry.ts`).
 *
 * @module
 */
import { z } from "zod";
import { type Pipeline, pipeline, step } from "../lib/mod.ts";
import { BENCH_DIAMOND } from "./entry.ts";

/** Keys of the limited diamond's runs, and runs at once per key. */
export const LIMIT_KEYS = 50;
/** Runs at once per key of the limited diamond. */
export const LIMIT_MAX = 4;

/** The throughput benchmark's 5-step diamond, at most {@linkcode LIMIT_MAX} runs per key. */
export const LIMITED_DIAMOND = pipeline("bench-diamond-limited", {
  params: z.object({ key: z.string() }),
  limit: { key: (params) => params.key, max: LIMIT_MAX },
  steps: [...BENCH_DIAMOND.steps],
}) as Pipeline<unknown>;

/** How long the holder of the slot-latency benchmark's slot runs, ms. */
export const HOLD_MS = 50;

function slotPipeline(name: string): Pipeline<unknown> {
  const hold = step("hold", async () => {
    await new Promise((resolve) => setTimeout(resolve, HOLD_MS));
    return 1;
  });
  return pipeline(name, {
    limit: { scope: "bench-slot", max: 1 },
    steps: [hold],
  }) as Pipeline<unknown>;
}

/** The slot-latency pipeline the benchmark's own process runs. */
export const SLOT_NEAR = slotPipeline("bench-slot-near");
/** The same, sharing its slot, run only by another process. */
export const SLOT_FAR = slotPipeline("bench-slot-far");
