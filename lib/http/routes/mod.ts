/**
 * The routes of the JSON API, one file per resource, assembled in the order the OpenAPI
 * document lists them. What a route is lives in `route.ts`.
 *
 * @module
 */
import type { ApiContext, ApiRoute } from "./route.ts";
import { pipelineRoutes } from "./pipelines.ts";
import { runRoutes } from "./runs.ts";
import { artifactRoutes } from "./artifacts.ts";
import { runStreamRoutes } from "./run_stream.ts";
import { eventRoutes } from "./events.ts";
import { runActionRoutes } from "./run_actions.ts";
import { serviceRoutes } from "./service.ts";

export type { ApiContext, ApiRoute, RouteInput } from "./route.ts";

/**
 * The API's routes.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function apiRoutes(ctx: ApiContext): ApiRoute[] {
  return [
    ...pipelineRoutes(ctx),
    ...runRoutes(ctx),
    ...artifactRoutes(ctx),
    ...runStreamRoutes(ctx),
    ...runActionRoutes(ctx),
    ...eventRoutes(ctx),
    ...serviceRoutes(ctx),
  ];
}
