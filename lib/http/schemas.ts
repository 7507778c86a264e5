/**
 * The zod schemas of the HTTP API: what each route accepts (path, query, headers, body)
 * and what it answers. The routes validate with them and the OpenAPI document is generated
 * from them, so the two cannot drift apart.
 *
 * Response schemas are registered in {@linkcode responseSchemas} and request bodies in
 * {@linkcode requestSchemas}, each under the name it has in the document's components.
 *
 * @module
 */
import { z } from "zod";
import type { RunStatus, StepStatus } from "../model/records.ts";
import type { Trigger } from "../define/context.ts";

/** Schemas of responses, by component name. */
export const responseSchemas: z.core.$ZodRegistry<{ id: string }> = z.registry<{ id: string }>();
/** Schemas of request bodies, by component name. */
export const requestSchemas: z.core.$ZodRegistry<{ id: string }> = z.registry<{ id: string }>();

function response<T extends z.ZodType>(id: string, schema: T): T {
  responseSchemas.add(schema, { id });
  return schema;
}

function request<T extends z.ZodType>(id: string, schema: T): T {
  requestSchemas.add(schema, { id });
  return schema;
}

const time = z.int().min(0).describe("Milliseconds since the Unix epoch");
const duration = z.int().min(0).describe("Milliseconds");

/** Run statuses. */
export const RunStatusSchema = response(
  "RunStatus",
  z.enum(["queued", "running", "waiting", "paused", "succeeded", "failed", "cancelled"]),
);
/** Step and fan-out item statuses. */
export const StepStatusSchema = response(
  "StepStatus",
  z.enum(["pending", "running", "retrying", "waiting", "succeeded", "failed", "skipped"]),
);
/** How a run was started. */
export const TriggerSchema = z.enum(["cli", "http", "schedule", "backfill", "event", "child"]);

// The enums above must list exactly kvflow's statuses and triggers.
true satisfies (z.infer<typeof RunStatusSchema> extends RunStatus ? true : false);
true satisfies (RunStatus extends z.infer<typeof RunStatusSchema> ? true : false);
true satisfies (z.infer<typeof StepStatusSchema> extends StepStatus ? true : false);
true satisfies (StepStatus extends z.infer<typeof StepStatusSchema> ? true : false);
true satisfies (Trigger extends z.infer<typeof TriggerSchema> ? true : false);

/** One problem with an input, as zod found it. */
export const IssueSchema = z.object({
  path: z.array(z.union([z.string(), z.int()])).describe("Where in the input"),
  message: z.string(),
});

/** Every error answer: `{ "error": { "code", "message", "issues"? } }`. */
export const ErrorResponseSchema = response(
  "Error",
  z.object({
    error: z.object({
      code: z.string().describe("Machine-readable, e.g. not_found, conflict, invalid_params"),
      message: z.string().describe("One line for a person"),
      issues: z.array(IssueSchema).optional(),
    }),
  }),
);

/** A stored error. */
export const ErrorInfoSchema = response(
  "ErrorInfo",
  z.object({
    name: z.string(),
    message: z.string(),
    stack: z.string().optional(),
    retryable: z.boolean(),
  }),
);

/** What a waiting step waits for, and until when. */
export const WaitSchema = response(
  "Wait",
  z.object({
    kind: z.enum(["sleep", "event", "child"]),
    step: z.string(),
    item: z.int().min(-1).describe("Fan-out item index, or -1 for the step itself"),
    since: time.describe("When the wait began"),
    until: time.describe("When the sleep ends or the timeout passes"),
    events: z.array(z.string()).optional().describe("The awaited event names (kind event)"),
    field: z.string().optional().describe(
      "The payload field that must equal `value`; empty for any event of the names",
    ),
    value: z.string().optional().describe("The correlation value the field must equal"),
    after: time.optional().describe("Events sent since then count"),
    child: z.string().optional().describe("The child run (kind child)"),
    childUrl: z.string().optional().describe("The child run in the API"),
  }),
);

