/**
 * kvflow: durable typed pipelines on Deno KV.
 *
 * Define steps and pipelines, then run them with the CLI (`deno task run <pipeline>`)
 * or from code with {@linkcode openEngine}.
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
export {
  type AnyStep,
  type ArtifactOptions,
  type ArtifactRef,
  type FanOut,
  type FanOutOptions,
  type Inputs,
  type ItemContext,
  type Logger,
  type Needs,
  type NoNeeds,
  type OutputOf,
  type Pipeline,
  pipeline,
  type PipelineDefaults,
  type PipelineOptions,
  type ResolvedRetry,
  type RetryPolicy,
  type RunInfo,
  type Schedule,
  type ScheduleOptions,
  type Schema,
  type Step,
  step,
  type StepContext,
  type StepOptions,
  type Trigger,
} from "./define/definition.ts";
export { type Duration } from "./define/duration.ts";
export {
  type ErrorInfo,
  type KvProblem,
  KvUnavailableError,
  NonRetryableError,
  UsageError,
} from "./model/errors.ts";
export { Engine, type EngineEvent, type EngineOptions, openEngine } from "./engine/engine.ts";
export {
  type AttemptRecord,
  type BlobRef,
  type Lease,
  type LogLine,
  type RunRecord,
  type RunStatus,
  type StepStatus,
  type Stored,
  type TaskRecord,
} from "./model/run_state.ts";
export {
  type Claim,
  type CreateRunInput,
  type ListRunsOptions,
  type RunPage,
  Store,
  type StoreOptions,
} from "./store/store.ts";
export { type ExecuteResult, Worker, type WorkerOptions } from "./engine/worker.ts";
export {
  type AttemptInfo,
  type DriverOptions,
  type Outcome,
  RunDriver,
  type RunEvent,
} from "./engine/driver/driver.ts";
export { StepLimit, type StepLimitWaiter } from "./engine/step_limit.ts";
export { type Clock, systemClock } from "./engine/clock.ts";
export {
  backfillTicks,
  nextTicks,
  previousTicks,
  Scheduler,
  type ScheduleState,
  type ScheduleView,
  scheduleView,
  tickDate,
  type TickDecision,
  tickRunId,
  ticksBetween,
} from "./engine/scheduler.ts";
export { commitAtomic, type CommitBatch, GroupCommitter, type GroupLimits } from "./kv/commit.ts";
export {
  type AlertChannels,
  type AlertEmail,
  type AlertRecord,
  type ChannelState,
  type DeliverOptions,
} from "./alerts/alerts.ts";
export { type ArtifactMeta } from "./model/artifacts.ts";
