/**
 * The platform's cron: the clock that triggers kvflow's own schedule computation (the
 * schedule state lives in KV; see `engine/scheduler.ts`).
 *
 * This is a seam: a Node.js port of kvflow (over the npm package `@deno/kv`) would
 * replace this module, and only this module, for these calls.
 *
 * @module
 */

/**
 * Registers `handler` to run every minute under `name`. On Deno Deploy, call it while
 * the entry module is first evaluated, before serving.
 *
 * @param name the cron's name: at most 64 characters of `[A-Za-z0-9 _-]`
 * @param handler what each tick runs
 * @returns a promise that settles when the cron is stopped
 */
export function everyMinute(name: string, handler: () => void | Promise<void>): Promise<void> {
  return Deno.cron(name, "* * * * *", handler);
}