/** A pause of a run or a pipeline. */
export const PauseSchema = response(
  "Pause",
  z.object({
    by: z.enum(["run", "pipeline"]).describe(
      "`run`: the run was paused; `pipeline`: its pipeline was, before the run started",
    ),
    at: time.describe("When the pause was committed"),
    reason: z.string(),
  }),
);

/** Why a queued run does not start yet (flow control). */
export const HeldSchema = response(
  "Held",
  z.object({
    by: z.enum(["limit", "throttle", "debounce"]).describe(
      "`limit`: every slot of its key is taken; `throttle`: its key used its starts for " +
        "this period; `debounce`: its burst of triggers is not quiet yet",
    ),
    key: z.string().describe("The limit, throttle or debounce key"),
    since: time.describe("When it was held back"),
    until: time.nullable().describe(
      "When it may start at the earliest (throttle, debounce); null for a limit (when a slot frees)",
    ),
    reason: z.string().describe("For people, such as \"2 of 2 slots of 'acme' taken\""),
  }),
);

/** The limit, throttle and debounce a run counts against, keys computed from its params. */
export const RunFlowSchema = response(
  "RunFlow",
  z.object({
    limit: z.object({ scope: z.string(), key: z.string(), max: z.int().min(1) }).optional()
      .describe("Concurrency limit: at most `max` active runs per scope and key"),
    throttle: z.object({
      scope: z.string(),
      key: z.string(),
      max: z.int().min(1),
      perMs: duration.describe("The period"),
    }).optional().describe("At most `max` run starts per period per scope and key"),
    debounce: z.object({ key: z.string() }).optional().describe(
      "The key its triggers were gathered by",
    ),
  }),
);

const LimitConfigSchema = z.object({
  scope: z.string().describe("Limits of the same scope share their slots"),
  max: z.int().min(1).describe("At once per key"),
  keyed: z.boolean().describe("Whether it counts per key (false: one key for all)"),
});

const ThrottleConfigSchema = z.object({
  scope: z.string().describe("Throttles of the same scope share their budget"),
  max: z.int().min(1).describe("Starts per period per key"),
  per: z.string().describe("The period, such as 1s"),
  perMs: duration,
  keyed: z.boolean().describe("Whether it counts per key (false: one key for all)"),
});

/** A pipeline's flow control, as its module declares it. */
export const PipelineFlowSchema = response(
  "PipelineFlow",
  z.object({
    limit: LimitConfigSchema.nullable().describe("Concurrency limit of its runs"),
    throttle: ThrottleConfigSchema.nullable().describe("Throttle of its run starts"),
    debounce: z.object({
      quiet: z.string().describe("The quiet period, such as 30s"),
      quietMs: duration,
      maxWait: z.string().describe("The longest a burst holds its run back"),
      maxWaitMs: duration,
      keyed: z.boolean(),
    }).nullable().describe("Debounce of the runs HTTP and events start"),
    priority: z.int().min(0).max(10).describe("The default priority of its runs"),
    steps: z.array(z.object({
      step: z.string(),
      limit: LimitConfigSchema.nullable(),
      throttle: ThrottleConfigSchema.nullable(),
    })).describe("Its steps that have a limit or a throttle, in step order"),
  }),
);

/** A link to the step (and item) of a run, e.g. a child run's parent. */
export const RunLinkSchema = response(
  "RunLink",
  z.object({
    runId: z.string(),
    step: z.string(),
    item: z.int().min(-1).describe("Fan-out item index, or -1 for the step itself"),
    url: z.string().describe("The run in the API"),
  }),
);

