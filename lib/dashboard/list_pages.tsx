/**
 * The dashboard's list pages: runs (with filters, the failures that need a person, and
 * the pipelines) and one pipeline (its steps, params, recent runs and a trigger form).
 * Every fact is in the HTML, so they read without JavaScript.
 *
 * @module
 */
import type { JSX } from "hono/jsx/jsx-runtime";
import type { Pipeline } from "../define/pipeline.ts";
import type { PauseState, RunRecord, RunStatus } from "../model/records.ts";
import { RUN_STATUSES } from "../model/records.ts";
import {
  Badge,
  type Frame,
  Layout,
  NextRun,
  Option,
  RunsTable,
  StepGraph,
  Time,
  TokenForm,
  TriggerForm,
} from "./layout.tsx";
import { clip, paramFields, pipelineHref, runHref } from "./format.ts";
import { nextTicks } from "../engine/scheduler.ts";
import { formatRetention } from "../define/retention.ts";
import { flowJson, flowLines } from "../define/flow_view.ts";
import type { DeadlineMiss } from "../engine/deadlines.ts";
import { deadlineText } from "../define/deadline.ts";
import { type GridData, RunGrid } from "./grid.tsx";

/** Runs on one page of the list, unless `?limit=` says otherwise. */
export const DEFAULT_LIMIT = 25;

/** What the runs page shows. */
export interface RunsPageData extends Frame {
  /** The page of runs. */
  runs: RunRecord[];
  /** The next page's cursor. */
  cursor?: string;
  /** The filters in force. */
  filter: { pipeline?: string; status?: RunStatus; limit: number };
  /** Newest failed runs, shown above the list when nothing is filtered. */
  failed: RunRecord[];
  /** Registered pipelines with their latest run, and their pause while paused. */
  pipelines: { pipeline: Pipeline<unknown>; last: RunRecord | null; paused: PauseState | null }[];
  /** Render time. */
  now: number;
}

/** `GET /`: the runs, their filters, the failures that need a person, the pipelines. */
export function RunsPage(d: RunsPageData): JSX.Element {
  const query = (change: Record<string, string | undefined>) => {
    const q = new URLSearchParams();
    const merged = {
      pipeline: d.filter.pipeline,
      status: d.filter.status,
      limit: d.filter.limit === DEFAULT_LIMIT ? undefined : String(d.filter.limit),
      ...change,
    };
    for (const [k, v] of Object.entries(merged)) if (v) q.set(k, v);
    const text = q.toString();
    return text ? `/?${text}` : "/";
  };
  const names = d.pipelines.map((p) => p.pipeline.name);
  const filtered = d.filter.pipeline || d.filter.status;
  return (
    <Layout title="Runs" auth={d.auth} session={d.session} page="runs">
      <h1>Runs</h1>
      {!filtered && d.failed.length > 0 && (
        <section class="panel problem" aria-labelledby="attention">
          <h2 id="attention">
            {d.failed.length === 1 ? "1 failed run needs" : `${d.failed.length} failed runs need`}
            {" "}
            a look
          </h2>
          <ul>
            {d.failed.map((run) => (
              <li>
                <a href={runHref(run.id)} class="mono">{run.id}</a> · <b>{run.pipeline}</b> ·{" "}
                {run.logicalDate}
                {run.error && (
                  <div class="error-line">
                    {run.error.step ? `${run.error.step}: ` : ""}
                    {clip(run.error.message, 300)}
                  </div>
                )}
              </li>
            ))}
          </ul>
          <p>
            <a href="/?status=failed">All failed runs</a>
          </p>
        </section>
      )}
      <form class="filters" method="get" action="/">
        <label>
          Pipeline
          <select name="pipeline">
            <option value="">all pipelines</option>
            {names.map((name) => (
              <option value={name} selected={name === d.filter.pipeline}>{name}</option>
            ))}
          </select>
        </label>
        <label>
          Status
          <select name="status">
            <option value="">any status</option>
            {RUN_STATUSES.map((s) => <Option key={s} value={s} selected={s === d.filter.status} />)}
          </select>
        </label>
        <button type="submit">Filter</button>
        {filtered && <a href="/">Clear filters</a>}
      </form>
      <nav class="chips" aria-label="Runs by status">
        <a href={query({ status: undefined })} aria-current={d.filter.status ? undefined : "page"}>
          <span class="badge s-queued">all</span>
        </a>
        {RUN_STATUSES.map((s) => (
          <a href={query({ status: s })} aria-current={s === d.filter.status ? "page" : undefined}>
            <Badge status={s} />
          </a>
        ))}
      </nav>
      <RunsTable id="runs-table" runs={d.runs} now={d.now} />
      {d.cursor && (
        <p>
          <a href={query({ cursor: d.cursor })}>
            Older runs →
          </a>
        </p>
      )}
      <h2 id="pipelines">Pipelines</h2>
      {d.pipelines.length === 0
        ? <p class="muted">No pipelines are registered in pipelines/mod.ts.</p>
        : (
          <div class="cards">
            {d.pipelines.map(({ pipeline, last, paused }) => (
              <section class="card">
                <h3>
                  <a href={pipelineHref(pipeline.name)}>{pipeline.name}</a>
                  {paused && (
                    <>
                      {" "}
                      <span class="badge s-paused" title={paused.reason}>⏸ paused</span>
                    </>
                  )}
                </h3>
                {pipeline.description && <p>{pipeline.description}</p>}
                <dl class="facts">
                  <dt>Steps</dt>
                  <dd>{pipeline.steps.map((s) => s.name).join(" · ")}</dd>
                  <dt>Next run</dt>
                  <dd>
                    {paused
                      ? (
                        <span>
                          none while paused (since <Time at={paused.at} />: {paused.reason})
                        </span>
                      )
                      : <NextRun pipeline={pipeline} now={d.now} />}
                  </dd>
                  <dt>Last run</dt>
                  <dd>
                    {last
                      ? (
                        <span>
                          <Badge status={last.status} />{" "}
                          <a href={runHref(last.id)} class="mono">{last.id}</a>
                        </span>
                      )
                      : <span class="muted">never run</span>}
                  </dd>
                </dl>
                <p>
                  <a href={`${pipelineHref(pipeline.name)}#trigger`}>Trigger a run →</a>
                </p>
              </section>
            ))}
          </div>
        )}
    </Layout>
  );
}

