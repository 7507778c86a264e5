/**
 * Serving HTTP: a listening server for a fetch handler.
 *
 * This is a seam: a Node.js port of kvflow (over the npm package `@deno/kv`) would
 * replace this module, and only this module, for these calls.
 *
 * @module
 */

/** Where a server listens, and what it calls once it does. */
export interface ListenOptions {
  /** Port; 0 picks a free one. */
  port: number;
  /** Interface to listen on. Default all (`0.0.0.0`). */
  hostname?: string;
  /** Called once listening, with the port. */
  onListen?: (addr: { port: number }) => void;
}

/** A running HTTP server. */
export type HttpServer = Deno.HttpServer<Deno.NetAddr>;

/** Where a server listens: its host name and port. */
export type NetAddr = Deno.NetAddr;

/** A handler of HTTP requests. */
export type FetchHandler = (request: Request) => Response | Promise<Response>;

/**
 * Starts an HTTP server.
 *
 * @param options port, interface, a listen callback
 * @param handler answers each request
 * @returns the running server
 */
export function startServer(
  options: ListenOptions,
  handler: FetchHandler,
): HttpServer {
  return Deno.serve(options, handler);
}
