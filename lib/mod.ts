/**
 * kvflow: durable typed pipelines on Deno KV.
 *
 * Define steps and pipelines, then run them with the CLI (`deno task run <pipeline>`)
 * or from code with {@linkcode openEngine}. Only what pipeline authors and embedders use is
 * exported here; the engine's parts (store, worker, driver, KV commits) are imported by path
 * by kvflow's own CLI, service and tests, and may change.
 *
 * @example
 * ```ts
 * import { z } from "zod";
 * import { pipeline, step } from "./mod.ts";
 *
 * const load = step("load", () => [3, 4]);
 * const sum = step("sum", { needs: { load } }, ({ load }) => load[0] + load[1]);
 * export default pipeline("add", { params: z.object({}), steps: [load, sum] });
 * ```
 *
 * @module
 */
// Defining pipelines: steps, their options and the context a step runs with.
export {
  type ArtifactOptions,
  type ArtifactRef,
  type ItemContext,
  type Logger,
  type RunInfo,
  type StepContext,
  type Trigger,
} from "./define/context.ts";
export {
  type EventTrigger,
  type EventTriggerOptions,
  type Pipeline,
  pipeline,
  type PipelineDefaults,
  type PipelineFlow,
  type PipelineOptions,
} from "./define/pipeline.ts";
export { type ResolvedRetry, type RetryPolicy } from "./define/retry.ts";
export { DEFAULT_RETENTION, type Retention, type RetentionOptions } from "./define/retention.ts";
export {
  type Debounce,
  type DebounceOptions,
  type Limit,
  type LimitOptions,
  MAX_PRIORITY,
  PRIORITY_STEP_MS,
  type Throttle,
  type ThrottleOptions,
} from "./define/flow.ts";
export { type Schedule, type ScheduleOptions } from "./define/schedule.ts";
export { type Deadline } from "./define/deadline.ts";
export {
  type AnyStep,
  type FanOut,
  type FanOutOptions,
  type Inputs,
  type Needs,
  type NoNeeds,
  type OutputOf,
  type Schema,
  type Step,
  step,
  type StepOptions,
} from "./define/step.ts";
export { type Duration } from "./define/duration.ts";
export {
  type Arrival,
  type ArrivedEvent,
  type EventSchemas,
  invoke,
  type InvokeEachOptions,
  type InvokeOptions,
  MAX_WAIT_MS,
  type NoEvent,
  type OnTimeout,
  sleep,
  type SleepOptions,
  waitFor,
  type WaitOptions,
  type WaitSpec,
  zonedTime,
} from "./define/wait.ts";

// Running them: open an engine, trigger runs, listen to what happens.
export {
  Engine,
  type EngineEvent,
  type EngineOptions,
  openEngine,
  type PauseOutcome,
} from "./engine/engine.ts";
export { type PruneOptions, type PruneReport } from "./store/prune.ts";
export { type FlowPruneReport } from "./store/flow_prune.ts";
export { type WorkerOptions } from "./engine/worker.ts";
export { type AttemptInfo, type RunEvent } from "./engine/driver/driver.ts";
export { type Clock } from "./model/clock.ts";
export { type Kv } from "./kv/kv.ts";
export { type CreateRunInput, type ListRunsOptions, type RunPage } from "./store/store.ts";
export { type AlertEmail } from "./alerts/deliver.ts";

// Errors a caller catches.
export {
  type ErrorInfo,
  type KvProblem,
  KvUnavailableError,
  NonRetryableError,
  UsageError,
} from "./model/errors.ts";

// What a run leaves behind: the records a caller reads.
export {
  type AttemptRecord,
  type BlobRef,
  type LogLine,
  type RunRecord,
  type RunStatus,
  type RunTrace,
  type StepStatus,
  type Stored,
  type TaskRecord,
} from "./model/records.ts";
export { type ArtifactMeta } from "./model/artifacts.ts";
export {
  type HeldState,
  type PauseState,
  type RunFlow,
  type SlotHolder,
  type WaitState,
} from "./model/records.ts";
export { type EventEffect, type EventRecord, type EventSource } from "./model/events.ts";
export { type EventPage, type SendResult } from "./store/events.ts";
export { type AlertRecord, type ChannelState, type DeadlineMissInfo } from "./alerts/alert.ts";
