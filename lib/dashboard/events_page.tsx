/**
 * The dashboard's event pages: the events, newest first, each with the runs it woke,
 * started or did not match; and one event with its payload. Plain links and a GET form,
 * so they read without JavaScript.
 *
 * @module
 */
import type { JSX } from "hono/jsx/jsx-runtime";
import type { EventEffect, EventRecord } from "../model/events.ts";
import { type Frame, Layout, Time } from "./layout.tsx";
import { clip, eventHref, runHref, safeJson, taskLabel } from "./format.ts";

/** A stored event with what it did. */
export type EventView = EventRecord & { effects: EventEffect[] };

/** What the events page shows. */
export interface EventsPageData extends Frame {
  /** A page of events, newest first. */
  events: EventView[];
  /** The next page's cursor. */
  cursor: string | null;
  /** The name filter in force. */
  name?: string;
  /** The page size. */
  limit: number;
}

/** Events on one page of the list, unless `?limit=` says otherwise. */
export const EVENTS_LIMIT = 25;

/** `GET /events`: the events, newest first, with the runs each woke or started. */
export function EventsPage(d: EventsPageData): JSX.Element {
  const next = new URLSearchParams();
  if (d.name) next.set("name", d.name);
  if (d.limit !== EVENTS_LIMIT) next.set("limit", String(d.limit));
  if (d.cursor) next.set("cursor", d.cursor);
  return (
    <Layout title="Events" auth={d.auth} session={d.session} page="events">
      <h1>Events</h1>
      <form class="filters" method="get" action="/events">
        <label>
          Name
          <input name="name" value={d.name ?? ""} placeholder="order.approved" />
        </label>
        <button type="submit">Filter</button>
        {d.name && <a href="/events">Clear filter</a>}
      </form>
      {d.events.length === 0
        ? <p class="muted">No events{d.name ? ` named ${d.name}` : ""} are stored.</p>
        : (
          <table class="stack events" id="events-table">
            <thead>
              <tr>
                <th>Sent</th>
                <th>Name</th>
                <th>Id</th>
                <th>Source</th>
                <th>Data</th>
                <th>Effect</th>
              </tr>
            </thead>
            <tbody>
              {d.events.map((event) => (
                <tr data-event={event.id}>
                  <td data-label="Sent">
                    <Time at={event.at} />
                  </td>
                  <td data-label="Name" class="mono">{event.name}</td>
                  <td data-label="Id" class="mono id">
                    <a href={eventHref(event.id)}>{event.id}</a>
                  </td>
                  <td data-label="Source">{event.source}</td>
                  <td data-label="Data" class="mono err">{clip(safeJson(event.data), 120)}</td>
                  <td data-label="Effect">
                    <Effects effects={event.effects} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      {d.cursor && (
        <p>
          <a href={`/events?${next}`}>Older events →</a>
        </p>
      )}
    </Layout>
  );
}

/** `GET /events/:id`: one event, its payload and what it did. */
export function EventPage(d: Frame & { event: EventView }): JSX.Element {
  const { event } = d;
  return (
    <Layout title={`${event.name} ${event.id}`} auth={d.auth} session={d.session} page="event">
      <p class="crumbs">
        <a href="/events">Events</a> › <span class="mono">{event.id}</span>
      </p>
      <h1>
        <span class="mono">{event.name}</span>
        <small class="mono">{event.id}</small>
      </h1>
      <section class="panel">
        <dl class="facts">
          <dt>Sent</dt>
          <dd>
            <Time at={event.at} />
          </dd>
          <dt>Source</dt>
          <dd>{event.source}</dd>
          <dt>Matched by</dt>
          <dd>
            {event.index.length === 0
              ? <span class="muted">no wait takes this name</span>
              : event.index.map(([field, value]) => (
                <code>{field === "" ? "any wait on the name" : `${field} = ${value}`}</code>
              ))}
          </dd>
          <dt>Data</dt>
          <dd>
            <pre>{JSON.stringify(event.data, null, 2)}</pre>
          </dd>
        </dl>
      </section>
      <h2>What it did</h2>
      <Effects effects={event.effects} />
    </Layout>
  );
}

const VERB: Record<EventEffect["kind"], string> = {
  woke: "woke",
  started: "started",
  joined: "joined the burst of",
  mismatch: "did not match",
};

/** Each run an event woke, started or did not match, linked. */
function Effects({ effects }: { effects: EventEffect[] }): JSX.Element {
  if (effects.length === 0) return <span class="muted">no run waited for it</span>;
  return (
    <ul class="effects">
      {effects.map((e) => (
        <li data-effect={e.kind}>
          {VERB[e.kind]} <a href={runHref(e.runId)} class="mono">{e.runId}</a>
          {e.step ? <small>{` at ${taskLabel(e.step, e.item)}`}</small> : ""}
          {e.message ? <div class="err">{clip(e.message, 300)}</div> : ""}
        </li>
      ))}
    </ul>
  );
}
