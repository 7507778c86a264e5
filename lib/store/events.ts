/**
 * Events: sending (store first, then wake the waits that match and start the runs that
 * the event triggers, in one commit), the lookup a starting wait makes, listing, and
 * pruning past their retention.
 *
 * Matching is by (event name, payload field, value) through KV indexes: a send lists the
 * wait entries of its correlations, never the waiting runs. An event and a wait that race
 * are matched exactly once: both commit with a check on the correlation's head entry, and
 * both bump it, so the later commit fails its check and looks again, seeing the other; and each delivery checks the wait's entry
 * and deletes every entry of that wait, so a wait takes one event, the first.
 *
 * @module
 */
import type { Pipeline } from "../define/pipeline.ts";
import { checkEventName, isEventName } from "../define/wait.ts";
import {
  checkEventId,
  correlationOf,
  type Delivery,
  type EventEffect,
  type EventRecord,
  eventRunId,
  type EventSource,
  MAX_EVENT_BYTES,
  newEventId,
  type RungDue,
  type WaitEntry,
} from "../model/events.ts";
import { UsageError } from "../model/errors.ts";
import type { RunRecord } from "../model/records.ts";
import * as keys from "../kv/keys.ts";
import { KV_COMMIT_CHECKS, REMOTE_KV_COMMIT_CHECKS } from "../kv/limits.ts";
import { addWrites, commitAtomic, type KvWrite } from "../kv/commit.ts";
import { getAll, listAfter } from "../kv/reads.ts";
import { addRunCreation, newRun } from "./commands.ts";
import type { StoreParts } from "./parts.ts";
import { addTrigger, debounceOf, readBurst } from "./debounce.ts";
import type { AtomicOperation, KvEntry, KvEntryMaybe, KvKey } from "../kv/kv.ts";

/** What the engine knows about event names: the correlations waits use, and triggers. */
export interface EventRegistry {
  /** The payload fields waits on `name` match by ("" for a wait that takes any). */
  fields(name: string): readonly string[];
  /** The pipelines `name` starts, with their payload-to-params functions. */
  triggers(
    name: string,
  ): readonly {
    pipeline: Pipeline<unknown>;
    params: (data: unknown) => unknown;
    priority?: number;
  }[];
}

/** What to send. */
export interface SendInput {
  /** The event's name. */
  name: string;
  /** Its payload: JSON data, at most 32 KiB. */
  data?: unknown;
  /** An id that makes the send idempotent: a repeat stores nothing and wakes nobody. */
  id?: string;
  /** How it was sent. Default `code`. */
  source?: EventSource;
}

/** What a send did. */
export interface SendResult {
  /** The event as stored (the first one, for a repeated id). */
  event: EventRecord;
  /** Whether the id had been sent before: then nothing was stored or woken. */
  duplicate: boolean;
  /** The waits it ended (runs, steps and items). */
  woke: { runId: string; step: string; item: number }[];
  /** The runs it started (for a debounced pipeline: the burst it began, held). */
  started: RunRecord[];
  /** The queued runs of debounced pipelines whose bursts it joined, as it left them. */
  joined: RunRecord[];
}

/** A wait found by a lookup, with its entry as read. */
type FoundWait = KvEntry<WaitEntry>;

/**
 * Sends an event: stores it, ends every wait it matches and starts the runs its name
 * triggers, in one commit (more when it wakes more waits than one commit may check; a
 * worker finishes those from the event's outbox entry if the sender dies).
 *
 * @throws {UsageError} on a bad name, id or payload, or a payload that a triggered
 * pipeline refuses (code `invalid_params`, naming the pipeline and the field); nothing
 * is stored then
 */
