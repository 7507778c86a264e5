import assert from "node:assert/strict";
import SwaggerParser from "@apidevtools/swagger-parser";
import { Ajv2020 } from "ajv/dist/2020.js";
import { z } from "zod";
import { Contract, type OpenApi, startService } from "./_support/http.ts";
import { RunListQuerySchema, RunStatusSchema, TriggerRequestSchema } from "../lib/http/schemas.ts";
import { RUN_STATUSES } from "../lib/model/records.ts";

const ROUTES = [
  "GET /api/pipelines",
  "GET /api/pipelines/{name}",
  "GET /api/runs",
  "GET /api/runs/{id}",
  "GET /api/runs/{id}/artifacts/{name}",
  "GET /api/runs/{id}/events",
  "POST /api/pipelines/{name}/runs",
  "POST /api/runs/{id}/resume",
  "POST /api/runs/{id}/rerun",
  "POST /api/runs/{id}/cancel",
  "POST /api/runs/{id}/pause",
  "POST /api/runs/{id}/unpause",
  "POST /api/pipelines/{name}/pause",
  "POST /api/pipelines/{name}/unpause",
  "POST /api/events",
  "GET /api/events",
  "GET /api/events/{id}",
  "GET /openapi.json",
  "GET /healthz",
  "GET /metrics",
];

async function document(): Promise<OpenApi> {
  await using s = await startService({ worker: false });
  const r = await fetch(`${s.url}/openapi.json`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type")!, /^application\/json/);
  return await r.json();
}

Deno.test("GET /openapi.json is a valid OpenAPI 3.1 document listing every route", async () => {
  const doc = await document();
  assert.equal(doc.openapi, "3.1.0");
  await SwaggerParser.validate(structuredClone(doc) as never);
  const listed = Object.entries(doc.paths).flatMap(([path, ops]) =>
    Object.keys(ops).map((method) => `${method.toUpperCase()} ${path}`)
  );
  assert.deepEqual(listed.sort(), [...ROUTES].sort());
  const ids = Object.values(doc.paths).flatMap((ops) =>
    Object.values(ops).map((op) => op.operationId)
  );
  assert.equal(new Set(ids).size, ids.length, "operation ids are unique");
});

Deno.test("every schema in the document compiles as JSON Schema 2020-12 in strict mode", async () => {
  const doc = await document();
  const ajv = new Ajv2020({ strict: true, validateFormats: false });
  // Each component stands alone under its own id, its references rewritten to match.
  const schemas: Record<string, object> = JSON.parse(
    JSON.stringify(doc.components.schemas).replaceAll("#/components/schemas/", "kvflow:"),
  );
  for (const [name, schema] of Object.entries(schemas)) {
    ajv.addSchema({ $id: `kvflow:${name}`, ...schema });
  }
  for (const name of Object.keys(schemas)) {
    assert.doesNotThrow(() => ajv.getSchema(`kvflow:${name}`), name);
    assert.equal(typeof ajv.getSchema(`kvflow:${name}`), "function", name);
  }
});

Deno.test("the document is generated from the API's zod schemas", async () => {
  const doc = await document();
  const components = doc.components.schemas as Record<string, Record<string, unknown>>;
  const { $schema: _, ...trigger } = z.toJSONSchema(TriggerRequestSchema, { io: "input" });
  assert.deepEqual(components.TriggerRequest, trigger);
  assert.deepEqual(components.RunStatus.enum, [...RUN_STATUSES]);
  assert.deepEqual(RunStatusSchema.options, [...RUN_STATUSES]);
  const listRuns = doc.paths["/api/runs"].get as unknown as {
    parameters: { name: string; in: string; schema: unknown }[];
  };
  assert.deepEqual(
    listRuns.parameters.map((p) => p.name),
    Object.keys(RunListQuerySchema.shape),
  );
  assert.deepEqual(listRuns.parameters.find((p) => p.name === "limit")!.schema, {
    default: 20,
    type: "integer",
    minimum: 1,
    maximum: 1000,
  });
  const trig = doc.paths["/api/pipelines/{name}/runs"].post as unknown as {
    security: unknown;
    parameters: { name: string; in: string }[];
    responses: Record<string, unknown>;
  };
  assert.deepEqual(trig.security, [{ bearer: [] }]);
  assert.ok(trig.parameters.some((p) => p.name === "idempotency-key" && p.in === "header"));
  for (const status of ["200", "201", "400", "401", "403", "404", "413", "415", "422", "500"]) {
    assert.ok(trig.responses[status], `trigger documents ${status}`);
  }
});

Deno.test("the contract check rejects an answer the document does not describe", async () => {
  const contract = new Contract(await document());
  assert.throws(
    () => contract.check("GET", "/api/runs", 200, { runs: [{ id: 1 }] }),
    /does not match #\/components\/schemas\/RunPage/,
  );
  assert.throws(() => contract.check("GET", "/api/runs", 418, {}), /not documented/);
  assert.doesNotThrow(() =>
    contract.check("GET", "/api/runs/x", 404, { error: { code: "not_found", message: "No" } })
  );
});

Deno.test("a pipeline's params JSON schema accepts what the server accepts", async () => {
  await using s = await startService({ worker: false });
  const [demo] = await s.get("/api/pipelines");
  const validate = new Ajv2020({ strict: false }).compile(demo.params);
  assert.equal(validate({ region: "us", count: 3 }), true);
  assert.equal(validate({ count: "three" }), false);
  await s.post("/api/pipelines/demo/runs", { params: { region: "us", count: 3 } }, 201);
  await s.post("/api/pipelines/demo/runs", { params: { count: "three" } }, 422);
});
