/**
 * The run page: status and facts, then what went wrong and what to press, then the step
 * graph, a timeline with a bar per attempt, each step's attempts and logs, artifacts and
 * alerts. The sections marked `data-live` are what the browser script swaps in fresh
 * while the run changes.
 *
 * @module
 */
import type { JSX } from "hono/jsx/jsx-runtime";
import type { AttemptRecord, RunRecord, TaskRecord } from "../model/records.ts";
import { TERMINAL } from "../model/records.ts";
import type { ArtifactMeta } from "../model/artifacts.ts";
import type { AlertRecord } from "../alerts/alert.ts";
import type { ErrorInfo } from "../model/errors.ts";
import {
  Badge,
  type Frame,
  Layout,
  Option,
  StepGraph,
  Time,
  TokenForm,
  TriggerForm,
} from "./layout.tsx";
import { WaitPanel } from "./wait_panel.tsx";
import { traceUrl } from "../http/run_view.ts";
import { heldText } from "../define/flow_view.ts";
import { formatRetention } from "../define/retention.ts";
import {
  attemptAnchor,
  attemptsByTask,
  bytes,
  clip,
  duration,
  errorText,
  eventHref,
  ICONS,
  itemSummary,
  pipelineHref,
  runDuration,
  runHref,
  safeJson,
  stepOrder,
  taskKey,
  taskLabel,
  utc,
} from "./format.ts";

/** Everything stored about one run. */
export interface RunPageData extends Frame {
  /** The run. */
  run: RunRecord;
  /** Its step graph: as recorded, else the pipeline's. */
  graph: Readonly<Record<string, readonly string[]>>;
  /** Its step records. */
  steps: Map<string, TaskRecord>;
  /** Item records of its fan-out steps. */
  items: Map<string, Map<number, TaskRecord>>;
  /** Its attempt history. */
  attempts: AttemptRecord[];
  /** Its artifacts. */
  artifacts: ArtifactMeta[];
  /** Its alerts. */
  alerts: AlertRecord[];
  /** Whether this service knows the run's pipeline (else the buttons cannot work). */
  known: boolean;
  /** Render time. */
  now: number;
}

/**
 * `GET /runs/:id`: status and facts, then what went wrong and what to press, then the
 * step graph, the timeline, each step's attempts and logs, artifacts and alerts.
 */
export function RunPage(d: RunPageData): JSX.Element {
  const { run } = d;
  return (
    <Layout
      title={`${ICONS[run.status] ?? ""} ${run.pipeline} ${run.id}`}
      auth={d.auth}
      session={d.session}
      page="run"
      runId={run.id}
    >
      <p class="crumbs">
        <a href="/">Runs</a> › <a href={pipelineHref(run.pipeline)}>{run.pipeline}</a> ›{" "}
        <span class="mono">{run.id}</span>
      </p>
      <h1>
        <Badge status={run.status} id="run-status" />
        <span>{run.pipeline}</span>
        <small class="mono">{run.id}</small>
      </h1>
      <p id="live-note" class="muted needs-js" aria-live="polite">
        {TERMINAL.has(run.status) ? "" : "Connecting for live updates…"}
      </p>
      <WaitPanel run={run} now={d.now} />
      <Problems {...d} />
      <Actions {...d} />
      <Facts {...d} />
      <h2>Steps</h2>
      <StepGraph graph={d.graph} steps={d.steps} items={d.items} id="live-graph" />
      <h2>Timeline</h2>
      <Timeline {...d} />
      <StepDetails {...d} />
      <Artifacts {...d} />
      <Alerts {...d} />
    </Layout>
  );
}

interface Problem {
  step: string;
  item: number;
  task: TaskRecord;
  last?: AttemptRecord;
}

