/**
 * Routes of events: send one (idempotent with an id), list them newest first, read one.
 * Each event comes with what it did: the runs it woke, started, or did not match.
 *
 * Where KV has no queues (Deno Deploy), nothing runs between requests, so a send drives
 * the runs it woke and started in its own request, within a time budget, before it answers.
 *
 * @module
 */
import type { Engine } from "../../engine/engine.ts";
import type { SendResult } from "../../store/events.ts";
import { KvUnavailableError, UsageError } from "../../model/errors.ts";
import {
  ErrorResponseSchema,
  EventListQuerySchema,
  EventPageSchema,
  EventPathSchema,
  EventSchema,
  SendRequestSchema,
  SendResultSchema,
} from "../schemas.ts";
import { type ErrorStatus, HttpError, quote } from "../errors.ts";
import { canonicalJson, toIssues } from "../input.ts";
import { eventJson } from "../event_view.ts";
import { eventUrl, runJson, runUrl } from "../run_view.ts";
import { type ApiContext, type ApiRoute, json, route } from "./route.ts";

/** How long a send may drive the runs it woke where KV has no queues, by default: 25 s. */
export const DEFAULT_INLINE_BUDGET_MS = 25_000;

const SEND_STATUS: Record<string, ErrorStatus> = {
  invalid_event: 400,
  too_large: 413,
  invalid_params: 422,
  conflict: 409,
};

/**
 * The event routes.
 *
 * @param ctx the engine and the service's parts the routes serve
 * @returns the routes, in the order the document lists them
 */
export function eventRoutes(ctx: ApiContext): ApiRoute[] {
  const { engine } = ctx;
  return [
    route({
      method: "POST",
      path: "/api/events",
      operationId: "sendEvent",
      summary: "Send an event: it wakes the waits it matches and starts the runs it triggers",
      description:
        "The event is stored first, so a wait that starts later still gets it. With an `id`, " +
        "a repeated request stores nothing and wakes nobody: it returns what the first one " +
        "did (200, `Idempotent-Replayed: true`), or 422 when the id was sent with another " +
        "name or data. Where KV has no queues (Deno Deploy), the runs it woke and started " +
        "are driven in this request before it answers.",
      tag: "events",
      access: "write",
      body: SendRequestSchema,
      responses: {
        201: { description: "Stored", schema: SendResultSchema },
        200: {
          description: "What an earlier request with this id did",
          schema: SendResultSchema,
        },
        409: { description: "The waits kept changing: send it again", schema: ErrorResponseSchema },
        413: {
          description: "Body over the service's limit, or data over 32 KiB as JSON (`too_large`)",
          schema: ErrorResponseSchema,
        },
        422: {
          description: "A triggered pipeline refuses the payload as params (`invalid_params`), " +
            "or the id was sent with another name or data (`idempotency_key_reused`)",
          schema: ErrorResponseSchema,
        },
      },
    }, async (_c, { body, rawBody }) => {
      // The data as sent, not the body schema's copy (which may drop a `__proto__` key).
      const sent = (rawBody as { data?: unknown }).data;
      let result: SendResult;
      try {
        result = await engine.send(body.name, sent, { id: body.id, source: "http" });
      } catch (error) {
        throw sendError(error);
      }
      const location = eventUrl(result.event.id);
      if (result.duplicate) {
        const first = result.event;
        if (first.name !== body.name || canonicalJson(first.data) !== canonicalJson(sent ?? null)) {
          throw new HttpError(
            422,
            "idempotency_key_reused",
            `Event id ${quote(first.id)} was sent before with another name or data`,
          );
        }
        return json(await replay(engine, first.id, result), 200, {
          location,
          "idempotent-replayed": "true",
        });
      }
      ctx.sent(result);
      if (!engine.store.queues) {
        const ids = [...result.woke.map((w) => w.runId), ...result.started.map((r) => r.id)];
        await continueInline(engine, [...new Set(ids)], ctx.inlineBudgetMs);
      }
      return json(await answer(engine, result), 201, { location });
    }),

    route({
      method: "GET",
      path: "/api/events",
      operationId: "listEvents",
      summary: "Events, newest first, with the runs each woke, started or did not match",
      tag: "events",
      access: "read",
      query: EventListQuerySchema,
      responses: { 200: { description: "A page of events", schema: EventPageSchema } },
    }, async (_c, { query }) => {
      const page = await engine.listEvents(query).catch((error) => {
        // KV refuses a cursor it did not make with a TypeError
        if (query.cursor !== undefined && !(error instanceof KvUnavailableError)) {
          throw new HttpError(400, "invalid_query", `Invalid cursor ${quote(query.cursor)}`, {
            issues: [{ path: ["cursor"], message: "Not a cursor of this list" }],
          });
        }
        throw error;
      });
      const events = page.events.map((e) => eventJson(e));
      return json(page.cursor ? { events, cursor: page.cursor } : { events });
    }),

    route({
      method: "GET",
      path: "/api/events/:id",
      operationId: "getEvent",
      summary: "One event, with the runs it woke, started or did not match",
      tag: "events",
      access: "read",
      params: EventPathSchema,
      responses: { 200: { description: "The event", schema: EventSchema } },
    }, async (_c, { params }) => {
      const event = await engine.getEvent(params.id);
      if (!event) throw new HttpError(404, "not_found", `Unknown event ${quote(params.id)}`);
      return json(eventJson(event));
    }),
  ];
}

/** The engine's refusal of a send as the API answers it, with its issues. */
function sendError(error: unknown): unknown {
  if (!(error instanceof UsageError)) return error;
  const status = SEND_STATUS[error.code];
  if (status === undefined) return error;
  return new HttpError(status, error.code, error.message, {
    issues: error.issues ? toIssues(error.issues) : undefined,
  });
}

/** A new send's answer: the event with its effects, and its started runs as they are now. */
async function answer(engine: Engine, result: SendResult) {
  const [event, ...runs] = await Promise.all([
    engine.getEvent(result.event.id),
    ...result.started.map((r) => engine.store.getRun(r.id)),
  ]);
  return {
    event: eventJson(event ?? result.event),
    duplicate: false,
    woke: result.woke.map((w) => ({ ...w, url: runUrl(w.runId) })),
    started: result.started.map((r, i) => runJson(runs[i] ?? r)),
  };
}

/** A repeated send's answer: what the first send did, read back from its effects. */
async function replay(engine: Engine, id: string, result: SendResult) {
  const event = await engine.getEvent(id) ?? { ...result.event, effects: [] };
  const runs = await Promise.all(event.started.map((runId) => engine.store.getRun(runId)));
  return {
    event: eventJson(event),
    duplicate: true,
    woke: event.effects.filter((e) => e.kind === "woke").map((e) => ({
      runId: e.runId,
      step: e.step,
      item: e.item,
      url: runUrl(e.runId),
    })),
    started: runs.filter((r) => r !== null).map((r) => runJson(r)),
  };
}

/**
 * Drives runs in this request until each leaves this process's hands (it ended, or parks
 * again) or the budget runs out: where KV has no queues nothing else would pick them up
 * before the next heartbeat. A run the send's own wake-up already holds is waited for.
 */
async function continueInline(engine: Engine, runIds: string[], budgetMs: number): Promise<void> {
  if (runIds.length === 0) return;
  const worker = engine.worker;
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.all(runIds.map(async (id) => {
      try {
        if (await worker.execute(id) === "busy") await worker.idle();
      } catch {
        // the event is stored and the run due: the next heartbeat drives it
      }
    })),
    new Promise((resolve) => (timer = setTimeout(resolve, budgetMs))),
  ]).finally(() => clearTimeout(timer));
}
