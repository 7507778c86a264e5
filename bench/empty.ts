/**
 * An empty script: `deno run` of it is the cost of starting a Deno process.
 *
 * @module
 */
