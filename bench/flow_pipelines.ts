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

/**
 * The keyed diamond without its limit: the same params, so that a ratio to it is what the
 * limit costs and nothing else.
 */
export const PARAMS_DIAMOND = pipeline("bench-diamond-params", {
  params: z.object({ key: z.string() }),
  steps: [...BENCH_DIAMOND.steps],
}) as Pipeline<unknown>;

/** Runs at once per key of the keyed diamond: never reached by 500 runs over 50 keys. */
export const KEYED_MAX = 10;

/**
 * The 5-step diamond under a run limit that is never reached: what the bookkeeping costs
 * (every run takes a slot in its claim and frees it, with a gate, at its end).
 */
export const KEYED_DIAMOND = pipeline("bench-diamond-keyed", {
  params: z.object({ key: z.string() }),
  limit: { key: (params) => params.key, max: KEYED_MAX },
  steps: [...BENCH_DIAMOND.steps],
}) as Pipeline<unknown>;

/** Slots of the step-limited diamond's one shared key: never reached by 500 runs. */
export const STEP_MAX = 1000;

/**
 * The 5-step diamond with every step under a step limit shared by all runs (one per step,
 * the default scope), never reached: at most 500 attempts of a step run at once. Each
 * attempt takes a slot in KV with its start and frees it with its end.
 */
export const STEP_LIMITED_DIAMOND = ((): Pipeline<unknown> => {
  const limit = { max: STEP_MAX };
  const load = step("load", { limit }, () => ({ n: 1 }));
  const left = step("left", { needs: { load }, limit }, ({ load }) => load.n + 1);
  const right = step("right", { needs: { load }, limit }, ({ load }) => load.n + 2);
  const join = step("join", { needs: { left, right }, limit }, ({ left, right }) => left + right);
  const report = step("report", { needs: { join }, limit }, ({ join }) => `sum=${join}`);
  return pipeline("bench-diamond-step-limited", {
    steps: [load, left, right, join, report],
  }) as Pipeline<unknown>;
})();

/** Attempts at once per key of the one-step-limited diamond's last step: never reached. */
export const ONE_STEP_MAX = 10;

function oneStepDiamond(name: string, limited: boolean): Pipeline<unknown> {
  const load = step("load", (_inputs, ctx) => ({ n: 1, key: String(ctx.run.params.key) }));
  const left = step("left", { needs: { load } }, ({ load }) => load.n + 1);
  const right = step("right", { needs: { load } }, ({ load }) => load.n + 2);
  const join = step("join", { needs: { left, right } }, ({ left, right }) => left + right);
  const needs = { join, load };
  const body = ({ join }: { join: number }) => `sum=${join}`;
  const report = limited
    ? step("report", { needs, limit: { key: ({ load }) => load.key, max: ONE_STEP_MAX } }, body)
    : step("report", { needs }, body);
  return pipeline(name, {
    params: z.object({ key: z.string() }),
    steps: [load, left, right, join, report],
  }) as Pipeline<unknown>;
}

/**
 * The 5-step diamond with one step under a step limit per key, as a pipeline limits the
 * one step that calls a service: `report` at most {@linkcode ONE_STEP_MAX} at once per
 * key, the key being the run's param (500 runs over {@linkcode LIMIT_KEYS} keys: never
 * reached). `load` passes the key on, so its output is a few bytes larger.
 */
export const ONE_STEP_LIMITED_DIAMOND = oneStepDiamond("bench-diamond-one-step-limited", true);

/** The same without the limit: a ratio to it is what the limit costs and nothing else. */
export const ONE_STEP_FREE_DIAMOND = oneStepDiamond("bench-diamond-one-step-free", false);

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