export async function sendEvent(
  store: StoreParts,
  registry: EventRegistry,
  input: SendInput,
): Promise<SendResult> {
  if (!isEventName(input?.name)) {
    try {
      checkEventName(input?.name);
    } catch (error) {
      throw new UsageError((error as Error).message, "invalid_event", [{
        path: ["name"],
        message: "Invalid event name",
      }]);
    }
  }
  const name = input.name;
  const data = input.data === undefined ? null : input.data;
  const json = plainJson(data);
  if (json.length > MAX_EVENT_BYTES) {
    throw new UsageError(
      `Event '${name}' is too large: its data takes ${json.length} bytes as JSON, at most ${MAX_EVENT_BYTES}`,
      "too_large",
      [{ path: ["data"], message: "Too large" }],
    );
  }
  const now = store.clock.now();
  const id = input.id === undefined ? newEventId(now) : checkEventId(input.id);
  const existing = await store.kv.get<EventRecord>(keys.event(id));
  if (existing.value) {
    return { event: existing.value, duplicate: true, woke: [], started: [], joined: [] };
  }
  // Triggers first: a payload that a pipeline refuses stores nothing.
  const runs: RunRecord[] = [];
  for (const trigger of registry.triggers(name)) {
    let params: unknown;
    try {
      params = trigger.params(structuredClone(data));
    } catch (error) {
      throw new UsageError(
        `Event '${name}' cannot start pipeline '${trigger.pipeline.name}': its params function threw: ${
          error instanceof Error ? error.message : String(error)
        }`,
        "invalid_params",
        [{ path: ["data"], message: "Not accepted by the trigger" }],
      );
    }
    try {
      runs.push(newRun(store, trigger.pipeline, {
        id: eventRunId(trigger.pipeline.name, id),
        params,
        trigger: "event",
        event: id,
        priority: trigger.priority,
      }));
    } catch (error) {
      if (!(error instanceof UsageError)) throw error;
      throw new UsageError(
        `Event '${name}' cannot start pipeline '${trigger.pipeline.name}': ${error.message}`,
        error.code,
        error.issues?.map((i) => ({ path: ["data", ...i.path], message: i.message })),
      );
    }
  }
  const index: [string, string][] = [];
  for (const field of registry.fields(name)) {
    const value = correlationOf(data, field);
    if (value !== undefined) index.push([field, value]);
  }
  const debounced = runs.map((run, i) => debounceOf(registry.triggers(name)[i].pipeline, run));
  const base: Omit<EventRecord, "started"> = {
    id,
    name,
    data,
    at: now,
    source: input.source ?? "code",
    index,
  };
  // each debounced trigger checks its burst's entry and run
  const burstChecks = 2 * debounced.filter((d) => d !== null).length;
  const budget = deliveryBudget(store, index.length + burstChecks, json.length);
  for (let tries = 0; tries < 50; tries++) {
    const heads = await getAll(store.kv, index.map(([f, v]) => keys.eventHead(name, f, v)));
    const waits = await matchingWaits(store, name, index);
    const op = store.kv.atomic().check({ key: keys.event(id), versionstamp: null });
    for (const head of heads) op.check(head).set(head.key, id);
    const started: RunRecord[] = [], joined: RunRecord[] = [];
    for (const [i, fresh] of runs.entries()) {
      const of = debounced[i];
      let run = fresh;
      if (of) {
        // a burst's run gathers its triggers: the event starts or joins it
        const burst = await readBurst(store, fresh.pipeline, of.key);
        const done = addTrigger(store, op, burst, fresh, of.debounce, of.key);
        run = done.run;
        (done.joined ? joined : started).push(run);
      } else {
        addRunCreation(store, op, run);
        started.push(run);
      }
      // an event that joined a debounced burst's queued run did not start it
      const record = effect(run.id === fresh.id ? "started" : "joined", run.id, "", -1, now);
      op.set(keys.eventEffect(id, run.id, "", -1), record);
    }
    const event: EventRecord = { ...base, started: [...started, ...joined].map((r) => r.id) };
    op.set(keys.event(id), event).set(keys.eventsByTime(now, id), name);
    for (const [f, v] of index) op.set(keys.eventIndex(name, f, v, now, id), null);
    const first = waits.slice(0, budget);
    for (const wait of first) deliverEvent(store, op, wait, event);
    if (waits.length > first.length) op.set(keys.eventOutbox(id), now);
    const result = await commitAtomic(op);
    if (result.ok) {
      const woke = first.map((w) => ({
        runId: w.value.runId,
        step: w.value.step,
        item: w.value.item,
      }));
      if (waits.length > first.length) woke.push(...await finishDeliveries(store, event));
      return { event, duplicate: false, woke, started, joined };
    }
    const again = await store.kv.get<EventRecord>(keys.event(id));
    if (again.value) {
      return { event: again.value, duplicate: true, woke: [], started: [], joined: [] };
    }
    // a run this send would create exists, though its event does not: an id sent before
    // whose event is past its retention while the run it started is kept (or a run started
    // by hand with that id). A second run for one id is what the id is there to stop.
    const made = started.filter((run) => runs.some((fresh) => fresh.id === run.id));
    const kept = (await getAll<RunRecord>(store.kv, made.map((r) => keys.run(r.id))))
      .find((e) => e.value);
    if (kept) {
      // a send of the same id that committed since the read above made that run too
      const late = await store.kv.get<EventRecord>(keys.event(id));
      if (late.value) {
        return { event: late.value, duplicate: true, woke: [], started: [], joined: [] };
      }
      throw new UsageError(
        `Event id '${id}' cannot start run ${
          kept.value!.id
        }: a run with that id exists (the id was sent before and its event is past its retention, or the run was started with that id); send it with a new id`,
        "conflict",
      );
    }
    // a wait started, or another send bumped a head: look again
    await new Promise((r) => setTimeout(r, Math.random() * 2 * Math.min(tries, 10)));
  }
  throw new UsageError(
    `Event '${name}' could not be stored: its waits kept changing; send it again (with the same id)`,
    "conflict",
  );
}