/** A run, as lists and the run page show it. */
export const RunSchema = response(
  "Run",
  z.object({
    id: z.string(),
    pipeline: z.string(),
    version: z.string().describe("Hash of the step graph the run was created with"),
    graph: z.record(z.string(), z.array(z.string())).nullable().describe(
      "Each step with the steps it needs; null when too large to record",
    ),
    params: z.record(z.string(), z.unknown()),
    logicalDate: z.iso.date(),
    trigger: TriggerSchema,
    status: RunStatusSchema,
    createdAt: time,
    startedAt: time.nullable(),
    endedAt: time.nullable(),
    durationMs: duration.nullable().describe("From first start to end (or to now while active)"),
    dueAt: time.nullable().describe("When a worker will next look at the run"),
    error: z.object({ step: z.string().nullable(), message: z.string() }).nullable(),
    failures: z.int().min(0),
    takeovers: z.int().min(0),
    parent: RunLinkSchema.nullable().describe(
      "For a child run: the parent run and the step (and item) that started it",
    ),
    event: z.string().nullable().describe("For a run an event started: that event's id"),
    eventUrl: z.string().nullable().describe("That event in the API"),
    waitingFor: WaitSchema.nullable().describe(
      "While the run waits for a sleep, an event or a child run: the earliest wait",
    ),
    paused: PauseSchema.nullable().describe(
      "While paused (or, with status `running`, while its worker finishes the attempts in " +
        "flight before it lets go): who paused it, when and why",
    ),
    priority: z.int().min(0).max(10).describe(
      "0 to 10: among due runs, higher is claimed first (age lifts priority)",
    ),
    held: HeldSchema.nullable().describe(
      "While queued and held back by a limit, a throttle or a debounce: by what and why",
    ),
    flow: RunFlowSchema.nullable().describe(
      "The limit, throttle and debounce it counts against; null when none",
    ),
    traceId: z.string().nullable().describe(
      "Its OpenTelemetry trace id (32 hex digits); null when it was never traced",
    ),
    traceUrl: z.string().nullable().describe(
      "Its trace in the tracing backend, from KVFLOW_TRACE_URL with {traceId} replaced; " +
        "null when that is not set or the run has no trace",
    ),
  }),
);

/** The answer to a trigger of a pipeline with a debounce: the run it began or joined. */
export const DebouncedRunSchema = response(
  "DebouncedRun",
  RunSchema.extend({
    debounced: z.literal(true).describe(
      "The run is held until its burst of triggers (same pipeline and debounce key) is quiet",
    ),
    joined: z.boolean().describe(
      "Whether the request joined a burst's queued run (its params replaced by this " +
        "request's); false when it began a burst with a new run",
    ),
  }),
);

/** A page of runs, newest first. */
export const RunPageSchema = response(
  "RunPage",
  z.object({
    runs: z.array(RunSchema),
    cursor: z.string().optional().describe(
      "Pass as `cursor` for the next page; absent on the last",
    ),
  }),
);

/** A step of a pipeline definition. */
export const PipelineStepSchema = z.object({
  name: z.string(),
  needs: z.array(z.string()),
  fanOut: z.boolean(),
});

/** A pipeline. */
export const PipelineSchema = response(
  "Pipeline",
  z.object({
    name: z.string(),
    description: z.string().nullable(),
    version: z.string(),
    steps: z.array(PipelineStepSchema),
    params: z.record(z.string(), z.unknown()).nullable().describe(
      "JSON Schema of the params; null when the pipeline takes none",
    ),
    schedule: z.object({
      cron: z.string(),
      timezone: z.string().describe("IANA time zone the cron expression is read in"),
      catchup: z.enum(["none", "latest", "all"]),
      catchupLimit: z.int().min(0),
      overlap: z.enum(["skip", "queue", "allow"]),
      maxActive: z.int().min(1),
      deadline: z.string().nullable().describe(
        "When each tick's run must have succeeded: a time of day in the schedule's zone " +
          '("07:00") or a duration after the tick ("4h"); null when none',
      ),
      lastTick: z.iso.datetime().nullable().describe(
        "The last tick the engine handled (ran, skipped or caught up); null before its first look",
      ),
      nextTicks: z.array(z.iso.datetime()).describe("The next five ticks, UTC"),
    }).nullable().describe("Null for a pipeline without a schedule"),
    retention: z.object({
      succeeded: z.string(),
      failed: z.string(),
      cancelled: z.string(),
    }).describe(
      "How long ended runs are kept after they end, by status (such as 30d), before " +
        "workers prune them with everything they own",
    ),
    flow: PipelineFlowSchema.describe("Its limits, throttles, debounce and priority"),
    paused: PauseSchema.nullable().describe(
      "While paused: triggers are accepted, but its new runs wait (status `paused`) and its " +
        "schedule does not advance until it is unpaused",
    ),
  }),
);

