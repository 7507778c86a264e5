/**
 * Routes of the pipelines: the list, and one pipeline with its latest runs.
 *
 * @module
 */
import { PipelineDetailSchema, PipelineListSchema, PipelinePathSchema } from "../schemas.ts";
import { pipelineJson, runJson } from "../run_view.ts";
import { type ApiContext, type ApiRoute, json, pipelineOf, route } from "./route.ts";

/**
 * The pipeline routes.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function pipelineRoutes({ engine }: ApiContext): ApiRoute[] {
  return [
    route({
      method: "GET",
      path: "/api/pipelines",
      operationId: "listPipelines",
      summary: "Pipelines with their steps, needs and params schema",
      tag: "pipelines",
      access: "read",
      responses: { 200: { description: "The pipelines", schema: PipelineListSchema } },
    }, async () => {
      const out = [];
      for (const p of engine.pipelines.values()) {
        out.push(pipelineJson(p, p.schedule ? await engine.scheduler.state(p.name) : null));
      }
      return json(out);
    }),

    route({
      method: "GET",
      path: "/api/pipelines/:name",
      operationId: "getPipeline",
      summary: "One pipeline with its latest runs",
      tag: "pipelines",
      access: "read",
      params: PipelinePathSchema,
      responses: { 200: { description: "The pipeline", schema: PipelineDetailSchema } },
    }, async (_c, { params }) => {
      const pipeline = pipelineOf(engine, params.name);
      const page = await engine.store.listRuns({ pipeline: pipeline.name, limit: 10 });
      const now = Date.now();
      const state = pipeline.schedule ? await engine.scheduler.state(pipeline.name) : null;
      return json({
        ...pipelineJson(pipeline, state),
        lastRuns: page.runs.map((r) => runJson(r, now)),
      });
    }),
  ];
}
