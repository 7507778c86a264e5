/**
 * The grid of a pipeline page: its runs as columns (newest first), its steps as rows (in
 * the pipeline's order), each cell the step's status and duration in that run, linked to
 * the attempt on the run page; each row ends with the step's success rate over the runs
 * shown and its duration trend, an SVG drawn here. A real table in a scrolling box, with
 * every status written out, so it reads without colour, without JavaScript and on a phone.
 *
 * @module
 */
import type { JSX } from "hono/jsx/jsx-runtime";
import type { RunRecord, TaskRecord } from "../model/records.ts";
import { cellKey, type GridTasks, type ItemCounts } from "../store/grid.ts";
import { attemptAnchor, duration, ICONS, pipelineHref, runHref, utc } from "./format.ts";

/** Runs in the grid unless `?runs=` says otherwise. */
export const GRID_RUNS = 25;

/** The most runs `?runs=` may ask for. */
export const GRID_MAX_RUNS = 100;

/** What the grid shows. */
export interface GridData {
  /** The pipeline. */
  pipeline: string;
  /** Its steps, in definition order: the rows. */
  steps: readonly string[];
  /** The runs shown, newest first: the columns. */
  runs: RunRecord[];
  /** Their step records and fan-out item counts. */
  tasks: GridTasks;
  /** The size of a page, as asked. */
  size: number;
  /** The oldest run shown, when older runs exist. */
  older: string | null;
  /** The newest run shown, when newer runs exist. */
  newer: string | null;
  /** Render time. */
  now: number;
}

/** One cell: what a step did in a run. */
interface Cell {
  run: RunRecord;
  /** The step's status, or `absent` when the run's graph has no such step. */
  status: string;
  record: TaskRecord | undefined;
  /** Ended cells only. */
  ms: number | null;
  items: ItemCounts | undefined;
}

/** `GET /pipelines/:name` grid section. */
export function RunGrid(d: GridData): JSX.Element {
  const link = (change: { before?: string; after?: string }) => {
    const q = new URLSearchParams();
    if (d.size !== GRID_RUNS) q.set("runs", String(d.size));
    if (change.before) q.set("before", change.before);
    if (change.after) q.set("after", change.after);
    return `${pipelineHref(d.pipeline)}?${q}#grid`;
  };
  const paging = (d.older || d.newer) && (
    <nav class="grid-paging" aria-label="Grid pages">
      {d.newer ? <a href={link({ after: d.newer })} rel="prev">← newer</a> : <span />}
      {d.older ? <a href={link({ before: d.older })} rel="next">older →</a> : <span />}
    </nav>
  );
  return (
    <section id="grid" aria-labelledby="grid-title">
      <h2 id="grid-title">Runs by step</h2>
      {d.runs.length === 0 ? <p class="muted">No runs yet.</p> : (
        <>
          <p class="muted">
            {d.runs.length}{" "}
            run{d.runs.length === 1 ? "" : "s"}, newest first; each cell is the step's status in
            that run and how long it took, linked to its attempt.{" "}
            <a href={link({})}>Newest {d.size}</a>
          </p>
          {paging}
          <div class="grid-wrap" tabindex={0} role="region" aria-labelledby="grid-title">
            <table class="grid">
              <thead>
                <tr>
                  <th scope="col" class="grid-step">Step</th>
                  {d.runs.map((run) => <RunHeader key={run.id} run={run} />)}
                  <th scope="col" class="grid-rate">Success</th>
                  <th scope="col">Duration trend</th>
                </tr>
              </thead>
              <tbody>
                {d.steps.map((step) => <StepRow key={step} {...d} step={step} />)}
              </tbody>
            </table>
          </div>
          {paging}
        </>
      )}
    </section>
  );
}

function RunHeader({ run }: { run: RunRecord }): JSX.Element {
  return (
    <th
      scope="col"
      data-run={run.id}
      title={`${run.id}: ${run.status}, created ${utc(run.createdAt)}`}
    >
      <a href={runHref(run.id)} class={`grid-run s-${run.status}`}>
        <span aria-hidden="true">{ICONS[run.status] ?? ""}</span>{" "}
        <span class="sr">run {run.id}, {run.status},</span> {run.logicalDate}{" "}
        <small>{utc(run.createdAt).slice(11, 16)}</small>
      </a>
    </th>
  );
}