function Problems(d: RunPageData): JSX.Element {
  const { run } = d;
  const attempts = attemptsByTask(d.attempts);
  const failed: Problem[] = [];
  const retrying: Problem[] = [];
  const skipped: string[] = [];
  const order = stepOrder(d.graph);
  for (const name of order) {
    const task = d.steps.get(name);
    if (!task) continue;
    const last = attempts.get(taskKey(name, -1))?.at(-1);
    if (task.status === "failed") failed.push({ step: name, item: -1, task, last });
    if (task.status === "retrying") retrying.push({ step: name, item: -1, task, last });
    if (task.status === "skipped") skipped.push(name);
    for (const [index, item] of d.items.get(name) ?? []) {
      const lastOfItem = attempts.get(taskKey(name, index))?.at(-1);
      if (item.status === "failed") {
        failed.push({ step: name, item: index, task: item, last: lastOfItem });
      }
      if (item.status === "retrying") {
        retrying.push({ step: name, item: index, task: item, last: lastOfItem });
      }
    }
  }
  // The step the run names as its failure first, then the others in graph order.
  failed.sort((a, b) => Number(b.step === run.error?.step) - Number(a.step === run.error?.step));
  const shown = failed.slice(0, 10);
  return (
    <div id="live-problems" data-live="">
      {run.status === "queued" && run.held && (
        <section class="panel" id="run-held" aria-label="Held">
          <span class="badge s-held" data-held={run.held.by}>{heldText(run.held, d.now)}</span>
          {run.held.until !== null ? ` ${run.held.reason}.` : ""} {run.held.by === "limit"
            ? "It starts when a slot of its key frees, first come first served."
            : "It starts once that time has come."}
        </section>
      )}
      {run.paused && (
        <section class="panel" id="run-paused" aria-label="Paused">
          <span class="badge s-paused">⏸ {run.status === "paused" ? "paused" : "pausing"}</span>
          {" "}
          {run.paused.by === "pipeline" ? `Pipeline ${run.pipeline} is paused` : "Paused"} since
          {" "}
          {new Date(run.paused.at).toISOString()}: {run.paused.reason}. {run.status === "paused"
            ? "Nothing of it runs until it is unpaused; what it waits for is kept."
            : "The steps running now finish and are checkpointed; then it stops."}
        </section>
      )}
      {(run.status === "failed" || run.status === "cancelled") && (
        <section class="panel problem" aria-labelledby="what-failed">
          <h2 id="what-failed">
            {run.status === "failed"
              ? (run.error?.step ? `Failed at step ${run.error.step}` : "The run failed")
              : "The run was cancelled"}
          </h2>
          {run.error && !shown.some((p) =>
            p.task.error?.message === run.error?.message
          ) && <p class="error-line">{run.error.message}</p>}
          {shown.map((p) => <ProblemDetail key={taskKey(p.step, p.item)} problem={p} />)}
          {failed.length > shown.length && (
            <p class="muted">
              {failed.length - shown.length} more failed items: see Steps below.
            </p>
          )}
          {skipped.length > 0 && (
            <p>
              Skipped because a step they need did not succeed: <b>{skipped.join(", ")}</b>
            </p>
          )}
          <p>
            <b>What to do:</b> {run.status === "failed"
              ? "fix the cause, then press Resume: checkpointed steps are reused and only the failed and skipped ones run again."
              : "press Resume to continue it: checkpointed steps are reused."} From a shell:{" "}
            <code>deno task resume {run.id}</code>
          </p>
        </section>
      )}
      {retrying.length > 0 && (
        <section class="panel warn" aria-labelledby="retrying">
          <h2 id="retrying">Retrying</h2>
          {retrying.slice(0, 10).map((p) => (
            <div>
              <p class="error-line">
                {taskLabel(p.step, p.item)}: attempt {p.task.attempt} failed:{" "}
                {p.task.error ? errorText(p.task.error) : "unknown error"}
              </p>
              <p>
                Next attempt <Time at={p.task.nextAt} />
              </p>
            </div>
          ))}
        </section>
      )}
    </div>
  );
}

function ProblemDetail({ problem: p }: { problem: Problem }): JSX.Element {
  const error = p.last?.error ?? p.task.error;
  const history = (p.task.base ?? 0) + p.task.attempt;
  return (
    <div class="problem-detail">
      <h3>
        {taskLabel(p.step, p.item)}{" "}
        <small>
          {history === 0 ? "never started" : `after ${history} attempt${history === 1 ? "" : "s"}`}
          {p.task.endedAt ? " · " : ""}
          {p.task.endedAt ? <Time at={p.task.endedAt} /> : ""}
        </small>
      </h3>
      {error && <p class="error-line">{errorText(error)}</p>}
      {error?.stack && <pre class="stack">{error.stack}</pre>}
      {p.last && p.last.logs.length > 0 && (
        <div>
          <b>Logs of attempt {p.last.n}</b>
          <Logs logs={p.last.logs} />
        </div>
      )}
    </div>
  );
}

