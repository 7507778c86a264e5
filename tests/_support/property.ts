/**
 * Shared parts of the property-based tests: fast-check options that honour a fixed seed
 * from the environment, and a dump of every KV entry to prove a rejected input wrote
 * nothing.
 *
 * Reproduce a failure with the seed it prints: `FUZZ_SEED=<seed> deno test -A <file>`.
 * `FUZZ_RUNS=<factor>` multiplies every property's number of runs (default 1).
 *
 * @module
 */
import type fc from "fast-check";

/** The seed of this test process: `FUZZ_SEED`, or one picked at random and printed. */
export const SEED: number = (() => {
  const given = Deno.env.get("FUZZ_SEED");
  return given === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(given);
})();

/** fast-check options: `numRuns` scaled by `FUZZ_RUNS`, the process's seed. */
export function propertyOptions<T>(numRuns: number): fc.Parameters<T> {
  const factor = Number(Deno.env.get("FUZZ_RUNS") ?? 1);
  return { numRuns: Math.max(1, Math.round(numRuns * factor)), seed: SEED };
}

/** Every key in KV with its versionstamp: two equal dumps mean nothing was written between. */
export async function kvSnapshot(kv: Deno.Kv): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const e of kv.list({ prefix: [] })) out.set(JSON.stringify(e.key), e.versionstamp);
  return out;
}