/** The pipelines. */
export const PipelineListSchema = response("PipelineList", z.array(PipelineSchema));

/** A pipeline with its latest runs. */
export const PipelineDetailSchema = response(
  "PipelineDetail",
  PipelineSchema.extend({ lastRuns: z.array(RunSchema).describe("Newest first, at most 10") }),
);

/** One line logged by a step. */
export const LogLineSchema = z.object({
  at: time,
  level: z.enum(["debug", "info", "warn", "error"]),
  message: z.string(),
  fields: z.record(z.string(), z.unknown()).optional(),
});

/** One finished attempt of a step or item. */
export const AttemptSchema = response(
  "Attempt",
  z.object({
    n: z.int().min(1).describe("Position in the task's whole history"),
    attempt: z.int().min(1).describe("`ctx.attempt`: from 1 after each resume or rerun"),
    status: z.enum(["succeeded", "failed", "crashed", "interrupted"]),
    startedAt: time,
    endedAt: time,
    durationMs: duration,
    error: ErrorInfoSchema.nullable(),
    logs: z.array(LogLineSchema),
  }),
);

const taskFields = {
  status: StepStatusSchema,
  attempt: z.int().min(0).describe("Attempts started since the last resume or rerun"),
  startedAt: time.nullable(),
  endedAt: time.nullable(),
  durationMs: duration.nullable(),
  nextAt: time.nullable().describe("When a retry is due"),
  error: ErrorInfoSchema.nullable(),
  attempts: z.array(AttemptSchema),
  wait: WaitSchema.nullable().describe("While it waits: what for, and until when"),
  child: z.string().nullable().describe("The child run it started, if it invokes a pipeline"),
  timedOut: z.boolean().describe("Skipped because a wait timed out (`onTimeout: skip`)"),
};

/** One item of a fan-out step. */
export const ItemSchema = response("Item", z.object({ index: z.int().min(0), ...taskFields }));

/** One step of a run. */
export const StepSchema = response(
  "Step",
  z.object({
    name: z.string(),
    needs: z.array(z.string()),
    fanOut: z.boolean(),
    generation: z.int().min(0).describe("Reruns of this step"),
    ...taskFields,
    itemCount: z.int().min(0).nullable().describe("Items of a fan-out step, once known"),
    items: z.array(ItemSchema).nullable().describe("Null for a step that is not a fan-out"),
  }),
);

/** An artifact's metadata. */
export const ArtifactSchema = response(
  "Artifact",
  z.object({
    name: z.string(),
    contentType: z.string(),
    size: z.int().min(0),
    step: z.string(),
    item: z.int().describe("Fan-out item that stored it, or -1"),
    createdAt: time,
    url: z.string().describe("Where to download it"),
  }),
);

/** An alert stored with a run. */
export const AlertSchema = response(
  "Alert",
  z.object({
    seq: z.int().min(1),
    at: time,
    step: z.string().nullable(),
    attempts: z.int().min(0),
    message: z.string(),
    logicalDate: z.string(),
    webhook: z.enum(["none", "pending", "sent", "failed"]),
    sentAt: time.optional(),
    webhookError: z.string().optional(),
  }),
);

/** Everything about one run. */
export const RunDetailSchema = response(
  "RunDetail",
  RunSchema.extend({
    currentVersion: z.string().nullable().describe(
      "The pipeline's version in this service (differs from `version` after a graph change); null if unknown here",
    ),
    steps: z.array(StepSchema),
    artifacts: z.array(ArtifactSchema),
    alerts: z.array(AlertSchema),
    children: z.array(RunLinkSchema.extend({
      child: z.string().describe("The child run's id"),
      childUrl: z.string().describe("The child run in the API"),
    })).describe("Child runs its steps (and items) started; `runId` is this run"),
  }),
);