/**
 * Delivers what an event's first commit could not (a send that woke more waits than one
 * commit may check): from its outbox entry, in commits of the budget, then deletes the
 * entry. Safe to repeat: each delivery checks its wait's entry, which it deletes.
 *
 * @returns the waits it ended
 */
export async function finishDeliveries(
  store: StoreParts,
  event: EventRecord,
): Promise<{ runId: string; step: string; item: number }[]> {
  const woke: { runId: string; step: string; item: number }[] = [];
  const budget = deliveryBudget(store, 0, JSON.stringify(event.data).length);
  for (let tries = 0; tries < 1000; tries++) {
    const waits = await matchingWaits(store, event.name, event.index);
    const op = store.kv.atomic();
    const batch = waits.slice(0, budget);
    for (const wait of batch) deliverEvent(store, op, wait, event);
    if (waits.length <= budget) op.delete(keys.eventOutbox(event.id));
    const result = await commitAtomic(op);
    if (result.ok) {
      woke.push(
        ...batch.map((w) => ({ runId: w.value.runId, step: w.value.step, item: w.value.item })),
      );
      if (waits.length <= budget) return woke;
    }
  }
  return woke;
}

/**
 * Finishes the deliveries of events whose sender died before it delivered them all.
 *
 * @returns how many events it finished
 */
export async function finishOutbox(store: StoreParts, olderThanMs = 5000): Promise<number> {
  let done = 0;
  const cutoff = store.clock.now() - olderThanMs;
  for await (const entry of store.kv.list<number>({ prefix: keys.eventOutboxPrefix() })) {
    if (entry.value > cutoff) continue;
    const id = entry.key[2] as string;
    const event = await store.kv.get<EventRecord>(keys.event(id));
    if (!event.value) {
      await store.kv.delete(entry.key);
      continue;
    }
    await finishDeliveries(store, event.value);
    done++;
  }
  return done;
}

/** Every wait entry of the event's correlations, once per waiting task. */
async function matchingWaits(
  store: StoreParts,
  name: string,
  index: readonly [string, string][],
): Promise<FoundWait[]> {
  const found = new Map<string, FoundWait>();
  for (const [field, value] of index) {
    for await (
      const entry of store.kv.list<WaitEntry>({ prefix: keys.waitEntryPrefix(name, field, value) })
    ) {
      const w = entry.value;
      found.set(`${w.runId}\u0000${w.step}\u0000${w.item}`, entry);
    }
  }
  return [...found.values()];
}

