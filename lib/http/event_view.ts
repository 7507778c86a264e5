/**
 * What the API (and the dashboard) show of events: the stored event with what it did to
 * which runs, each with a link, and the answer to a send.
 *
 * @module
 */
import type { EventEffect, EventRecord } from "../model/events.ts";
import type { EventJson } from "./schemas.ts";
import { eventUrl, runUrl } from "./run_view.ts";

/**
 * An event as the API shows it.
 *
 * @param event the stored event, with its effects when they were read
 * @returns the JSON shape of `Event`
 */
export function eventJson(event: EventRecord & { effects?: EventEffect[] }): EventJson {
  return {
    id: event.id,
    name: event.name,
    data: event.data,
    at: event.at,
    source: event.source,
    started: [...event.started],
    effects: (event.effects ?? []).map(effectJson),
    url: eventUrl(event.id),
  };
}

function effectJson(effect: EventEffect): EventJson["effects"][number] {
  return {
    kind: effect.kind,
    runId: effect.runId,
    // a started run's effect names no step
    step: effect.step === "" ? null : effect.step,
    item: effect.item,
    at: effect.at,
    ...(effect.message !== undefined ? { message: effect.message } : {}),
    url: runUrl(effect.runId),
  };
}
