/**
 * The environment: variables (`KVFLOW_*`, `PORT`, `NO_COLOR`, …) and whether this is Deno
 * Deploy.
 *
 * This is a seam: a Node.js port of kvflow (over the npm package `@deno/kv`) would
 * replace this module, and only this module, for these calls.
 *
 * @module
 */

/** An environment variable's value, or undefined when it is not set. */
export function env(name: string): string | undefined {
  return Deno.env.get(name);
}

/** Whether this process runs on Deno Deploy, which sets `DENO_DEPLOY=true`. */
export function onDeploy(): boolean {
  return env("DENO_DEPLOY") === "true";
}
