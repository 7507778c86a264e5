/**
 * The parts every dashboard page shares: the frame, status badges, times, the runs
 * table, the step graph, the token and trigger forms, and the error and sign-in pages.
 * All rendered on the server with `hono/jsx`, which escapes every text and attribute.
 *
 * @module
 */
import type { Child, PropsWithChildren } from "hono/jsx";
import type { JSX } from "hono/jsx/jsx-runtime";
import type { Pipeline } from "../define/pipeline.ts";
import type { RunRecord, StepStatus, TaskRecord } from "../model/records.ts";
import { nextTicks } from "../engine/scheduler.ts";
import { heldText } from "../define/flow_view.ts";
import { TERMINAL } from "../model/records.ts";
import { CSS, JS } from "./assets.ts";
import {
  clip,
  duration,
  hash,
  ICONS,
  itemSummary,
  layersOf,
  pipelineHref,
  runDuration,
  runHref,
  utc,
} from "./format.ts";

/** Changes whenever the stylesheet or script does, so both can be cached for a year. */
export const ASSET_VERSION = hash(CSS + JS);

const FAVICON = "data:image/svg+xml," +
  encodeURIComponent(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#0969da"/><path d="M4 4h3v8H4zM9 4l3 4-3 4" fill="#fff"/></svg>`,
  );

/** What every page's frame needs. */
export interface Frame {
  /** The window title, without the "kvflow" suffix. */
  title: string;
  /** Whether the API wants a bearer token for the buttons. */
  auth: boolean;
  /** Whether a read session is open (then a sign-out button shows). */
  session?: boolean;
}

/** The page frame: head, top bar, main. */
export function Layout(
  props: PropsWithChildren<Frame & { page: string; runId?: string }>,
): JSX.Element {
  return (
    <html lang="en" class="no-js">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="color-scheme" content="light dark" />
        <meta name="referrer" content="no-referrer" />
        <title>{props.title} · kvflow</title>
        <link rel="icon" href={FAVICON} />
        <link rel="stylesheet" href={`/assets/kvflow.css?v=${ASSET_VERSION}`} />
        <script src={`/assets/kvflow.js?v=${ASSET_VERSION}`} defer />
      </head>
      <body
        data-page={props.page}
        data-run={props.runId}
        data-auth={props.auth ? "required" : "none"}
      >
        <header class="top">
          <a class="brand" href="/">kvflow</a>
          <nav>
            <a href="/">Runs</a>
            <a href="/?status=failed">Failed</a>
            <a href="/#pipelines">Pipelines</a>
            <a href="/events">Events</a>
          </nav>
          {props.session && (
            <form method="post" action="/logout">
              <button type="submit" class="link">Sign out</button>
            </form>
          )}
        </header>
        <main>{props.children}</main>
      </body>
    </html>
  );
}

/** A run or step status, with an icon so it does not rest on colour alone. */
export function Badge({ status, id }: { status: string; id?: string }): JSX.Element {
  return (
    <span id={id} class={`badge s-${status}`} data-status={status}>
      {ICONS[status] ?? ""} {status}
    </span>
  );
}

/**
 * What flow control says of a run, beside its status: why a queued run is held (a badge
 * whose title is the reason) and its priority when it has one.
 */
export function FlowNote({ run, now }: { run: RunRecord; now: number }): JSX.Element {
  const held = run.status === "queued" && run.held ? run.held : null;
  return (
    <>
      {held && (
        <>
          {" "}
          <span class="badge s-held" data-held={held.by} title={held.reason}>
            {heldText(held, now)}
          </span>
        </>
      )}
      {run.priority ? <small class="priority">priority {run.priority}</small> : ""}
    </>
  );
}

/** A time in UTC; the script shows it in the reader's time zone. */
export function Time({ at }: { at: number | null | undefined }): JSX.Element {
  return at === null || at === undefined
    ? <span class="muted">—</span>
    : <time datetime={new Date(at).toISOString()}>{utc(at)}</time>;
}

/** When a pipeline's schedule next fires, and on what cron; "no schedule" without one. */
export function NextRun(
  { pipeline, now }: { pipeline: Pipeline<unknown>; now: number },
): JSX.Element {
  const schedule = pipeline.schedule;
  if (!schedule) return <span class="muted">no schedule</span>;
  const [next] = nextTicks(schedule, now, 1);
  return (
    <span>
      {next === undefined ? <span class="muted">none ahead</span> : <Time at={next} />}{" "}
      <small>
        <code>{schedule.cron}</code> {schedule.timezone}
      </small>
    </span>
  );
}

/** A select option whose label is its value. */
export function Option({ value, selected }: { value: string; selected?: boolean }): JSX.Element {
  return <option value={value} selected={selected}>{value}</option>;
}