/** What the pipeline page shows. */
export interface PipelinePageData extends Frame {
  /** The pipeline. */
  pipeline: Pipeline<unknown>;
  /** Its newest runs. */
  runs: RunRecord[];
  /** Its newest ticks that missed the schedule's deadline. */
  misses: DeadlineMiss[];
  /** Render time. */
  now: number;
  /** The pipeline's pause, while it is paused. */
  paused: PauseState | null;
  /** Its grid: a page of runs by steps. */
  grid: GridData;
}

/**
 * `GET /pipelines/:name`: facts, the grid of runs by steps, steps, params, recent runs,
 * and a trigger form.
 */
export function PipelinePage(
  { pipeline, runs, misses, now, auth, session, paused, grid }: PipelinePageData,
): JSX.Element {
  const api = `/api/pipelines/${encodeURIComponent(pipeline.name)}`;
  const fields = paramFields(pipeline);
  const flow = flowLines(flowJson(pipeline.flow));
  return (
    <Layout title={pipeline.name} auth={auth} session={session} page="pipeline">
      <p class="crumbs">
        <a href="/">Runs</a> › <a href="/#pipelines">Pipelines</a> › <span>{pipeline.name}</span>
      </p>
      <h1>{pipeline.name}</h1>
      {pipeline.description && <p>{pipeline.description}</p>}
      {paused && (
        <p class="panel paused" id="pipeline-paused">
          <span class="badge s-paused">⏸ paused</span> since <Time at={paused.at} />:{" "}
          {paused.reason}. Triggers are accepted and wait as paused runs; the schedule does not
          advance. Unpause to start them (missed ticks follow the catch-up policy).
        </p>
      )}
      <dl class="facts">
        <dt>Version</dt>
        <dd class="mono">{pipeline.version}</dd>
        <dt>Next run</dt>
        <dd>
          <NextRun pipeline={pipeline} now={now} />
        </dd>
        {pipeline.schedule && (
          <>
            <dt>Schedule</dt>
            <dd>
              <code>{pipeline.schedule.cron}</code> in {pipeline.schedule.timezone}; missed ticks:
              {" "}
              {catchupText(pipeline.schedule)}; overlap: {pipeline.schedule.overlap} (at most{" "}
              {pipeline.schedule.maxActive} active)
            </dd>
            {pipeline.schedule.deadline && (
              <>
                <dt>Deadline</dt>
                <dd>
                  each tick's run succeeded by{" "}
                  {deadlineText(pipeline.schedule.deadline, pipeline.schedule.timezone)}
                </dd>
              </>
            )}
            <dt>Then</dt>
            <dd>
              {nextTicks(pipeline.schedule, now, 4).slice(1).map((tick) => (
                <div>
                  <Time at={tick} />
                </div>
              ))}
            </dd>
          </>
        )}
        <dt>Concurrency</dt>
        <dd>{pipeline.concurrency} steps at once per run</dd>
        <dt>Retention</dt>
        <dd>
          ended runs are kept {formatRetention(pipeline.retention.succeeded)} after success,{" "}
          {formatRetention(pipeline.retention.failed)} after failure,{" "}
          {formatRetention(pipeline.retention.cancelled)} after cancel
        </dd>
        <dt>Flow control</dt>
        <dd id="pipeline-flow">
          {flow.length === 0
            ? <span class="muted">none</span>
            : flow.map((line) => <div key={line}>{line}</div>)}
        </dd>
      </dl>
      <RunGrid {...grid} />
      <h2>Steps</h2>
      <StepGraph graph={pipeline.graph} />
      <h2>Params</h2>
      {fields === null
        ? <p class="muted">Described by a schema this page cannot list.</p>
        : fields.length === 0
        ? <p class="muted">None.</p>
        : (
          <table class="stack">
            <thead>
              <tr>
                <th>Name</th>
                <th>Type</th>
                <th>Required</th>
                <th>Default</th>
              </tr>
            </thead>
            <tbody>
              {fields.map((f) => (
                <tr>
                  <td data-label="Name" class="mono">{f.name}</td>
                  <td data-label="Type">{f.type}</td>
                  <td data-label="Required">{f.required ? "yes" : "no"}</td>
                  <td data-label="Default" class="mono">{f.default ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      <section class="panel" id="trigger" aria-labelledby="trigger-title">
        <h2 id="trigger-title">Trigger a run</h2>
        <TokenForm auth={auth} />
        <div class="needs-js">
          <TriggerForm pipeline={pipeline.name} params={{}} />
        </div>
        <div class="actions needs-js">
          <button type="button" data-action="pause" data-url={`${api}/pause`} disabled={!!paused}>
            Pause pipeline
          </button>
          <button
            type="button"
            data-action="unpause"
            data-url={`${api}/unpause`}
            disabled={!paused}
          >
            Unpause pipeline
          </button>
        </div>
        <p id="action-status" role="status" aria-live="polite"></p>
        <p class="muted">
          From a shell: <code>deno task run {pipeline.name} --param key=value</code> ·{" "}
          <code>deno task pause {pipeline.name}</code> ·{" "}
          <code>deno task unpause {pipeline.name}</code>
        </p>
      </section>
      {pipeline.schedule?.deadline && <MissedDeadlines misses={misses} />}
      <h2>Recent runs</h2>
      <RunsTable runs={runs} now={now} />
      {runs.length > 0 && (
        <p>
          <a href={`/?pipeline=${encodeURIComponent(pipeline.name)}`}>
            All runs of {pipeline.name}
          </a>
        </p>
      )}
    </Layout>
  );
}

function MissedDeadlines({ misses }: { misses: DeadlineMiss[] }): JSX.Element {
  return (
    <section id="missed-deadlines">
      <h2>Missed deadlines</h2>
      {misses.length === 0 ? <p class="muted">None.</p> : (
        <table class="stack">
          <thead>
            <tr>
              <th>Logical date</th>
              <th>Tick</th>
              <th>Deadline</th>
              <th>Why</th>
              <th>Run</th>
            </tr>
          </thead>
          <tbody>
            {misses.map((m) => (
              <tr class="deadline-missed">
                <td data-label="Logical date">{m.logicalDate}</td>
                <td data-label="Tick">
                  <Time at={m.tick} />
                </td>
                <td data-label="Deadline">
                  <Time at={m.at} /> ({m.rule})
                </td>
                <td data-label="Why">{m.reason}</td>
                <td data-label="Run" class="mono">
                  <a href={runHref(m.runId)}>{m.runId}</a>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function catchupText(schedule: NonNullable<Pipeline<unknown>["schedule"]>): string {
  if (schedule.catchup === "none") return "skipped";
  if (schedule.catchup === "latest") return "the latest one runs";
  return `all run, up to ${schedule.catchupLimit}`;
}