/** What an event did to a run. */
export const EventEffectSchema = response(
  "EventEffect",
  z.object({
    kind: z.enum(["woke", "started", "joined", "mismatch"]).describe(
      "Woke a waiting step, started the run, joined a debounced burst's queued run, or did not pass the wait's payload schema",
    ),
    runId: z.string(),
    step: z.string().nullable().describe("The waiting step; null for a started run"),
    item: z.int().min(-1),
    at: time,
    message: z.string().optional().describe("For a mismatch: why"),
    url: z.string().describe("The run in the API"),
  }),
);

/** A stored event, with what it did. */
export const EventSchema = response(
  "Event",
  z.object({
    id: z.string(),
    name: z.string(),
    data: z.unknown().describe("Its payload"),
    at: time.describe("When it was stored"),
    source: z.enum(["code", "cli", "http"]),
    started: z.array(z.string()).describe("Runs it started"),
    effects: z.array(EventEffectSchema).describe("Runs it woke, started or did not match"),
    url: z.string(),
  }),
);

/** A page of events, newest first. */
export const EventPageSchema = response(
  "EventPage",
  z.object({
    events: z.array(EventSchema),
    cursor: z.string().optional().describe(
      "Pass as `cursor` for the next page; absent on the last",
    ),
  }),
);

/** What a send did. */
export const SendResultSchema = response(
  "SendResult",
  z.object({
    event: EventSchema,
    duplicate: z.boolean().describe("The id had been sent before: nothing was stored"),
    woke: z.array(RunLinkSchema).describe("The waits it ended"),
    started: z.array(RunSchema).describe("The runs it started"),
  }),
);

/** The health answer. */
export const HealthSchema = response(
  "Health",
  z.object({
    ok: z.boolean(),
    kv: z.object({ ok: z.boolean(), latencyMs: z.number().min(0).nullable() }),
    worker: z.object({
      serving: z.boolean(),
      lastSweepAt: time.nullable(),
      activeRuns: z.int().min(0),
    }),
  }),
);

/** The `step` event of the run event stream. */
export const StepEventSchema = response(
  "StepEvent",
  z.object({
    step: z.string(),
    item: z.int().min(-1).describe("Fan-out item index, or -1 for the step itself"),
    status: StepStatusSchema,
    attempt: z.int().min(0),
    error: ErrorInfoSchema.optional(),
    startedAt: time.optional(),
    endedAt: time.optional(),
    nextAt: time.optional(),
    items: z.int().min(0).optional(),
  }),
);

// The store's rule for run ids (`isRunId`), as a pattern the document can show.
const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$/;
// deno-lint-ignore no-control-regex
const NAME = /^[^\u0000-\u001f/\\]{1,200}$/;

/** Path of run routes. */
export const RunPathSchema = z.object({
  id: z.string().regex(RUN_ID).describe("Run id"),
});

/** Path of pipeline routes. */
export const PipelinePathSchema = z.object({
  name: z.string().regex(NAME).describe("Pipeline name"),
});

/** Path of the artifact route. */
export const ArtifactPathSchema = z.object({
  id: z.string().regex(RUN_ID).describe("Run id"),
  name: z.string().regex(NAME).describe("Artifact name"),
});

/** Query of the run list. */
export const RunListQuerySchema = z.object({
  pipeline: z.string().regex(NAME).optional().describe("Only this pipeline's runs"),
  status: RunStatusSchema.optional().describe("Only runs with this status"),
  limit: z.coerce.number().int().min(1).max(1000).default(20).describe("Page size"),
  cursor: z.string().max(2048).regex(/^[A-Za-z0-9_=+/-]+$/).optional().describe(
    "The `cursor` of the previous page (with the same filters)",
  ),
});

// The engine's rules for event names and ids (`isEventName`, `checkEventId`).
const EVENT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$/;
const EVENT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$/;