/** How many waits one send commit may end: bounded by KV's checks and bytes. */
function deliveryBudget(store: StoreParts, heads: number, dataBytes: number): number {
  const checks = (store.queues ? KV_COMMIT_CHECKS : REMOTE_KV_COMMIT_CHECKS) - 1 - heads;
  // a delivery copies the payload into the inbox; keep a commit well under 800 KiB
  const bytes = Math.floor(500_000 / (dataBytes + 2048));
  return Math.max(1, Math.min(checks, bytes, 60));
}

/**
 * Adds to `op` the end of one wait by an event: a check that the wait's entry is still
 * there (so a wait that timed out, was cancelled or took another event is left alone),
 * the deletion of all its entries, the delivery to its inbox, its bell, a due entry for
 * now (the guarantee that the run looks at it) and a queue hint.
 */
function deliverEvent(
  store: StoreParts,
  op: AtomicOperation,
  wait: FoundWait,
  event: EventRecord,
): void {
  const w = wait.value;
  op.check(wait);
  for (const name of w.names) {
    op.delete(keys.waitEntry(name, w.field, w.value, w.runId, w.step, w.item));
  }
  const delivery: Delivery = {
    kind: "event",
    event: { name: event.name, id: event.id, at: event.at },
    data: event.data,
    dueAt: event.at,
  };
  ring(store, op, w.runId, w.step, w.item, delivery);
  op.set(
    keys.eventEffect(event.id, w.runId, w.step, w.item),
    effect("woke", w.runId, w.step, w.item, event.at),
  );
}

/**
 * Adds to `op` a delivery to a run's inbox: the entry, the run's bell, a due entry at
 * `delivery.dueAt` whose value names the delivery, and a queue hint.
 */
export function ring(
  store: StoreParts,
  op: AtomicOperation,
  runId: string,
  step: string,
  item: number,
  delivery: Delivery,
): void {
  op.set(keys.inbox(runId, step, item), delivery)
    .set(keys.bell(runId), delivery.dueAt)
    .set(keys.due(delivery.dueAt, runId), { rung: [step, item] } satisfies RungDue);
  store.wake(op, runId, 0);
}

function effect(
  kind: EventEffect["kind"],
  runId: string,
  step: string,
  item: number,
  at: number,
): EventEffect {
  return { kind, runId, step, item, at };
}

/**
 * The first stored event a starting wait takes: of `names`, with payload field `field`
 * equal to `value`, sent after `after`, earliest first, whose payload passes its schema.
 * Events that fail their schema are returned as mismatches, to be recorded.
 */
export async function lookupEvents(
  store: StoreParts,
  wait: { names: readonly string[]; field: string; value: string; after: number },
  accepts: (event: EventRecord) => string | null,
): Promise<{ found: EventRecord | null; mismatches: { event: EventRecord; message: string }[] }> {
  const candidates: { at: number; id: string }[] = [];
  for (const name of wait.names) {
    const prefix = keys.eventIndexPrefix(name, wait.field, wait.value);
    const iter = store.kv.list<null>({
      start: [...prefix, wait.after + 1],
      end: [...prefix, Number.MAX_SAFE_INTEGER],
    }, {
      limit: 100,
    });
    for await (const entry of iter) {
      candidates.push({ at: entry.key[5] as number, id: entry.key[6] as string });
    }
  }
  candidates.sort((a, b) => a.at - b.at || (a.id < b.id ? -1 : 1));
  const mismatches: { event: EventRecord; message: string }[] = [];
  for (let i = 0; i < candidates.length; i += 10) {
    const entries = await store.kv.getMany<EventRecord[]>(
      candidates.slice(i, i + 10).map((c) => keys.event(c.id)),
    );
    for (const entry of entries) {
      if (!entry.value) continue; // pruned meanwhile
      const problem = accepts(entry.value);
      if (problem === null) return { found: entry.value, mismatches };
      mismatches.push({ event: entry.value, message: problem });
    }
  }
  return { found: null, mismatches };
}

/**
 * Adds to `op` the deletes of the `heads` (as read) that nothing bumped since the send of
 * event `last`, each checked. Only for an event past its retention: a send or a wait that
 * read a head absent and checks it absent must not find it absent again within its own
 * commit's time, or the two could miss each other; days later, none is still in flight.
 */
