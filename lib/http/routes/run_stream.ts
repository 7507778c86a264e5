/**
 * The stream route: a run's live updates as server-sent events.
 *
 * @module
 */
import { RunPathSchema } from "../schemas.ts";
import { runEventStream } from "../sse.ts";
import { type ApiContext, type ApiRoute, route, runOf } from "./route.ts";

/**
 * The stream routes.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function runStreamRoutes(ctx: ApiContext): ApiRoute[] {
  const { engine } = ctx;
  return [
    route({
      method: "GET",
      path: "/api/runs/:id/events",
      operationId: "runEvents",
      summary: "Live updates of a run as server-sent events",
      description:
        "Events: `run` (the run, as in listRuns, with `waitingFor` while it waits for a " +
        "sleep, an event or a child run), `step` (a StepEvent: one step's or fan-out " +
        "item's new state) and `end` (the final run), after which the stream closes. A run " +
        "that already ended gets its state and `end` at once. A comment line every 15 s keeps " +
        "the connection alive.",
      tag: "runs",
      access: "read",
      params: RunPathSchema,
      responses: { 200: { description: "The event stream", mediaType: "text/event-stream" } },
    }, async (c, { params }) => {
      await runOf(engine, params.id);
      const headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-store",
        "x-accel-buffering": "no",
      };
      if (c.req.method === "HEAD") return new Response(null, { headers });
      return new Response(runEventStream(engine, params.id, ctx.stream()), { headers });
    }),
  ];
}