function Actions(d: RunPageData): JSX.Element {
  const { run } = d;
  const terminal = TERMINAL.has(run.status);
  const order = stepOrder(d.graph);
  const firstFailed = run.error?.step ??
    order.find((s) => d.steps.get(s)?.status === "failed") ?? order[0];
  const api = `/api/runs/${encodeURIComponent(run.id)}`;
  return (
    <section class="panel" aria-labelledby="actions">
      <h2 id="actions">Actions</h2>
      {!d.known && (
        <p class="say-error">
          This service does not know pipeline {run.pipeline}: resume it from a process that does.
        </p>
      )}
      <TokenForm auth={d.auth} />
      <div class="actions needs-js">
        <button
          type="button"
          class="primary"
          data-action="resume"
          data-url={`${api}/resume`}
          disabled={!(run.status === "failed" || run.status === "cancelled")}
        >
          Resume
        </button>
        <label class="sr" for="rerun-from">Rerun from step</label>
        <select id="rerun-from" disabled={!terminal}>
          {order.map((s) => <Option key={s} value={s} selected={s === firstFailed} />)}
        </select>
        <button type="button" data-action="rerun" data-url={`${api}/rerun`} disabled={!terminal}>
          Rerun from step
        </button>
        <button
          type="button"
          data-action="pause"
          data-url={`${api}/pause`}
          disabled={terminal || run.status === "paused" || Boolean(run.paused)}
        >
          Pause
        </button>
        <button
          type="button"
          data-action="unpause"
          data-url={`${api}/unpause`}
          disabled={!(run.status === "paused" || run.paused)}
        >
          Unpause
        </button>
        <button
          type="button"
          class="danger"
          data-action="cancel"
          data-url={`${api}/cancel`}
          disabled={terminal}
        >
          Cancel
        </button>
      </div>
      <p id="action-status" role="status" aria-live="polite"></p>
      <details class="needs-js">
        <summary>Trigger a new run of {run.pipeline}</summary>
        <TriggerForm pipeline={run.pipeline} params={run.params} />
      </details>
      <p class="muted">
        From a shell: <code>deno task resume {run.id}</code> ·{" "}
        <code>deno task rerun {run.id} --from {firstFailed ?? "<step>"}</code> ·{" "}
        <code>deno task cancel {run.id}</code> · <code>deno task pause {run.id}</code> ·{" "}
        <code>deno task unpause {run.id}</code>
      </p>
      <p class="no-js-only muted">The buttons need JavaScript.</p>
    </section>
  );
}

/** The run's trace id, a link into the tracing backend when `KVFLOW_TRACE_URL` is set. */
function TraceFact({ traceId }: { traceId: string }): JSX.Element {
  const url = traceUrl(traceId);
  return (
    <>
      <dt>Trace</dt>
      <dd class="mono" id="trace-id">
        {url ? <a href={url} rel="external">{traceId}</a> : traceId}
      </dd>
    </>
  );
}

