/**
 * The OpenAPI 3.1 document of the HTTP API, generated from the routes' zod schemas (with
 * `z.toJSONSchema`), never written by hand: a route's path, query, header and body
 * schemas become its parameters and request body, its response schemas the components
 * its responses refer to.
 *
 * @module
 */
import { z } from "zod";
import { requestSchemas, responseSchemas } from "./schemas.ts";
import type { Access } from "./auth.ts";

/** One response of a route. */
export interface ResponseDoc {
  /** What it means. */
  description: string;
  /** Its JSON body's schema (registered in `responseSchemas`). */
  schema?: z.ZodType;
  /** A non-JSON body's media type, e.g. `text/event-stream`. */
  mediaType?: string;
}

/** What the document says about one route. */
export interface RouteDoc {
  /** HTTP method. */
  method: "GET" | "POST";
  /** Path in Hono's syntax, e.g. `/api/runs/:id`. */
  path: string;
  /** Unique name of the operation. */
  operationId: string;
  /** One line. */
  summary: string;
  /** More, if needed. */
  description?: string;
  /** Group in the document. */
  tag: string;
  /** Who may call it. */
  access: Access;
  /** Path parameters. */
  params?: z.ZodObject;
  /** Query parameters. */
  query?: z.ZodObject;
  /** Request headers it reads (lower-case names). */
  headers?: z.ZodObject;
  /** JSON body (registered in `requestSchemas`); an empty body counts as `{}`. */
  body?: z.ZodObject;
  /** Answers by status, besides the error answers every route may give. */
  responses: Record<number, ResponseDoc>;
}

/** Title, version and description of the document. */
export interface DocumentInfo {
  /** API title. */
  title: string;
  /** API version. */
  version: string;
  /** What it is. */
  description?: string;
}

const ERROR_REF = { $ref: "#/components/schemas/Error" };

/**
 * Builds the OpenAPI document.
 *
 * @param routes the routes, in the order to list them
 * @param info title, version, description
 * @returns the document, as plain JSON
 * @throws {TypeError} when a route's response or body schema is not registered
 */
export function openApiDocument(
  routes: readonly RouteDoc[],
  info: DocumentInfo,
): Record<string, unknown> {
  const uri = (id: string) => `#/components/schemas/${id}`;
  const schemas = {
    ...components(z.toJSONSchema(responseSchemas, { uri, io: "output" })),
    ...components(z.toJSONSchema(requestSchemas, { uri, io: "input" })),
  };
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const path = route.path.replace(/:([A-Za-z0-9_]+)/g, "{$1}");
    paths[path] ??= {};
    paths[path][route.method.toLowerCase()] = operation(route);
  }
  return {
    openapi: "3.1.0",
    info,
    tags: [...new Set(routes.map((r) => r.tag))].map((name) => ({ name })),
    paths,
    components: {
      schemas,
      securitySchemes: {
        bearer: {
          type: "http",
          scheme: "bearer",
          description:
            "KVFLOW_TOKEN for mutations (and reads); KVFLOW_READ_TOKEN for reads when it is set",
        },
      },
    },
  };
}

function operation(route: RouteDoc): Record<string, unknown> {
  const parameters = [
    ...parametersOf(route.params, "path"),
    ...parametersOf(route.query, "query"),
    ...parametersOf(route.headers, "header"),
  ];
  const responses: Record<string, unknown> = {};
  for (const [status, doc] of Object.entries(route.responses)) {
    responses[status] = responseOf(doc);
  }
  const errors: Record<number, string> = {};
  if (route.params || route.query || route.headers || route.body) {
    errors[400] = "Malformed request: the issues say what is wrong";
  }
  if (route.access !== "public") {
    errors[401] = "No bearer token, and this service requires one";
    errors[403] = "The bearer token does not grant this request";
  }
  if (route.params) errors[404] = "No such resource";
  if (route.body) {
    errors[413] = "Body too large";
    errors[415] = "Body is not application/json";
  }
  errors[500] = "Server error; the message holds a reference to its log line, nothing more";
  for (const [status, description] of Object.entries(errors)) {
    responses[status] ??= { description, content: { "application/json": { schema: ERROR_REF } } };
  }
  const op: Record<string, unknown> = {
    operationId: route.operationId,
    summary: route.summary,
    ...(route.description ? { description: route.description } : {}),
    tags: [route.tag],
    ...(parameters.length ? { parameters } : {}),
    responses,
  };
  if (route.body) {
    op.requestBody = {
      required: false,
      content: { "application/json": { schema: { $ref: refOf(route.body, requestSchemas) } } },
    };
  }
  if (route.access === "write") op.security = [{ bearer: [] }];
  if (route.access === "read") op.security = [{}, { bearer: [] }];
  if (route.access === "public") op.security = [];
  return op;
}

function responseOf(doc: ResponseDoc): Record<string, unknown> {
  if (doc.schema) {
    return {
      description: doc.description,
      content: { "application/json": { schema: { $ref: refOf(doc.schema, responseSchemas) } } },
    };
  }
  if (doc.mediaType) {
    return { description: doc.description, content: { [doc.mediaType]: { schema: {} } } };
  }
  return { description: doc.description };
}

function parametersOf(
  schema: z.ZodObject | undefined,
  where: "path" | "query" | "header",
): Record<string, unknown>[] {
  if (!schema) return [];
  const json = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as {
    properties?: Record<string, Record<string, unknown>>;
    required?: string[];
  };
  return Object.entries(json.properties ?? {}).map(([name, property]) => {
    const { description, ...rest } = property;
    return {
      name,
      in: where,
      required: where === "path" || (json.required ?? []).includes(name),
      ...(description ? { description } : {}),
      schema: rest,
    };
  });
}

function refOf(schema: z.ZodType, registry: typeof responseSchemas): string {
  const id = registry.get(schema)?.id;
  if (!id) throw new TypeError("An API schema is not registered under a component name");
  return `#/components/schemas/${id}`;
}

/** The registry's schemas without the keys that only make sense in a standalone schema. */
function components(converted: { schemas: Record<string, unknown> }): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [id, schema] of Object.entries(converted.schemas)) {
    const { $schema: _schema, $id: _id, ...rest } = schema as Record<string, unknown>;
    out[id] = rest;
  }
  return out;
}
