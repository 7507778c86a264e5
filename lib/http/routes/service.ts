/**
 * The service's own routes (OpenAPI tag `service`): health, Prometheus metrics and the
 * OpenAPI document.
 *
 * @module
 */
import { HealthSchema } from "../schemas.ts";
import { type ApiContext, type ApiRoute, json, route } from "./route.ts";

/**
 * The service routes.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function serviceRoutes(ctx: ApiContext): ApiRoute[] {
  return [
    route({
      method: "GET",
      path: "/healthz",
      operationId: "health",
      summary: "Whether KV answers and the worker sweeps (503 when not)",
      tag: "service",
      access: "public",
      responses: {
        200: { description: "Healthy", schema: HealthSchema },
        503: { description: "Unhealthy", schema: HealthSchema },
      },
    }, async () => {
      const health = await ctx.health();
      return json(health, health.ok ? 200 : 503, { "cache-control": "no-store" });
    }),

    route({
      method: "GET",
      path: "/metrics",
      operationId: "metrics",
      summary: "Prometheus metrics",
      tag: "service",
      access: "read",
      responses: { 200: { description: "Prometheus text format 0.0.4", mediaType: "text/plain" } },
    }, async () =>
      new Response(await ctx.metrics(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      })),

    route({
      method: "GET",
      path: "/openapi.json",
      operationId: "openapi",
      summary: "This document",
      tag: "service",
      access: "public",
      responses: { 200: { description: "OpenAPI 3.1", mediaType: "application/json" } },
    }, () => json(ctx.openapi())),
  ];
}