/** One row per run: status, id, pipeline, trigger, logical date, created, duration, error. */
export function RunsTable(props: { runs: RunRecord[]; now: number; id?: string }): JSX.Element {
  if (props.runs.length === 0) {
    return (
      <div id={props.id} data-live={props.id ? "" : undefined}>
        <p class="muted">No runs match.</p>
      </div>
    );
  }
  return (
    <div id={props.id} data-live={props.id ? "" : undefined}>
      <table class="stack runs">
        <thead>
          <tr>
            <th>Status</th>
            <th>Run</th>
            <th>Pipeline</th>
            <th>Trigger</th>
            <th>Logical date</th>
            <th>Created</th>
            <th>Duration</th>
            <th>Problem</th>
          </tr>
        </thead>
        <tbody>
          {props.runs.map((run) => (
            <tr data-active={TERMINAL.has(run.status) ? undefined : ""}>
              <td data-label="Status">
                <span class="status-cell">
                  <Badge status={run.status} />
                  <FlowNote run={run} now={props.now} />
                </span>
              </td>
              <td data-label="Run" class="mono id">
                <a href={runHref(run.id)}>{run.id}</a>
              </td>
              <td data-label="Pipeline">
                <a href={pipelineHref(run.pipeline)}>{run.pipeline}</a>
              </td>
              <td data-label="Trigger">{run.trigger}</td>
              <td data-label="Logical date">{run.logicalDate}</td>
              <td data-label="Created">
                <Time at={run.createdAt} />
              </td>
              <td data-label="Duration">{runDuration(run, props.now)}</td>
              <td data-label="Problem" class="err">
                {run.error
                  ? (
                    <span>
                      {run.error.step ? <b>{run.error.step}:</b> : ""}{" "}
                      {clip(run.error.message, 200)}
                    </span>
                  )
                  : ""}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/**
 * The step graph in topological layers: a step sits one layer after the last step it
 * needs, and each node names what it needs.
 */
export function StepGraph(props: {
  graph: Readonly<Record<string, readonly string[]>>;
  steps?: Map<string, TaskRecord>;
  items?: Map<string, Map<number, TaskRecord>>;
  id?: string;
}): JSX.Element {
  const layers = layersOf(props.graph);
  const parts: Child[] = [];
  layers.forEach((layer, i) => {
    if (i > 0) parts.push(<div class="arrow" aria-hidden="true"></div>);
    parts.push(
      <div class="layer">
        {layer.map((name) => {
          const task = props.steps?.get(name);
          const status: StepStatus = task?.status ?? "pending";
          const needs = props.graph[name] ?? [];
          const items = props.items?.get(name);
          return (
            <a class={`node s-${status}`} href={`#step-${name}`} data-step={name}>
              <b>{name}</b>
              {props.steps && <small data-state="">{ICONS[status]} {status}</small>}
              {task && task.attempt > 0 && (
                <small>
                  attempt {task.attempt}
                  {task.startedAt && task.endedAt
                    ? ` · ${duration(task.endedAt - task.startedAt)}`
                    : ""}
                </small>
              )}
              {task?.items !== undefined && <small>{itemSummary(task.items, items)}</small>}
              <small>{needs.length ? `needs ${needs.join(", ")}` : "needs nothing"}</small>
            </a>
          );
        })}
      </div>,
    );
  });
  return (
    <div id={props.id} data-live={props.id ? "" : undefined} class="graph">
      {parts}
    </div>
  );
}

/** The token field: asked once, kept in `sessionStorage`, never sent back by the server. */
export function TokenForm({ auth }: { auth: boolean }): JSX.Element {
  return auth
    ? (
      <div class="needs-js">
        <form id="token-form" class="token">
          <label for="token">
            API token <small>(asked once; kept in this browser tab's session only)</small>
            <input id="token" name="token" type="password" autocomplete="off" required />
          </label>
          <button type="submit">Save token</button>
        </form>
        <p id="token-saved" hidden>
          Token saved for this session.{" "}
          <button type="button" id="token-forget" class="link">Forget it</button>
        </p>
      </div>
    )
    : <p class="muted">This service takes no token: it listens on this machine only.</p>;
}

/** A params box and a Trigger button that posts them to the API. */
export function TriggerForm(props: { pipeline: string; params: unknown }): JSX.Element {
  return (
    <div class="trigger">
      <label for="trigger-params">Params (JSON)</label>
      <textarea id="trigger-params" rows={4} spellcheck={false}>
        {JSON.stringify(props.params ?? {}, null, 2)}
      </textarea>
      <p>
        <button
          type="button"
          class="primary"
          data-action="trigger"
          data-url={`/api/pipelines/${encodeURIComponent(props.pipeline)}/runs`}
        >
          Trigger
        </button>
      </p>
    </div>
  );
}

/** An error page: what went wrong, and a way back. */
export function ErrorPage(props: Frame & { status: number; message: string }): JSX.Element {
  return (
    <Layout title={props.title} auth={props.auth} session={props.session} page="error">
      <h1>{props.title}</h1>
      <p class="error-line">{props.message}</p>
      <p>
        <a href="/">Back to the runs</a>
      </p>
    </Layout>
  );
}

/** The sign-in page shown when reads need a token. */
export function LoginPage(props: { next: string; refused: boolean }): JSX.Element {
  return (
    <Layout title="Sign in" auth={false} page="login">
      <h1>Sign in</h1>
      <p>This service needs a token to show its runs.</p>
      {props.refused && <p class="say-error">That token was refused.</p>}
      <form method="post" action="/login" class="token">
        <input type="hidden" name="next" value={props.next} />
        <label for="login-token">
          Read or API token
          <input id="login-token" name="token" type="password" autocomplete="off" required />
        </label>
        <button type="submit" class="primary">Sign in</button>
      </form>
    </Layout>
  );
}