function addHeadDeletes(
  op: AtomicOperation,
  heads: readonly KvEntryMaybe<string>[],
  last: string,
): void {
  for (const head of heads) {
    if (head.value === last) op.check(head).delete(head.key);
  }
}

/** The heads a starting wait checks: one per event name, for its correlation. */
export function waitHeads(
  names: readonly string[],
  field: string,
  value: string,
): KvKey[] {
  return names.map((name) => keys.eventHead(name, field, value));
}

/**
 * Adds to `op` a wait's index entries (one per name), each checked to be new. The heads
 * read before the lookup are checked by the caller.
 */
export function addWaitEntries(op: AtomicOperation, wait: WaitEntry): void {
  for (const name of wait.names) {
    const key = keys.waitEntry(name, wait.field, wait.value, wait.runId, wait.step, wait.item);
    op.set(key, wait);
  }
}

/** Adds to `op` the deletion of a wait's index entries. */
export function deleteWaitEntries(
  op: AtomicOperation,
  wait: Omit<WaitEntry, "names"> & { names: readonly string[] },
): void {
  addWrites(op, waitEndWrites(wait));
}

/**
 * The writes of {@linkcode deleteWaitEntries}. The heads of its correlation stay: deleting
 * one would let a send and a wait that both read it absent pass their checks and miss each
 * other (an event's heads go with the event, days after any race, `pruneEvents`).
 */
export function waitEndWrites(
  wait: Omit<WaitEntry, "names"> & { names: readonly string[] },
): KvWrite[] {
  return wait.names.map((name): KvWrite => [
    keys.waitEntry(name, wait.field, wait.value, wait.runId, wait.step, wait.item),
    null,
  ]);
}

/** What starts the value a wait writes to its heads: no event id can start so (`EVENT_ID`). */
const WAIT_HEAD = "(wait)";

/**
 * What a wait starting at `now` writes to its correlation's heads: a value that names no
 * run or event, with the time, so that a head no event bumped since can be forgotten once
 * old ({@linkcode pruneWaitHeads}).
 */
export function waitHead(now: number): string {
  return `${WAIT_HEAD} ${now}`;
}

/**
 * When a wait wrote a head's `value` ({@linkcode waitHead}), ms; 0 for one written before
 * heads held the time; null when an event wrote it (its value is the event's id).
 */
export function waitHeadTime(value: unknown): number | null {
  if (typeof value !== "string" || !value.startsWith(WAIT_HEAD)) return null;
  const at = Number(value.slice(WAIT_HEAD.length + 1));
  return value.length > WAIT_HEAD.length && Number.isFinite(at) ? at : 0;
}

/** Records what an event did to a run (a mismatch, say), outside a send's commit. */
export async function recordEffect(
  store: StoreParts,
  eventId: string,
  e: EventEffect,
): Promise<void> {
  await commitAtomic(store.kv.atomic().set(keys.eventEffect(eventId, e.runId, e.step, e.item), e));
}

/** One page of stored events, newest first. */
export interface EventPage {
  /** The events, each with what it did to which runs. */
  events: (EventRecord & { effects: EventEffect[] })[];
  /** Pass as `cursor` for the next page; null at the end. */
  cursor: string | null;
}

/** Lists stored events, newest first, with what each did. */
export async function listEvents(
  store: StoreParts,
  options: { name?: string; limit?: number; cursor?: string } = {},
): Promise<EventPage> {
  const limit = Math.max(1, Math.min(options.limit ?? 50, 500));
  const events: (EventRecord & { effects: EventEffect[] })[] = [];
  const iter = store.kv.list<string>({ prefix: keys.eventsByTimePrefix() }, {
    reverse: true,
    cursor: options.cursor,
    limit: options.name ? undefined : limit,
  });
  for await (const entry of iter) {
    if (options.name && entry.value !== options.name) continue;
    const record = await getEvent(store, entry.key[3] as string);
    if (record) events.push(record);
    if (events.length >= limit) break;
  }
  return { events, cursor: events.length >= limit && iter.cursor ? iter.cursor : null };
}