function Facts({ run, now, steps, items }: RunPageData): JSX.Element {
  const children = childRuns(steps, items);
  return (
    <section class="panel" id="live-facts" data-live="">
      <dl class="facts">
        <dt>Status</dt>
        <dd>{run.status}</dd>
        <dt>Priority</dt>
        <dd id="run-priority">{run.priority ?? 0}</dd>
        {run.flow && (run.flow.limit || run.flow.throttle || run.flow.debounce) && (
          <>
            <dt>Flow control</dt>
            <dd id="run-flow">
              {run.flow.limit && (
                <div>
                  limit {run.flow.limit.max} at once, key <code>{run.flow.limit.key}</code> (scope
                  {" "}
                  {run.flow.limit.scope})
                </div>
              )}
              {run.flow.throttle && (
                <div>
                  throttle {run.flow.throttle.max} per {formatRetention(run.flow.throttle.perMs)}
                  , key <code>{run.flow.throttle.key}</code> (scope {run.flow.throttle.scope})
                </div>
              )}
              {run.flow.debounce && (
                <div>
                  debounced, key <code>{run.flow.debounce.key}</code>
                </div>
              )}
            </dd>
          </>
        )}
        <dt>Pipeline</dt>
        <dd>
          <a href={pipelineHref(run.pipeline)}>{run.pipeline}</a>{" "}
          <small class="mono">version {run.version}</small>
        </dd>
        <dt>Trigger</dt>
        <dd>
          {run.trigger}
          {run.event && (
            <>
              {" "}by event <a href={eventHref(run.event)} class="mono">{run.event}</a>
            </>
          )}
        </dd>
        {run.parent && (
          <>
            <dt>Parent run</dt>
            <dd>
              <a href={runHref(run.parent.runId)} class="mono" rel="up">{run.parent.runId}</a>{" "}
              <small>step {taskLabel(run.parent.step, run.parent.item)}</small>
            </dd>
          </>
        )}
        {children.length > 0 && (
          <>
            <dt>Child runs</dt>
            <dd>
              <ul class="effects">
                {children.slice(0, 200).map((c) => (
                  <li>
                    <a href={runHref(c.child)} class="mono">{c.child}</a>{" "}
                    <small>from {taskLabel(c.step, c.item)}</small>
                  </li>
                ))}
              </ul>
              {children.length > 200 && <small>{children.length - 200} more</small>}
            </dd>
          </>
        )}
        <dt>Logical date</dt>
        <dd>{run.logicalDate}</dd>
        <dt>Created</dt>
        <dd>
          <Time at={run.createdAt} />
        </dd>
        <dt>Started</dt>
        <dd>
          <Time at={run.startedAt} />
        </dd>
        <dt>Ended</dt>
        <dd>
          <Time at={run.endedAt} />
        </dd>
        <dt>Duration</dt>
        <dd>{runDuration(run, now)}</dd>
        {run.status === "waiting" && run.dueAt !== null && (
          <>
            <dt>Next look</dt>
            <dd>
              <Time at={run.dueAt} />
            </dd>
          </>
        )}
        {run.failures > 0 && (
          <>
            <dt>Failures</dt>
            <dd>{run.failures}</dd>
          </>
        )}
        {run.takeovers > 0 && (
          <>
            <dt>Takeovers</dt>
            <dd>{run.takeovers} (a worker took it over from one that stopped)</dd>
          </>
        )}
        {run.trace && <TraceFact traceId={run.trace.traceId} />}
        {run.module && (
          <>
            <dt>Module</dt>
            <dd class="mono">{run.module}</dd>
          </>
        )}
        <dt>Params</dt>
        <dd>
          <pre>{JSON.stringify(run.params, null, 2)}</pre>
        </dd>
      </dl>
    </section>
  );
}

interface Bar {
  label: string;
  n: number;
  status: string;
  start: number;
  end: number;
  error: ErrorInfo | null;
}

const MAX_ROWS = 60;

