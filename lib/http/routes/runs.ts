/**
 * Routes that read runs: a page of runs, and one run in full.
 *
 * @module
 */
import { UsageError } from "../../model/errors.ts";
import { RunDetailSchema, RunListQuerySchema, RunPageSchema, RunPathSchema } from "../schemas.ts";
import { HttpError, quote } from "../errors.ts";
import { runDetail, runJson } from "../run_view.ts";
import { type ApiContext, type ApiRoute, json, route } from "./route.ts";

/**
 * The routes that read runs.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function runRoutes({ engine }: ApiContext): ApiRoute[] {
  return [
    route({
      method: "GET",
      path: "/api/runs",
      operationId: "listRuns",
      summary: "Runs, newest first, a page at a time",
      description:
        "Pages are cut by KV key, so runs created while a client pages do not shift the pages " +
        "after the first: each run is listed once.",
      tag: "runs",
      access: "read",
      query: RunListQuerySchema,
      responses: { 200: { description: "A page of runs", schema: RunPageSchema } },
    }, async (_c, { query }) => {
      const page = await engine.store.listRuns(query).catch((error) => {
        if (error instanceof UsageError) {
          throw new HttpError(400, "invalid_query", error.message, {
            issues: [{ path: [query.cursor ? "cursor" : "limit"], message: error.message }],
          });
        }
        throw error;
      });
      const now = Date.now();
      const runs = page.runs.map((r) => runJson(r, now));
      return json(page.cursor ? { runs, cursor: page.cursor } : { runs });
    }),

    route({
      method: "GET",
      path: "/api/runs/:id",
      operationId: "getRun",
      summary: "One run: steps, attempts (with errors, stacks and logs), items, artifacts, alerts",
      tag: "runs",
      access: "read",
      params: RunPathSchema,
      responses: { 200: { description: "The run", schema: RunDetailSchema } },
    }, async (_c, { params }) => {
      const view = await runDetail(engine, params.id);
      if (!view) throw new HttpError(404, "not_found", `Unknown run ${quote(params.id)}`);
      return json(view);
    }),
  ];
}
