/**
 * The HTTP test kit: pipelines that exercise every part of a run's view (params, a
 * diamond, a slow chain, a step held until cancelled, failures with logs, a fan-out,
 * artifacts), a real engine on a temp KV file served on 127.0.0.1 port 0, and a client
 * that checks every JSON answer against the service's OpenAPI document.
 *
 * @module
 */
import { z } from "zod";
import {
  type Engine,
  NonRetryableError,
  openEngine,
  type Pipeline,
  pipeline,
  step,
} from "../../lib/mod.ts";
import { serve, type ServeOptions, type Server } from "../../lib/http/service.ts";
import { delay, type TempKv, tempKv } from "./helpers.ts";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";

/** A diamond with params: load → (left, right) → join. */
export function demoPipeline(): Pipeline<unknown> {
  const load = step("load", (_inputs, ctx) => {
    ctx.log.info("loading", { region: ctx.run.params.region });
    return [1, 2, 3];
  });
  const left = step("left", { needs: { load } }, ({ load }) => load.map((n) => n * 2));
  const right = step("right", { needs: { load } }, ({ load }) => load.length);
  const join = step("join", { needs: { left, right } }, ({ left, right }) => ({ left, right }));
  return pipeline("demo", {
    description: "A diamond of four quick steps",
    params: z.object({
      region: z.string().min(1).default("eu"),
      count: z.number().int().min(0).max(100).optional(),
    }),
    steps: [load, left, right, join],
  }) as Pipeline<unknown>;
}

/** a → b → c, each taking `ms` (default 40) milliseconds. */
export function slowPipeline(): Pipeline<unknown> {
  const wait = async (ms: number, signal: AbortSignal) => {
    await delay(ms);
    signal.throwIfAborted();
  };
  const ms = (params: Readonly<Record<string, unknown>>) => Number(params.ms ?? 40);
  const a = step("a", async (_i, ctx) => {
    await wait(ms(ctx.run.params), ctx.signal);
    return "a";
  });
  const b = step("b", { needs: { a } }, async (_i, ctx) => {
    await wait(ms(ctx.run.params), ctx.signal);
    return "b";
  });
  const c = step("c", { needs: { b } }, async (_i, ctx) => {
    await wait(ms(ctx.run.params), ctx.signal);
    return "c";
  });
  return pipeline("slow", {
    params: z.object({ ms: z.number().int().min(0).max(2000).optional() }),
    steps: [a, b, c],
  }) as Pipeline<unknown>;
}

/** One step that runs until the run is cancelled (or 20 s pass). */
export function holdPipeline(): Pipeline<unknown> {
  const hold = step("hold", { retry: { attempts: 1 } }, async (_i, ctx) => {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 20_000);
      ctx.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
    ctx.signal.throwIfAborted();
    return "held";
  });
  return pipeline("hold", { steps: [hold] }) as Pipeline<unknown>;
}

/** Whether the `report` pipeline's broken step is fixed. */
export const world = { fixed: false };

/**
 * fetch (stores a PDF and an HTML artifact) → mail (a fan-out of three; item 1 fails twice
 * while broken) → publish (fails at once while broken).
 */
export function reportPipeline(): Pipeline<unknown> {
  const fetch = step("fetch", async (_i, ctx) => {
    ctx.log.info("fetched rows", { rows: 3 });
    await ctx.artifact("report.pdf", new TextEncoder().encode("%PDF-1.4 fake"), {
      contentType: "application/pdf",
    });
    await ctx.artifact("page.html", "<script>alert(1)</script>", { contentType: "text/html" });
    return ["ann", "bob", "cy"];
  });
  const mail = step("mail", {
    needs: { fetch },
    items: ({ fetch }) => fetch,
    retry: { attempts: 2, delay: "5ms" },
  }, (name, ctx) => {
    ctx.log.warn(`mailing ${name}`);
    if (!world.fixed && ctx.item.index === 1) throw new Error(`Mail server refused ${name}`);
    return `mailed ${name}`;
  });
  const publish = step("publish", { needs: { fetch } }, (_i, ctx) => {
    ctx.log.error("publishing");
    if (!world.fixed) throw new NonRetryableError("Publisher rejected the report");
    return "published";
  });
  return pipeline("report", { steps: [fetch, mail, publish] }) as Pipeline<unknown>;
}

/** Every test pipeline. */
export function testPipelines(): Pipeline<unknown>[] {
  return [demoPipeline(), slowPipeline(), holdPipeline(), reportPipeline()];
}

/** Checks answers against an OpenAPI document's response schemas. */
export class Contract {
  readonly document: OpenApi;
  readonly #ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true });
  readonly #compiled = new Map<string, ValidateFunction>();
  readonly #templates: { template: string; re: RegExp }[];