function Timeline(d: RunPageData): JSX.Element {
  const rows = new Map<string, { label: string; bars: Bar[]; failed: boolean }>();
  const add = (key: string, label: string, bar: Bar) => {
    const row = rows.get(key) ?? { label, bars: [], failed: false };
    row.bars.push(bar);
    row.failed ||= bar.status === "failed";
    rows.set(key, row);
  };
  for (const a of d.attempts) {
    add(taskKey(a.step, a.item), taskLabel(a.step, a.item), {
      label: taskLabel(a.step, a.item),
      n: a.n,
      status: a.status,
      start: a.startedAt,
      end: a.endedAt,
      error: a.error,
    });
  }
  const running = (step: string, item: number, task: TaskRecord) => {
    if (task.status !== "running" || task.startedAt === null) return;
    add(taskKey(step, item), taskLabel(step, item), {
      label: taskLabel(step, item),
      n: (task.base ?? 0) + task.attempt,
      status: "running",
      start: task.startedAt,
      end: Math.max(d.now, task.startedAt),
      error: null,
    });
  };
  for (const [name, task] of d.steps) {
    if (task.items === undefined) running(name, -1, task);
    for (const [index, item] of d.items.get(name) ?? []) running(name, index, item);
  }
  if (rows.size === 0) {
    return (
      <div id="live-timeline" data-live="">
        <p class="muted">No attempt has started yet.</p>
      </div>
    );
  }
  // Rows follow the step graph's order, items in index order, so retries line up under
  // the step they belong to.
  const order = new Map(stepOrder(d.graph).map((name, i) => [name, i]));
  const rank = (key: string) => {
    const [step, item] = key.split("\u0000");
    return (order.get(step) ?? order.size) * 1e6 + Number(item) + 1;
  };
  const all = [...rows.entries()].sort(([a], [b]) => rank(a) - rank(b)).map(([, row]) => row);
  for (const row of all) row.bars.sort((a, b) => a.start - b.start);
  // Keep rows with a failure when there are too many to draw.
  const keep = new Set(
    [...all.filter((r) => r.failed), ...all.filter((r) => !r.failed)].slice(0, MAX_ROWS),
  );
  const shown = all.filter((r) => keep.has(r));
  const t0 = Math.min(...shown.map((r) => r.bars[0].start));
  const t1 = Math.max(...shown.flatMap((r) => r.bars.map((b) => b.end)), t0 + 1);
  const span = t1 - t0;
  const pct = (t: number) => `${((100 * (t - t0)) / span).toFixed(2)}%`;
  return (
    <div id="live-timeline" data-live="">
      <div class="timeline" role="list">
        {shown.map((row) => (
          <>
            <div class="label" role="listitem">{row.label}</div>
            <div class="track">
              {row.bars.map((bar) => {
                const text = `${bar.label} attempt ${bar.n}: ${bar.status}, ${
                  duration(bar.end - bar.start)
                }${bar.error ? ` — ${clip(bar.error.message, 200)}` : ""}`;
                return (
                  <a
                    class={`bar s-${bar.status}`}
                    href={`#step-${bar.label.replace(/\[\d+\]$/, "")}`}
                    title={text}
                    style={`left:${pct(bar.start)};width:${
                      ((100 * Math.max(bar.end - bar.start, 0)) / span).toFixed(2)
                    }%`}
                  >
                    <span class="sr">{text}</span>
                  </a>
                );
              })}
            </div>
          </>
        ))}
        <div class="axis">
          <span>0</span>
          <span>{duration(span)}</span>
        </div>
      </div>
      {all.length > shown.length && (
        <p class="muted">
          {all.length - shown.length} more rows not drawn; every attempt is listed under Steps.
        </p>
      )}
      <div class="legend">
        <span>
          <i class="s-succeeded"></i>succeeded
        </span>
        <span>
          <i class="s-failed"></i>failed (a retry follows on the same row)
        </span>
        <span>
          <i class="s-running"></i>running
        </span>
        <span>
          <i class="s-crashed"></i>worker lost or interrupted
        </span>
      </div>
    </div>
  );
}