/** One stored event with what it did, or null. */
export async function getEvent(
  store: StoreParts,
  id: string,
): Promise<(EventRecord & { effects: EventEffect[] }) | null> {
  const entry = await store.kv.get<EventRecord>(keys.event(id));
  if (!entry.value) return null;
  const effects: EventEffect[] = [];
  for await (
    const e of store.kv.list<EventEffect>({ prefix: keys.eventEffectPrefix(id) }, { limit: 1000 })
  ) {
    effects.push(e.value);
  }
  return { ...entry.value, effects };
}

/**
 * Deletes events stored before `before`, with their index entries, effects and the heads
 * they bumped last, a commit each. A wait that starts later no longer finds them.
 *
 * @param options `max` events looked at, at most (all without it); `dryRun` counts what
 *   would go and deletes nothing
 * @returns how many events it deleted (or would delete)
 */
export async function pruneEvents(
  store: StoreParts,
  before: number,
  options: { max?: number; dryRun?: boolean } = {},
): Promise<number> {
  let pruned = 0;
  const iter = store.kv.list<string>({
    prefix: keys.eventsByTimePrefix(),
    end: keys.eventsByTime(before, ""),
  }, {
    limit: options.max,
  });
  for await (const entry of iter) {
    if (options.dryRun) {
      pruned++;
      continue;
    }
    const id = entry.key[3] as string;
    // a very busy event's effects go first, in commits of their own: the event stays
    // listed by time until they are all gone, so a prune that stops between finds it again
    let effects: KvKey[];
    do {
      effects = [];
      const list = store.kv.list({ prefix: keys.eventEffectPrefix(id) }, { limit: 801 });
      for await (const e of list) effects.push(e.key);
      if (effects.length <= 800) break;
      const op = store.kv.atomic();
      for (const key of effects.slice(0, 800)) op.delete(key);
      await commitAtomic(op);
    } while (true);
    const event = await store.kv.get<EventRecord>(keys.event(id));
    const op = store.kv.atomic().delete(entry.key);
    for (const key of effects) op.delete(key);
    if (event.value) {
      op.check(event).delete(event.key);
      const { name, index, at } = event.value;
      for (const [f, v] of index) op.delete(keys.eventIndex(name, f, v, at, id));
      // the heads it bumped last go too: one per correlation would pile up for ever
      addHeadDeletes(
        op,
        await getAll(store.kv, index.map(([f, v]) => keys.eventHead(name, f, v))),
        id,
      );
    }
    if ((await commitAtomic(op)).ok) pruned++;
  }
  return pruned;
}

/**
 * How long a process must have seen a wait's head unchanged before it deletes it: a send
 * or a wait that read the correlation's head absent just before the wait wrote it must
 * have committed (or failed its check) long before, or the delete would let it pass its
 * check of an absent head and miss the wait.
 */
export const WAIT_HEAD_MIN_AGE_MS = 3_600_000;

/**
 * The old wait heads a process saw (by key: when it first saw each, at which versionstamp,
 * and in which walk of the heads it saw it last), kept across the passes of its prunes.
 */
export class HeadSightings {
  /** The heads seen, by key as JSON. */
  readonly seen = new Map<string, { versionstamp: string; at: number; walk: number }>();
  /** The walk of the heads under way: a pass that reaches their end starts the next. */
  walk = 0;

  /** A walk reached the end: forgets the heads it did not see (deleted by others, say). */
  wrapped(): void {
    for (const [id, s] of this.seen) if (s.walk < this.walk) this.seen.delete(id);
    this.walk++;
  }
}

/** The most heads a process keeps sightings of; past it, more wait for a later walk. */
const MAX_SIGHTINGS = 100_000;

