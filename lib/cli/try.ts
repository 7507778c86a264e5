/**
 * `try <run-id> <step> [--item N] [--json]`: runs one step of a run on the inputs the run
 * recorded, here and now, and prints its output or error and its log lines. The pipeline
 * is loaded by this process, so a fix in its code is tried at once. Nothing is written to
 * KV; what the step's code does outside kvflow (a mail, a post) is real.
 *
 * @module
 */
import { type Pipeline, withChildren } from "../define/pipeline.ts";
import { formatMs } from "../define/duration.ts";
import { openKv } from "../kv/open.ts";
import * as keys from "../kv/keys.ts";
import { SCHEMA_VERSION } from "../kv/migrations.ts";
import { type ErrorInfo, UsageError } from "../model/errors.ts";
import { type LogLine, type RunRecord, TERMINAL } from "../model/records.ts";
import { env } from "../platform/env.ts";
import { onStopSignal } from "../platform/process.ts";
import { Store } from "../store/store.ts";
import { prepareTrial, runTrial, type Trial, type TrialResult } from "../engine/driver/trial.ts";
import { EXIT, type Invocation } from "./invocation.ts";
import { loadPipeline } from "./load.ts";

/** `try`: runs a step of a run once on its recorded inputs, writing nothing to the run. */
export async function tryStep(invocation: Invocation): Promise<number> {
  const [runId, step] = invocation.args;
  const item = itemFlag(invocation.flags.item);
  const opened = await openKv();
  try {
    // read only: a database an older kvflow wrote is not migrated here
    const schema = (await opened.kv.get<number>(keys.schema())).value ?? 1;
    if (schema > SCHEMA_VERSION) {
      throw new UsageError(
        `Cannot read a database at schema version ${schema}: this kvflow knows versions up to ${SCHEMA_VERSION}`,
      );
    }
    const store = new Store(opened.kv, { queues: opened.queues });
    const run = await store.requireRun(runId);
    const pipeline = await pipelineOf(invocation, run);
    const trial = await prepareTrial(store, run, pipeline, { step, item });
    const json = invocation.flags.json;
    (json ? invocation.err : invocation.out)(invocation.paint.warn(warning(trial)));
    const interrupt = new AbortController();
    const stopListening = onStopSignal(() => interrupt.abort());
    let result: TrialResult;
    try {
      result = await runTrial(trial, interrupt.signal);
    } finally {
      stopListening();
    }
    if (json) invocation.out(JSON.stringify(jsonResult(trial, result), jsonValue));
    else printResult(invocation, trial, result);
    if (interrupt.signal.aborted) return EXIT.interrupted;
    return result.ok ? EXIT.ok : EXIT.failed;
  } finally {
    opened.kv.close();
  }
}

/**
 * The value of `--item`: a non-negative integer, or undefined when not given.
 *
 * @throws {UsageError} on anything else
 */
function itemFlag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,6}$/.test(value)) {
    throw new UsageError(
      `Invalid --item ${JSON.stringify(value)}: use an item's index, from 0`,
    );
  }
  return Number(value);
}

/**
 * The run's pipeline as its code is now: registered (or a child of one), or imported again
 * from the module the run was started from.
 */
async function pipelineOf(invocation: Invocation, run: RunRecord): Promise<Pipeline<unknown>> {
  const registered = withChildren([...invocation.context.pipelines])
    .find((p) => p.name === run.pipeline);
  if (registered) return registered;
  if (run.module) return (await loadPipeline(run.module, [])).pipeline;
  throw new UsageError(
    `Pipeline '${run.pipeline}' of run ${run.id} is not registered in this kvflow`,
  );
}

/** The task's name as progress lines write it: `email[0]`, or `publish`. */
function taskName(trial: Trial): string {
  return trial.item < 0 ? trial.node.def.name : `${trial.node.def.name}[${trial.item}]`;
}