function StepDetails(d: RunPageData): JSX.Element {
  const attempts = attemptsByTask(d.attempts);
  return (
    <div id="live-steps" data-live="">
      <table class="stack steps">
        <thead>
          <tr>
            <th>Step</th>
            <th>Status</th>
            <th>Attempts</th>
            <th>Started</th>
            <th>Duration</th>
            <th>Error</th>
          </tr>
        </thead>
        <tbody>
          {stepOrder(d.graph).map((name) => {
            const task = d.steps.get(name);
            const history = task ? (task.base ?? 0) + task.attempt : 0;
            return (
              <tr id={`step-${name}`}>
                <td data-label="Step" class="mono">{name}</td>
                <td data-label="Status">
                  <Badge status={task?.status ?? "pending"} />
                </td>
                <td data-label="Attempts">
                  {history}
                  {task?.items !== undefined && (
                    <small>· {itemSummary(task.items, d.items.get(name))}</small>
                  )}
                </td>
                <td data-label="Started">
                  <Time at={task?.startedAt} />
                </td>
                <td data-label="Duration">
                  {task?.startedAt && task.endedAt
                    ? duration(task.endedAt - task.startedAt)
                    : task?.status === "running" && task.startedAt
                    ? `${duration(d.now - task.startedAt)} so far`
                    : "—"}
                </td>
                <td data-label="Error" class="err">
                  {task?.error ? clip(errorText(task.error), 300) : ""}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <h2>Attempts and logs</h2>
      {d.attempts.length === 0 && <p class="muted">No attempt has ended yet.</p>}
      {stepOrder(d.graph).map((name) => {
        const keys = [...attempts.keys()].filter((k) => k.startsWith(`${name}\u0000`));
        if (keys.length === 0) return "";
        const count = keys.reduce((n, k) => n + attempts.get(k)!.length, 0);
        const failed = keys.some((k) => attempts.get(k)!.some((a) => a.status !== "succeeded"));
        return (
          <details open={failed && keys.length <= 3}>
            <summary>
              <b class="mono">{name}</b> · {count} attempt{count === 1 ? "" : "s"}
              {keys.length > 1 ? ` over ${keys.length} items` : ""}
              {failed ? " · some failed" : ""}
            </summary>
            {keys.slice(0, 200).map((k) =>
              attempts.get(k)!.map((a) => (
                <div class="attempt" id={attemptAnchor(a.step, a.item, a.n)}>
                  <h3>
                    {taskLabel(a.step, a.item)} attempt {a.n} <Badge status={a.status} />{" "}
                    <small>
                      <Time at={a.startedAt} /> · {duration(a.endedAt - a.startedAt)}
                    </small>
                  </h3>
                  {a.error && <p class="error-line">{errorText(a.error)}</p>}
                  {a.error?.stack && (
                    <details>
                      <summary>Stack</summary>
                      <pre>{a.error.stack}</pre>
                    </details>
                  )}
                  {a.logs.length > 0 && <Logs logs={a.logs} />}
                </div>
              ))
            )}
            {keys.length > 200 && <p class="muted">{keys.length - 200} more items not shown.</p>}
          </details>
        );
      })}
    </div>
  );
}

function Logs({ logs }: { logs: AttemptRecord["logs"] }): JSX.Element {
  return (
    <ul class="logs">
      {logs.map((line) => (
        <li class={`lvl-${line.level}`}>
          <span class="muted">{utc(line.at).slice(11, 19)}</span> {line.level.toUpperCase()}{" "}
          {line.message}
          {line.fields && Object.keys(line.fields).length > 0 ? ` ${safeJson(line.fields)}` : ""}
        </li>
      ))}
    </ul>
  );
}

function Artifacts({ run, artifacts }: RunPageData): JSX.Element {
  return (
    <div id="live-artifacts" data-live="">
      <h2>Artifacts</h2>
      {artifacts.length === 0 ? <p class="muted">None stored.</p> : (
        <ul>
          {artifacts.map((a) => (
            <li>
              <a
                href={`/api/runs/${encodeURIComponent(run.id)}/artifacts/${
                  encodeURIComponent(a.name)
                }`}
              >
                {a.name}
              </a>{" "}
              <small>
                {a.contentType} · {bytes(a.size)} · from {taskLabel(a.step, a.item)}
              </small>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function Alerts({ alerts }: RunPageData): JSX.Element {
  return (
    <div id="live-alerts" data-live="">
      <h2>Alerts</h2>
      {alerts.length === 0 ? <p class="muted">None.</p> : (
        <ul>
          {alerts.map((a) => (
            <li>
              {a.deadline ? "Deadline missed" : `Alert ${a.seq}`} · <Time at={a.at} /> ·{" "}
              {a.step ? `step ${a.step}: ` : ""}
              {a.message} · webhook {a.webhook}
              {a.webhookError ? ` (${a.webhookError})` : ""}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

/** The child runs a run's steps and items started, in step then item order. */
function childRuns(
  steps: Map<string, TaskRecord>,
  items: Map<string, Map<number, TaskRecord>>,
): { step: string; item: number; child: string }[] {
  const out: { step: string; item: number; child: string }[] = [];
  for (const [name, task] of steps) {
    const child = task.child ?? task.wait?.child;
    if (child) out.push({ step: name, item: -1, child });
    for (const [index, item] of [...(items.get(name) ?? [])].sort(([a], [b]) => a - b)) {
      const of = item.child ?? item.wait?.child;
      if (of) out.push({ step: name, item: index, child: of });
    }
  }
  return out;
}