/**
 * Forgets the heads of correlations that a wait bumped last before `before`: a wait on an
 * order id that timed out, say, with no event ever sent for it, would keep its head for
 * ever. An event's heads go with the event (`pruneEvents`). A head is a fence, not a
 * record: with it absent, the next wait or send of the correlation writes it again,
 * checked absent, so the two still meet.
 *
 * When the wait wrote it (its value's time) only picks candidates; what makes a delete
 * safe is that this process itself saw the head at the same versionstamp at least
 * {@linkcode WAIT_HEAD_MIN_AGE_MS} ago, by its own clock (`sightings`, kept across passes;
 * a monotonic one where the store's clock has it, `Clock.elapsed`),
 * and checks that versionstamp in the delete: no clock of another process, nor the time
 * an older version of kvflow left out of its heads, can make a head written a moment ago
 * look old. A process that prunes once (`deno task prune`) only notes them.
 *
 * @param options dry or not (a dry run counts the heads a real one would delete now);
 *   `budget` heads looked at, at most (all without it), going on from `cursor.heads`,
 *   which is moved to where it stopped (undefined: the end)
 * @returns how many heads it deleted (or would delete)
 */
export async function pruneWaitHeads(
  store: StoreParts,
  before: number,
  sightings: HeadSightings,
  options: { dryRun?: boolean; budget?: number; cursor?: { heads?: KvKey } } = {},
): Promise<number> {
  const budget = options.budget ?? Infinity;
  const cursor = options.cursor ?? {};
  const { seen: sighted, walk } = sightings;
  let forgotten = 0;
  let old: KvEntry<string>[] = [];
  const flush = async () => {
    if (old.length === 0) return;
    const op = store.kv.atomic();
    for (const head of old) op.check(head).delete(head.key);
    // one bumped since it was listed fails them all: the next pass looks again
    if ((await commitAtomic(op)).ok) {
      forgotten += old.length;
      for (const head of old) sighted.delete(JSON.stringify(head.key));
    }
    old = [];
  };
  let looked = 0;
  cursor.heads = await listAfter<string>(
    store.kv,
    keys.eventHeadPrefix(),
    cursor.heads,
    async (head) => {
      const id = JSON.stringify(head.key);
      const at = waitHeadTime(head.value);
      const seen = sighted.get(id);
      // an hour that a correction of the wall clock cannot shorten, where there is one
      const now = store.clock.elapsed?.() ?? store.clock.now();
      if (at === null || at >= before) {
        sighted.delete(id);
      } else if (seen?.versionstamp !== head.versionstamp) {
        // first seen, or bumped since: the hour starts over
        if (seen || sighted.size < MAX_SIGHTINGS) {
          sighted.set(id, { versionstamp: head.versionstamp, at: now, walk });
        }
      } else if (now - seen.at >= WAIT_HEAD_MIN_AGE_MS) {
        if (options.dryRun) forgotten++;
        else if (old.push(head) >= REMOTE_KV_COMMIT_CHECKS) await flush();
      } else {
        seen.walk = walk;
      }
      return ++looked < budget;
    },
  );
  await flush();
  if (cursor.heads === undefined && !options.dryRun) sightings.wrapped();
  return forgotten;
}

/** Reads a run's inbox: its deliveries and its bell's versionstamp. */
export async function readInbox(
  store: StoreParts,
  runId: string,
): Promise<{ deliveries: KvEntry<Delivery>[]; bell: KvEntryMaybe<number> }> {
  const bell = await store.kv.get<number>(keys.bell(runId));
  const deliveries: KvEntry<Delivery>[] = [];
  for await (const entry of store.kv.list<Delivery>({ prefix: keys.inboxPrefix(runId) })) {
    deliveries.push(entry);
  }
  return { deliveries, bell };
}

/** JSON of plain data, refused with a clear error for anything JSON cannot carry. */
function plainJson(data: unknown): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(data, (_key, value) => {
      if (typeof value === "number" && !Number.isFinite(value)) {
        throw new Error("a number that is not finite");
      }
      if (typeof value === "bigint" || typeof value === "function" || typeof value === "symbol") {
        throw new Error(`a ${typeof value}`);
      }
      return value;
    });
  } catch (error) {
    throw new UsageError(
      `Invalid event data: it must be JSON data, but it holds ${(error as Error).message}`,
      "invalid_event",
      [{ path: ["data"], message: "Not JSON data" }],
    );
  }
  return json ?? "null";
}
