/**
 * What a waiting run waits for, on its page: the sleep, the events (with the correlation
 * field and value) or the child run, since when and until when; and, for an event wait,
 * the buttons that send the awaited event — Approve / Reject for an approval, one button
 * per event otherwise — and a small form to send any of them with the correlation filled
 * in. The buttons call `POST /api/events` with the token, like Resume and Cancel.
 *
 * @module
 */
import type { JSX } from "hono/jsx/jsx-runtime";
import type { RunRecord, WaitState } from "../model/records.ts";
import { Time } from "./layout.tsx";
import { duration, runHref, taskLabel } from "./format.ts";

/** The event names a wait takes, as buttons: Approve / Reject when they read so. */
export function sendButtons(events: readonly string[]): { event: string; label: string }[] {
  const approve = events.find((e) => /approved$/i.test(e));
  const reject = events.find((e) => /rejected$/i.test(e));
  if (approve && reject) {
    return [{ event: approve, label: "Approve" }, { event: reject, label: "Reject" }];
  }
  return events.map((event) => ({ event, label: `Send ${event}` }));
}

/** The payload that matches a wait: its correlation field set to its value. */
export function matchingData(wait: WaitState): Record<string, string> {
  return wait.field ? { [wait.field]: wait.value ?? "" } : {};
}

/** The panel, shown while the run waits (swapped live by the script). */
export function WaitPanel({ run, now }: { run: RunRecord; now: number }): JSX.Element {
  const wait = run.status === "waiting" ? run.waitingFor : null;
  return (
    <div id="live-wait" data-live="">
      {wait && (
        <section class="panel warn" aria-labelledby="waiting-for" data-wait={wait.kind}>
          <h2 id="waiting-for">{heading(wait)}</h2>
          <dl class="facts">
            <dt>Step</dt>
            <dd class="mono">{taskLabel(wait.step, wait.item)}</dd>
            {wait.kind === "event" && (
              <>
                <dt>Events</dt>
                <dd>
                  {(wait.events ?? []).map((e, i) => (
                    <>
                      {i > 0 ? " or " : ""}
                      <code>{e}</code>
                    </>
                  ))}
                </dd>
                <dt>Correlation</dt>
                <dd data-correlation="">
                  {wait.field
                    ? <code>{`${wait.field} = ${wait.value ?? ""}`}</code>
                    : <span class="muted">any event of these names</span>}
                </dd>
              </>
            )}
            {wait.kind === "child" && wait.child && (
              <>
                <dt>Child run</dt>
                <dd>
                  <a href={runHref(wait.child)} class="mono">{wait.child}</a>
                </dd>
              </>
            )}
            <dt>Since</dt>
            <dd>
              <Time at={wait.since} />
            </dd>
            <dt>{wait.kind === "sleep" ? "Until" : "Times out"}</dt>
            <dd>
              <Time at={wait.until} />{" "}
              <small>
                {wait.until > now ? `in ${duration(wait.until - now)}` : "now: it is due"}
              </small>
            </dd>
          </dl>
          {wait.kind === "event" && <SendEvent wait={wait} />}
        </section>
      )}
    </div>
  );
}

function heading(wait: WaitState): string {
  if (wait.kind === "sleep") return "Sleeping";
  if (wait.kind === "child") return "Waiting for a child run";
  return `Waiting for ${(wait.events ?? []).join(" or ")}`;
}

function SendEvent({ wait }: { wait: WaitState }): JSX.Element {
  const events = wait.events ?? [];
  const data = matchingData(wait);
  const buttons = sendButtons(events);
  const approval = buttons.length === 2 && buttons[1].label === "Reject";
  const example = JSON.stringify(data);
  return (
    <div>
      <div class="actions needs-js">
        {buttons.map((b, i) => (
          <button
            type="button"
            class={approval ? (i === 0 ? "primary" : "danger") : undefined}
            data-action="send"
            data-url="/api/events"
            data-event={b.event}
            data-data={example}
          >
            {b.label}
          </button>
        ))}
        {approval && (
          <label>
            <span class="sr">Reason for a rejection</span>
            <input id="send-reason" placeholder="Reason (for Reject)" maxlength={500} />
          </label>
        )}
      </div>
      <details class="needs-js">
        <summary>Send an awaited event with other data</summary>
        <div class="wait-send">
          <label for="send-name">
            Event
            <select id="send-name">
              {events.map((e) => <option key={e} value={e}>{e}</option>)}
            </select>
          </label>
          <label for="send-data">
            Data (JSON{wait.field ? `; ${wait.field} must stay ${wait.value ?? ""}` : ""})
            <textarea id="send-data" rows={3} spellcheck={false}>
              {JSON.stringify(data, null, 2)}
            </textarea>
          </label>
          <p>
            <button type="button" data-action="send-form" data-url="/api/events">
              Send event
            </button>
          </p>
        </div>
      </details>
      <p class="muted">
        From a shell: <code>deno task send {events[0] ?? "<event>"} --data '{example}'</code>
      </p>
    </div>
  );
}