/** The line printed before the step's code runs. */
function warning(trial: Trial): string {
  const { run } = trial;
  return `⚠ trying ${
    taskName(trial)
  } of run ${run.id} (${run.pipeline}, ${run.logicalDate}, ${run.status}): nothing is written to the run, but what the step's code does (mails, posts, files) is real`;
}

function printResult(invocation: Invocation, trial: Trial, result: TrialResult): void {
  const { out, paint } = invocation;
  const { run } = trial;
  const name = taskName(trial);
  out(paint.dim(`  idempotency key ${result.idempotencyKey}`));
  for (const line of result.logs) out(`  ${logLine(line)}`);
  for (const a of result.artifacts) {
    out(`  artifact '${a.name}' (${a.contentType}, ${a.size} bytes): kept in memory, not stored`);
  }
  const took = formatMs(result.durationMs);
  if (!result.ok) {
    out(paint.bad(`✗ ${name} failed after ${took}: ${errorText(result.error)}`));
    if (env("KVFLOW_DEBUG") && result.error.stack) out(result.error.stack);
    const again = `deno task try ${run.id} ${trial.node.def.name}${
      trial.item < 0 ? "" : ` --item ${trial.item}`
    }`;
    out(`  run ${run.id} is unchanged; fix the cause, then try again: ${again}`);
    return;
  }
  out(paint.ok(`✓ ${name} succeeded in ${took} (trial: the output was not stored)`));
  for (const line of outputLines(result.output)) out(`  ${line}`);
  out(`  ${nextStep(trial)}`);
}

/** How many lines of an output are printed; `--json` prints it whole. */
const OUTPUT_LINES = 30;

/** An output as lines to print, cut after {@linkcode OUTPUT_LINES}. */
function outputLines(output: unknown): string[] {
  const text = Deno.inspect(output, {
    colors: false,
    depth: 6,
    iterableLimit: 50,
    strAbbreviateSize: 2000,
    breakLength: 100,
  });
  const lines = `output ${text}`.split("\n");
  if (lines.length <= OUTPUT_LINES) return lines;
  return [
    ...lines.slice(0, OUTPUT_LINES),
    `… ${lines.length - OUTPUT_LINES} more lines (--json prints the whole output)`,
  ];
}

/** After a successful trial: how the run goes on with the fix. */
function nextStep(trial: Trial): string {
  const { run, pipeline } = trial;
  if (run.status === "succeeded") {
    return `run ${run.id} already succeeded; to run the step again in it: deno task rerun ${run.id} --from ${trial.node.def.name}`;
  }
  const resume = `deno task resume ${run.id}${run.version === pipeline.version ? "" : " --force"}`;
  if (TERMINAL.has(run.status)) return `the fix works: resume the run with: ${resume}`;
  return `the fix works; run ${run.id} is ${run.status} and goes on by itself (if it fails, resume it with: ${resume})`;
}

function logLine(line: LogLine): string {
  const time = new Date(line.at).toISOString().slice(11, 23);
  const fields = line.fields ? ` ${JSON.stringify(line.fields, jsonValue)}` : "";
  return `${time} ${line.level.padEnd(5)} ${line.message}${fields}`;
}

function errorText(error: ErrorInfo): string {
  return `${error.name === "Error" ? "" : `${error.name}: `}${error.message}`;
}

/** What `--json` prints: one object a script can read. */
function jsonResult(trial: Trial, result: TrialResult): Record<string, unknown> {
  const common = {
    run: trial.run.id,
    step: trial.node.def.name,
    item: trial.item < 0 ? null : trial.item,
    idempotencyKey: result.idempotencyKey,
    logs: result.logs,
    artifacts: result.artifacts,
    durationMs: result.durationMs,
  };
  if (result.ok) return { ok: true, output: result.output, ...common };
  const { name, message, stack } = result.error;
  const error = env("KVFLOW_DEBUG") && stack ? { name, message, stack } : { name, message };
  return { ok: false, error, ...common };
}

/** A JSON replacer for what a step may return that JSON does not hold as it is. */
function jsonValue(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Set) return [...value];
  if (value instanceof Uint8Array) return { bytes: value.byteLength };
  return value;
}
