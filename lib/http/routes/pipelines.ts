/**
 * Routes of the pipelines: the list, one pipeline with its latest runs, pause and unpause.
 *
 * @module
 */
import type { Engine } from "../../engine/engine.ts";
import {
  PauseRequestSchema,
  PipelineDetailSchema,
  PipelineListSchema,
  PipelinePathSchema,
  PipelineSchema,
} from "../schemas.ts";
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
      const paused = await engine.pausedPipelines();
      for (const p of engine.pipelines.values()) {
        const state = p.schedule ? await engine.scheduler.state(p.name) : null;
        out.push(pipelineJson(p, state, paused.get(p.name) ?? null));
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
      const pause = (await engine.pausedPipelines()).get(pipeline.name) ?? null;
      return json({
        ...pipelineJson(pipeline, state, pause),
        lastRuns: page.runs.map((r) => runJson(r, now)),
      });
    }),

    pauseRoute(engine, "pause"),
    pauseRoute(engine, "unpause"),
  ];
}

/** `POST /api/pipelines/:name/pause` or `…/unpause`. */
function pauseRoute(engine: Engine, verb: "pause" | "unpause"): ApiRoute {
  return route({
    method: "POST",
    path: `/api/pipelines/:name/${verb}`,
    operationId: `${verb}Pipeline`,
    summary: verb === "pause"
      ? "Pause a pipeline: triggers are accepted, but its new runs wait and its schedule stops"
      : "Unpause a pipeline: the runs its pause held start, the schedule catches up",
    description: "Idempotent: pausing a paused pipeline (or unpausing one that is not) " +
      "changes nothing.",
    tag: "pipelines",
    access: "write",
    params: PipelinePathSchema,
    body: PauseRequestSchema,
    responses: { 200: { description: "The pipeline", schema: PipelineSchema } },
  }, async (_c, { params, body }) => {
    const pipeline = pipelineOf(engine, params.name);
    if (verb === "pause") {
      await engine.pause(pipeline.name, body.reason ?? "Paused by request (HTTP)");
    } else await engine.unpause(pipeline.name);
    const state = pipeline.schedule ? await engine.scheduler.state(pipeline.name) : null;
    const pause = (await engine.pausedPipelines()).get(pipeline.name) ?? null;
    return json(pipelineJson(pipeline, state, pause));
  });
}