function StepRow(d: GridData & { step: string }): JSX.Element {
  const cells: Cell[] = d.runs.map((run) => {
    const key = cellKey(run.id, d.step);
    const record = d.tasks.steps.get(key);
    const known = run.graph === null || d.step in run.graph;
    return {
      run,
      status: record?.status ?? (known ? "pending" : "absent"),
      record,
      ms: record?.startedAt && record.endedAt ? record.endedAt - record.startedAt : null,
      items: d.tasks.items.get(key),
    };
  });
  const succeeded = cells.filter((c) => c.status === "succeeded").length;
  const ended = cells.filter((c) => c.status === "succeeded" || c.status === "failed").length;
  return (
    <tr data-step={d.step}>
      <th scope="row" class="grid-step mono" title={d.step}>{d.step}</th>
      {cells.map((cell) => <GridCell key={cell.run.id} cell={cell} step={d.step} now={d.now} />)}
      <td
        class="grid-rate"
        data-rate={ended ? String(succeeded / ended) : ""}
        title={`succeeded in ${succeeded} of the ${ended} shown runs where it ended`}
      >
        {ended ? `${Math.round((100 * succeeded) / ended)} %` : "—"}{" "}
        <small>{succeeded}/{ended}</small>
      </td>
      <td class="grid-trend">
        <Trend step={d.step} cells={[...cells].reverse()} />
      </td>
    </tr>
  );
}

function GridCell({ cell, step, now }: { cell: Cell; step: string; now: number }): JSX.Element {
  const { run, record, status } = cell;
  if (status === "absent") {
    return (
      <td class="grid-cell" data-run={run.id} data-status="absent">
        <span class="cell s-absent" title={`${step} is not a step of this run's version`}>
          <span aria-hidden="true">·</span>
          <span class="sr">not in this run</span>
        </span>
      </td>
    );
  }
  const history = record ? (record.base ?? 0) + record.attempt : 0;
  // an attempt is on the run page once it ended; a fan-out step's are under its row
  const anchor = record?.items === undefined && history > 0 && record?.endedAt
    ? attemptAnchor(step, -1, history)
    : `step-${step}`;
  const time = cell.ms !== null
    ? duration(cell.ms)
    : record?.status === "running" && record.startedAt
    ? `${duration(now - record.startedAt)}…`
    : "";
  const tries = history > 1 ? `${history} attempts` : history === 1 ? "1 attempt" : "not started";
  const items = cell.items;
  const title = [
    `${step} in ${run.id}: ${status}`,
    time && `took ${time}`,
    record?.items === undefined
      ? tries
      : items
      ? `${items.succeeded} of ${items.total} items succeeded, ${items.failed} failed`
      : `${record.items} items (too many to count on this page)`,
    record?.error ? `error: ${record.error.message.slice(0, 200)}` : "",
  ].filter(Boolean).join("; ");
  return (
    <td class="grid-cell" data-run={run.id} data-status={status}>
      <a href={`${runHref(run.id)}#${anchor}`} class={`cell s-${status}`} title={title}>
        <span aria-hidden="true">{ICONS[status] ?? ""}</span> <span class="sr">{status}</span>
        {time && ` ${time}`}
        {history > 1 && record?.items === undefined && <small class="tries">{` ×${history}`}
        </small>}
        {record?.items !== undefined && (
          <small class="items" data-items={items ? `${items.succeeded}/${items.total}` : ""}>
            {items
              ? ` ${items.succeeded}/${items.total} ✓${items.failed ? ` ${items.failed} ✗` : ""}`
              : ` ${record.items} items`}
          </small>
        )}
      </a>
    </td>
  );
}

const TREND_WIDTH = 120;
const TREND_HEIGHT = 28;

/** The durations of the step's ended cells, oldest to newest, as a line with a dot per run. */
function Trend({ step, cells }: { step: string; cells: Cell[] }): JSX.Element {
  const points = cells
    .map((cell, i) => ({ cell, i }))
    .filter(({ cell }) =>
      cell.ms !== null && (cell.status === "succeeded" || cell.status === "failed")
    );
  if (points.length === 0) return <span class="muted">—</span>;
  const max = Math.max(...points.map((p) => p.cell.ms!), 1);
  const pad = 3;
  const x = (i: number) =>
    cells.length === 1 ? TREND_WIDTH / 2 : pad + (i * (TREND_WIDTH - 2 * pad)) / (cells.length - 1);
  const y = (ms: number) => TREND_HEIGHT - pad - (ms / max) * (TREND_HEIGHT - 2 * pad);
  const at = points.map((p) => [x(p.i), y(p.cell.ms!)].map((n) => n.toFixed(1)));
  const label = `${step} duration, oldest to newest: ${
    points.map((p) => `${duration(p.cell.ms!)}${p.cell.status === "failed" ? " (failed)" : ""}`)
      .join(", ")
  }`;
  return (
    <svg
      class="trend"
      width={TREND_WIDTH}
      height={TREND_HEIGHT}
      viewBox={`0 0 ${TREND_WIDTH} ${TREND_HEIGHT}`}
      role="img"
      aria-label={label}
    >
      <title>{label}</title>
      {points.length > 1 && <polyline points={at.map((p) => p.join(",")).join(" ")} />}
      {points.map((p, j) => (
        <circle cx={at[j][0]} cy={at[j][1]} r="2.2" class={`t-${p.cell.status}`}>
          <title>
            {p.cell.run.logicalDate} {p.cell.run.id}: {duration(p.cell.ms!)}, {p.cell.status}
          </title>
        </circle>
      ))}
    </svg>
  );
}