  constructor(document: OpenApi) {
    this.document = document;
    this.#ajv.addSchema({ $id: "kvflow-openapi", components: document.components });
    this.#templates = Object.keys(document.paths).map((template) => ({
      template,
      re: new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+")}$`),
    }));
  }

  /** The path template of a concrete path, if any route has it. */
  template(path: string): string | undefined {
    const bare = path.split("?")[0];
    return this.#templates.find((t) => t.re.test(bare))?.template;
  }

  /** Validates a JSON body against the schema of a component (`#/components/schemas/X`). */
  validate(ref: string, body: unknown): string | null {
    let fn = this.#compiled.get(ref);
    if (!fn) {
      fn = this.#ajv.compile({ $ref: `kvflow-openapi${ref}` });
      this.#compiled.set(ref, fn);
    }
    return fn(body) ? null : this.#ajv.errorsText(fn.errors);
  }

  /**
   * Throws unless the document lists this answer: its route and method (or, for a path no
   * route has, a generic 404/405) and its status, with a schema the body matches.
   */
  check(method: string, path: string, status: number, body: unknown): void {
    const template = this.template(path);
    let ref = "#/components/schemas/Error";
    if (template) {
      const op = this.document.paths[template][method.toLowerCase()];
      if (op) {
        const response = op.responses[String(status)];
        if (!response) throw new Error(`${method} ${template} answered ${status}, not documented`);
        const schema = response.content?.["application/json"]?.schema;
        if (!schema?.$ref) return; // a non-JSON answer (the document itself)
        ref = schema.$ref;
      } else if (status !== 405) {
        throw new Error(`${method} ${template} answered ${status}: no such operation`);
      }
    } else if (status !== 404 && status !== 405) {
      throw new Error(`${method} ${path} matches no route but answered ${status}`);
    }
    const error = this.validate(ref, body);
    if (error) {
      throw new Error(`${method} ${path} ${status}: body does not match ${ref}: ${error}`);
    }
  }
}

/** The parts of an OpenAPI document the tests read. */
export interface OpenApi {
  openapi: string;
  paths: Record<
    string,
    Record<string, {
      operationId: string;
      responses: Record<string, { content?: Record<string, { schema?: { $ref?: string } }> }>;
    }>
  >;
  components: { schemas: Record<string, unknown> };
}

/** Options of {@linkcode startService}. */
export interface StartOptions extends Partial<ServeOptions> {
  /** Start the engine's worker (default true). */
  worker?: boolean;
  /** Use this KV file instead of a new temp one. */
  kvPath?: string;
  /** The pipelines (default {@linkcode testPipelines}). */
  pipelines?: Pipeline<unknown>[];
}

/** A served engine and a client for it. */
export class Service implements AsyncDisposable {
  readonly engine: Engine;
  readonly server: Server;
  readonly url: string;
  readonly logs: string[];
  readonly #temp?: TempKv;
  #contract: Contract | undefined;

  constructor(engine: Engine, server: Server, logs: string[], temp?: TempKv) {
    this.engine = engine;
    this.server = server;
    this.url = `http://127.0.0.1:${server.addr.port}`;
    this.logs = logs;
    this.#temp = temp;
  }

  /** The service's OpenAPI document, as a checker of answers. */
  async contract(): Promise<Contract> {
    if (!this.#contract) {
      const response = await fetch(`${this.url}/openapi.json`);
      this.#contract = new Contract(await response.json());
    }
    return this.#contract;
  }

  /**
   * Sends a request; consumes the body and checks a JSON answer against the OpenAPI
   * document.
   */
  async request(
    method: string,
    path: string,
    options: { body?: unknown; token?: string; headers?: Record<string, string> } = {},
  ): Promise<{ status: number; headers: Headers; body: unknown; text: string }> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    let body: BodyInit | undefined;
    if (options.body !== undefined) {
      body = typeof options.body === "string" ? options.body : JSON.stringify(options.body);
      headers["content-type"] ??= "application/json";
    }
    const response = await fetch(this.url + path, { method, headers, body });
    const text = await response.text();
    const contentType = response.headers.get("content-type") ?? "";
    let parsed: unknown = text;
    if (contentType.startsWith("application/json")) {
      parsed = JSON.parse(text);
      (await this.contract()).check(method, path, response.status, parsed);
    }
    return { status: response.status, headers: response.headers, body: parsed, text };
  }

  /** GET, expecting `status`; returns the parsed body. */
  // deno-lint-ignore no-explicit-any
  async get(path: string, status = 200, token?: string): Promise<any> {
    const r = await this.request("GET", path, { token });
    if (r.status !== status) throw new Error(`GET ${path}: ${r.status} ${r.text}`);
    return r.body;
  }

  /** POST a JSON body, expecting `status`; returns the parsed body. */
  // deno-lint-ignore no-explicit-any
  async post(path: string, body: unknown, status: number, token?: string): Promise<any> {
    const r = await this.request("POST", path, { body, token });
    if (r.status !== status) throw new Error(`POST ${path}: ${r.status} ${r.text}`);
    return r.body;
  }

  /** Waits until the run's status is one of `statuses`. */
  async waitForStatus(id: string, statuses: string[], timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const run = await this.engine.store.getRun(id);
      if (run && statuses.includes(run.status)) return;
      if (Date.now() > deadline) {
        throw new Error(`Run ${id} is ${run?.status}, not ${statuses.join("|")}`);
      }
      await delay(10);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.server.shutdown();
    await this.engine.close(1000);
    await this.#temp?.[Symbol.asyncDispose]();
  }
}

/** Opens an engine on a temp KV file, starts its worker and serves it on 127.0.0.1:0. */
export async function startService(options: StartOptions = {}): Promise<Service> {
  const temp = options.kvPath ? undefined : await tempKv();
  const engine = await openEngine({
    path: options.kvPath ?? temp!.path,
    pipelines: options.pipelines ?? testPipelines(),
    pollMs: 50,
    // renewed every 500 ms: a cancelled run's driver notices within that
    leaseMs: 2000,
    onAlert: () => {},
  });
  if (options.worker ?? true) engine.worker.start();
  const logs: string[] = [];
  const { promise, resolve } = Promise.withResolvers<void>();
  const server = serve(engine, {
    port: 0,
    log: (line) => logs.push(line),
    ssePollMs: 50,
    ...options,
    onListen: () => resolve(),
  });
  await promise;
  return new Service(engine, server, logs, temp);
}
