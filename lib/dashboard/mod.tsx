/**
 * The dashboard: HTML pages a person reads at 3 AM — what ran, what failed and why, and
 * what to press. Server-rendered with `hono/jsx`, no build step and no file reads, so it
 * runs on Deno Deploy as it runs locally. The pages read the store directly; their buttons
 * call the JSON API (`/api/...`) with the token the person enters once, and a run page
 * follows the run through the API's SSE endpoint.
 *
 * Mount it on the service's app: `app.route("/", dashboard(engine, { token, readToken }))`.
 *
 * @module
 */
import { type Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { getCookie, setCookie } from "hono/cookie";
import type { Engine } from "../engine/engine.ts";
import { UsageError } from "../model/errors.ts";
import { runAlerts } from "../alerts/alert.ts";
import { deadlineMisses } from "../engine/deadlines.ts";
import { RUN_STATUSES, type RunRecord, type RunStatus, type TaskRecord } from "../model/records.ts";
import { CSS, JS } from "./assets.ts";
import { ASSET_VERSION, ErrorPage, type Frame, LoginPage } from "./layout.tsx";
import { DEFAULT_LIMIT, PipelinePage, RunsPage } from "./list_pages.tsx";
import { RunPage } from "./run_page.tsx";
import { EventPage, EVENTS_LIMIT, EventsPage } from "./events_page.tsx";
import { isEventName } from "../define/wait.ts";
import { type GridPageOptions, gridRuns, gridTasks } from "../store/grid.ts";
import { GRID_MAX_RUNS, GRID_RUNS } from "./grid.tsx";
import { logLine } from "../platform/log.ts";

/** Options of {@linkcode dashboard}. */
export interface DashboardOptions {
  /**
   * The API's bearer token for mutations. The dashboard never renders it: it only tells
   * the browser that the buttons need one, which the person types in once.
   */
  token?: string;
  /** When set, every page needs this token (or `token`): a sign-in form sets a session cookie. */
  readToken?: string;
}

const SESSION_COOKIE = "kvflow_session";

const PAGE_HEADERS: Record<string, string> = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

/**
 * Builds the dashboard's routes: `GET /` (runs, filters, failures, pipelines),
 * `GET /runs/:id`, `GET /pipelines/:name` (with its grid of runs by steps: `?runs=N`,
 * `before=`/`after=` a run id), `GET /events` (events and what each did),
 * `GET /events/:id`, `GET /assets/kvflow.css|js`, and — for a read token — `GET|POST
 * /login`, `POST /logout`. It adds no error handler or middleware that
 * would reach the routes of the app it is mounted on.
 *
 * @example Serve the dashboard alone on an in-memory engine
 * ```ts
 * import { openEngine, pipeline, step } from "../mod.ts";
 * import { dashboard } from "./mod.tsx";
 *
 * const hello = step("hello", () => "world");
 * await using engine = await openEngine({
 *   path: ":memory:",
 *   pipelines: [pipeline("demo", { steps: [hello] })],
 * });
 * const page = await dashboard(engine, {}).request("/");
 * console.log(page.status); // 200
 * ```
 *
 * @param engine the engine whose store the pages read
 * @param options the API token (never rendered) and an optional read token
 * @returns a Hono app with HTML routes only
 */
export function dashboard(engine: Engine, options: DashboardOptions = {}): Hono {
  const app = new Hono();
  const session = options.readToken ? sessionValue(options.readToken) : null;
  const frame = (c: Context, title: string): Frame => ({
    title,
    auth: !!options.token,
    session: session !== null && getCookie(c, SESSION_COOKIE) !== undefined,
  });

  /** Runs a page handler behind the read check, turning errors into HTML pages. */
  const page = (
    handler: (c: Context) => Promise<Response>,
  ) =>
  async (c: Context): Promise<Response> => {
    for (const [k, v] of Object.entries(PAGE_HEADERS)) c.header(k, v);
    if (session && !(await mayReadRequest(c.req.raw, options))) {
      const url = new URL(c.req.url);
      return c.html(<LoginPage next={url.pathname + url.search} refused={false} />, 401);
    }
    try {
      return await handler(c);
    } catch (error) {
      if (error instanceof UsageError) {
        const status = error.code === "not_found" ? 404 : 400;
        return c.html(
          <ErrorPage
            {...frame(c, status === 404 ? "Not found" : "Bad request")}
            status={status}
            message={error.message}
          />,
          status,
        );
      }
      logLine(
        "error",
        `kvflow: dashboard ${c.req.method} ${c.req.path}: ${
          error instanceof Error ? error.message : String(error)
        }`,
      );
      return c.html(
        <ErrorPage
          {...frame(c, "Internal error")}
          status={500}
          message="The page could not be built; the service log has the details."
        />,
        500,
      );
    }
  };

  app.get(
    "/",
    page(async (c) => {
      const pipeline = c.req.query("pipeline") || undefined;
      const status = c.req.query("status") || undefined;
      if (status !== undefined && !RUN_STATUSES.includes(status as RunStatus)) {
        throw new UsageError(
          `Unknown status '${status}': use one of ${RUN_STATUSES.join(", ")}`,
        );
      }
      const limitText = c.req.query("limit");
      const limit = limitText ? Number(limitText) : DEFAULT_LIMIT;
      if (!Number.isInteger(limit) || limit < 1 || limit > 200) {
        throw new UsageError(`Invalid limit '${limitText}': use an integer from 1 to 200`);
      }
      const filtered = pipeline !== undefined || status !== undefined;
      const [page, failed, pipelines, paused] = await Promise.all([
        engine.store.listRuns({
          pipeline,
          status: status as RunStatus | undefined,
          limit,
          cursor: c.req.query("cursor") || undefined,
        }),
        filtered ? { runs: [] } : engine.store.listRuns({ status: "failed", limit: 5 }),
        Promise.all(
          [...engine.pipelines.values()].map(async (p) => ({
            pipeline: p,
            last: (await engine.store.listRuns({ pipeline: p.name, limit: 1 })).runs[0] ?? null,
          })),
        ),
        engine.pausedPipelines(),
      ]);
      return c.html(
        <RunsPage
          {...frame(c, "Runs")}
          runs={page.runs}
          cursor={page.cursor}
          filter={{ pipeline, status: status as RunStatus | undefined, limit }}
          failed={failed.runs}
          pipelines={pipelines.map((p) => ({ ...p, paused: paused.get(p.pipeline.name) ?? null }))}
          now={engine.store.clock.now()}
        />,
      );
    }),
  );

  app.get(
    "/runs/:id",
    page(async (c) => {
      const run = await engine.store.requireRun(c.req.param("id") ?? "");
      const [steps, attempts, artifacts, alerts] = await Promise.all([
        engine.store.getSteps(run.id),
        engine.store.getAttempts(run.id),
        engine.store.getArtifacts(run.id),
        runAlerts(engine.kv, run.id),
      ]);
      const items = new Map<string, Map<number, TaskRecord>>();
      for (const [name, task] of steps) {
        if (task.items !== undefined) items.set(name, await engine.store.getItems(run.id, name));
      }
      const known = engine.pipelines.get(run.pipeline);
      // A run too large to record its graph shows the pipeline's, or its steps unlinked.
      const graph = run.graph ?? known?.graph ??
        Object.fromEntries([...steps.keys()].map((name) => [name, []]));
      return c.html(
        <RunPage
          {...frame(c, run.id)}
          run={run}
          graph={graph}
          steps={steps}
          items={items}
          attempts={attempts}
          artifacts={artifacts}
          alerts={alerts}
          known={known !== undefined}
          now={engine.store.clock.now()}
        />,
      );
    }),
  );

  app.get(
    "/events",
    page(async (c) => {
      const name: string | undefined = c.req.query("name") || undefined;
      if (name !== undefined && !isEventName(name as unknown)) {
        throw new UsageError(
          `Invalid event name ${
            JSON.stringify(name.slice(0, 120))
          }: use letters, digits, '-', '_', '.', ':' or '/'`,
        );
      }
      const limitText = c.req.query("limit");
      const limit = limitText ? Number(limitText) : EVENTS_LIMIT;
      if (!Number.isInteger(limit) || limit < 1 || limit > 200) {
        throw new UsageError(`Invalid limit '${limitText}': use an integer from 1 to 200`);
      }
      const cursor = c.req.query("cursor") || undefined;
      const page = await engine.listEvents({ name, limit, cursor }).catch((error) => {
        // KV refuses a cursor it did not make with a TypeError
        if (cursor !== undefined && error instanceof TypeError) {
          throw new UsageError(`Invalid cursor ${JSON.stringify(cursor.slice(0, 80))}`);
        }
        throw error;
      });
      return c.html(
        <EventsPage
          {...frame(c, "Events")}
          events={page.events}
          cursor={page.cursor}
          name={name}
          limit={limit}
        />,
      );
    }),
  );

  app.get(
    "/events/:id",
    page(async (c) => {
      const id = c.req.param("id") ?? "";
      const event = await engine.getEvent(id);
      if (!event) {
        throw new UsageError(`Unknown event ${JSON.stringify(id.slice(0, 120))}`, "not_found");
      }
      return c.html(<EventPage {...frame(c, event.id)} event={event} />);
    }),
  );

  app.get(
    "/pipelines/:name",
    page(async (c) => {
      const pipeline = engine.pipeline(c.req.param("name") ?? "");
      const gridPage = gridQuery(c);
      const [{ runs }, misses, grid] = await Promise.all([
        engine.store.listRuns({ pipeline: pipeline.name, limit: 10 }),
        deadlineMisses(engine.kv, pipeline.name, 10),
        gridRuns(engine.kv, pipeline.name, gridPage),
      ]);
      const steps = pipeline.steps.map((s) => s.name);
      const now = engine.store.clock.now();
      return c.html(
        <PipelinePage
          {...frame(c, pipeline.name)}
          pipeline={pipeline}
          runs={runs satisfies RunRecord[]}
          misses={misses}
          now={now}
          paused={(await engine.pausedPipelines()).get(pipeline.name) ?? null}
          grid={{
            ...grid,
            pipeline: pipeline.name,
            steps,
            tasks: await gridTasks(engine.kv, grid.runs, steps),
            size: gridPage.runs,
            now,
          }}
        />,
      );
    }),
  );

  const assets: Record<string, [string, string]> = {
    "kvflow.css": [CSS, "text/css; charset=utf-8"],
    "kvflow.js": [JS, "text/javascript; charset=utf-8"],
  };
  app.get("/assets/:file", (c) => {
    const asset = assets[c.req.param("file")];
    if (!asset) return c.text("No such asset", 404);
    const current = c.req.query("v") === ASSET_VERSION;
    return c.body(asset[0], 200, {
      "content-type": asset[1],
      "x-content-type-options": "nosniff",
      "cache-control": current ? "public, max-age=31536000, immutable" : "no-cache",
    });
  });

  if (options.readToken) {
    app.get("/login", (c) => {
      for (const [k, v] of Object.entries(PAGE_HEADERS)) c.header(k, v);
      return c.html(<LoginPage next={safeNext(c.req.query("next"))} refused={false} />);
    });
    app.post(
      "/login",
      bodyLimit({ maxSize: 4096, onError: (c) => c.text("Sign-in form too large", 413) }),
      async (c) => {
        for (const [k, v] of Object.entries(PAGE_HEADERS)) c.header(k, v);
        const form = await c.req.parseBody().catch(() => ({} as Record<string, unknown>));
        const given = typeof form.token === "string" ? form.token : "";
        const next = safeNext(typeof form.next === "string" ? form.next : undefined);
        if (!tokenMatches(given, options)) {
          return c.html(<LoginPage next={next} refused />, 401);
        }
        setCookie(c, SESSION_COOKIE, await session!, {
          path: "/",
          httpOnly: true,
          sameSite: "Strict",
          secure: new URL(c.req.url).protocol === "https:",
        });
        return c.redirect(next, 303);
      },
    );
    app.post("/logout", (c) => {
      setCookie(c, SESSION_COOKIE, "", {
        path: "/",
        maxAge: 0,
        httpOnly: true,
        sameSite: "Strict",
      });
      return c.redirect("/login", 303);
    });
  }
  return app;
}

/** The grid's page from `?runs=&before=&after=`, checked. */
function gridQuery(c: Context): GridPageOptions {
  const runsText = c.req.query("runs");
  const runs = runsText ? Number(runsText) : GRID_RUNS;
  if (!Number.isInteger(runs) || runs < 1 || runs > GRID_MAX_RUNS) {
    throw new UsageError(
      `Invalid runs ${
        JSON.stringify(runsText?.slice(0, 40))
      }: use an integer from 1 to ${GRID_MAX_RUNS}`,
    );
  }
  return {
    runs,
    before: c.req.query("before") || undefined,
    after: c.req.query("after") || undefined,
  };
}

/**
 * Whether a request may read, under a read token: a bearer header with the read token or
 * the API token, or the dashboard's session cookie. Always true without a read token.
 * The JSON API may use it so the dashboard's `EventSource` (which sends cookies, never
 * headers) can follow a run.
 *
 * @param request the request
 * @param options the tokens the dashboard was built with
 * @returns whether the request may read
 */
export async function mayReadRequest(
  request: Request,
  options: DashboardOptions,
): Promise<boolean> {
  if (!options.readToken) return true;
  const header = request.headers.get("authorization") ?? "";
  if (header.startsWith("Bearer ") && tokenMatches(header.slice(7), options)) return true;
  const cookie = (request.headers.get("cookie") ?? "").split(/;\s*/)
    .find((part) => part.startsWith(`${SESSION_COOKIE}=`))?.slice(SESSION_COOKIE.length + 1);
  return cookie !== undefined && constantTimeEqual(cookie, await sessionValue(options.readToken));
}

function tokenMatches(given: string, options: DashboardOptions): boolean {
  // Both comparisons always run, so timing tells nothing about which token was close.
  const read = options.readToken !== undefined && constantTimeEqual(given, options.readToken);
  const write = options.token !== undefined && constantTimeEqual(given, options.token);
  return given.length > 0 && (read || write);
}

/** The session cookie's value: derived from the read token, so the cookie never holds it. */
async function sessionValue(readToken: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(readToken),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign(
    "HMAC",
    key,
    new TextEncoder().encode("kvflow dashboard session v1"),
  );
  return Array.from(new Uint8Array(mac), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Only a local path: never a redirect to another site. */
function safeNext(next: string | undefined): string {
  return next && next.startsWith("/") && !next.startsWith("//") && !next.includes("\\")
    ? next
    : "/";
}

function constantTimeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}
