/**
 * The artifact route: the bytes a step stored, served so they cannot run as the
 * dashboard's page.
 *
 * @module
 */
import { ArtifactPathSchema } from "../schemas.ts";
import { type ApiContext, type ApiRoute, route, runOf } from "./route.ts";

/**
 * The artifact routes.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function artifactRoutes({ engine }: ApiContext): ApiRoute[] {
  return [
    route({
      method: "GET",
      path: "/api/runs/:id/artifacts/:name",
      operationId: "getArtifact",
      summary: "An artifact's bytes, with its content type",
      tag: "runs",
      access: "read",
      params: ArtifactPathSchema,
      responses: { 200: { description: "The bytes", mediaType: "application/octet-stream" } },
    }, async (c, { params }) => {
      await runOf(engine, params.id);
      const { meta, bytes } = await engine.store.readArtifact(params.id, params.name);
      const active = /html|xml|javascript|ecmascript/i.test(meta.contentType);
      return new Response(c.req.method === "HEAD" ? null : bytes as Uint8Array<ArrayBuffer>, {
        headers: {
          "content-type": meta.contentType,
          "content-length": String(bytes.length),
          // Content a step produced must not run as this origin's page (the dashboard's).
          "content-security-policy": "sandbox",
          "content-disposition": `${active ? "attachment" : "inline"}; filename*=UTF-8''${
            encodeURIComponent(meta.name)
          }`,
        },
      });
    }),
  ];
}