/** Path of the event route. */
export const EventPathSchema = z.object({
  id: z.string().regex(EVENT_ID).describe("Event id"),
});

/** Query of the event list. */
export const EventListQuerySchema = z.object({
  name: z.string().regex(EVENT_NAME).optional().describe("Only events of this name"),
  limit: z.coerce.number().int().min(1).max(500).default(20).describe("Page size"),
  cursor: z.string().max(2048).regex(/^[A-Za-z0-9_=+/-]+$/).optional().describe(
    "The `cursor` of the previous page (with the same name)",
  ),
});

/** Body of `POST /api/events`. */
export const SendRequestSchema = request(
  "SendRequest",
  z.strictObject({
    name: z.string().regex(
      EVENT_NAME,
      "Use 1 to 100 letters, digits, '-', '_', '.', ':' or '/', starting with a letter or digit",
    ).describe("The event's name, e.g. `order.approved`"),
    data: z.unknown().optional().describe("Its payload: JSON, at most 32 KiB (413 beyond)"),
    id: z.string().regex(
      EVENT_ID,
      "Use 1 to 100 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
    ).optional().describe(
      "Makes the send idempotent: a repeat stores nothing and wakes nobody (200, " +
        "`Idempotent-Replayed: true`)",
    ),
  }),
);

/** Headers of the trigger route. */
export const TriggerHeadersSchema = z.object({
  "idempotency-key": z.string().regex(/^[\x21-\x7e]{1,255}$/).optional().describe(
    "A retry with the same key (per pipeline) returns the run the first request created",
  ),
});

/** Body of `POST /api/pipelines/{name}/runs`. */
export const TriggerRequestSchema = request(
  "TriggerRequest",
  z.strictObject({
    params: z.record(z.string(), z.unknown()).optional().describe(
      "Validated against the pipeline's params schema (422 when they fail it)",
    ),
    logicalDate: z.iso.date().optional().describe("Default: today (UTC)"),
    priority: z.number().optional().describe(
      "An integer from 0 to 10 (422 otherwise): when workers are saturated, runs of higher priority are " +
        "claimed first, and age lifts priority. Default: the pipeline's",
    ),
  }),
);

/** Body of `POST /api/runs/{id}/resume`. */
export const ResumeRequestSchema = request(
  "ResumeRequest",
  z.strictObject({
    force: z.boolean().optional().describe("Continue even though the step graph changed"),
  }),
);

/** Body of `POST /api/runs/{id}/rerun`. */
export const RerunRequestSchema = request(
  "RerunRequest",
  z.strictObject({
    from: z.string().min(1).max(200).describe("The step to run again, with its dependents"),
    force: z.boolean().optional().describe("Continue even though the step graph changed"),
  }),
);

/** Body of `POST /api/runs/{id}/cancel`. */
export const CancelRequestSchema = request(
  "CancelRequest",
  z.strictObject({
    reason: z.string().min(1).max(500).optional().describe("Stored as the run's error"),
  }),
);

/** A run as the API shows it. */
export type RunJson = z.infer<typeof RunSchema>;
/** One run with its steps, attempts, artifacts and alerts. */
export type RunDetail = z.infer<typeof RunDetailSchema>;
/** One step of a {@linkcode RunDetail}. */
export type StepJson = z.infer<typeof StepSchema>;
/** Body of the pause routes. */
export const PauseRequestSchema = request(
  "PauseRequest",
  z.strictObject({
    reason: z.string().min(1).max(500).optional().describe(
      "Why; shown with the paused run or pipeline",
    ),
  }),
);

/** A pipeline as the API shows it. */
export type PipelineJson = z.infer<typeof PipelineSchema>;
/** The data of a `step` event. */
export type StepEvent = z.infer<typeof StepEventSchema>;
/** An event as the API shows it. */
export type EventJson = z.infer<typeof EventSchema>;
/** What a waiting step waits for, as the API shows it. */
export type WaitJson = z.infer<typeof WaitSchema>;
/** One problem with an input. */
export type Issue = z.infer<typeof IssueSchema>;
