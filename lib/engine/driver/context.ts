/**
 * What a step's body gets: its context `ctx` — the run, the attempt, its idempotency key,
 * the abort signal, a log kept within limits for the attempt's record, and artifacts
 * stored by reference.
 *
 * @module
 */
import type {
  ArtifactOptions,
  ArtifactRef,
  ItemContext,
  RunInfo,
  StepContext,
} from "../../define/context.ts";
import v8 from "node:v8";
import { toErrorInfo } from "../../model/errors.ts";
import * as keys from "../../kv/keys.ts";
import { type PendingBlob, writeBlob } from "../../kv/blobs.ts";
import type { BlobRef, LogLine, RunRecord } from "../../model/records.ts";
import { idempotencyKey } from "../../model/transitions.ts";
import { type ArtifactMeta, artifactRef, checkArtifactName } from "../../model/artifacts.ts";
import type { Store } from "../../store/store.ts";
import type { Clock } from "../../model/clock.ts";
import type { Checkpoints } from "./checkpoints.ts";
import type { Attempt } from "./attempt.ts";
import type { Kv } from "../../kv/kv.ts";
import { logStepLine, printStepLogs } from "../../platform/log.ts";

const MAX_LOG_LINES = 500;
const MAX_LOG_BYTES = 32_000;
const MAX_FIELDS_BYTES = 4_000;

/** What the contexts of a run's attempts share: the driver's side of them. */
export interface ContextHost {
  /** The run as the driver knows it now. */
  run(): RunRecord;
  readonly store: Store;
  readonly clock: Clock;
  readonly artifacts: ArtifactStore;
}

/** Where `ctx.artifact` puts an artifact: the run's KV, or memory for a trial of a step. */
export interface ArtifactStore {
  /** Stores an artifact of a step's attempt (item `item`, or -1) and returns its reference. */
  store(
    step: string,
    item: number,
    name: string,
    data: Uint8Array | string,
    options?: ArtifactOptions,
  ): Promise<ArtifactRef>;
}

/** What a step (or a wait's functions) knows of its run. */
export function runInfo(runRecord: RunRecord): RunInfo {
  return {
    id: runRecord.id,
    pipeline: runRecord.pipeline,
    params: runRecord.params,
    logicalDate: runRecord.logicalDate,
    tick: runRecord.tick ? new Date(runRecord.tick).toISOString() : null,
    trigger: runRecord.trigger,
  };
}

/**
 * The context given to the body of an attempt; its log lines go to the attempt's `logs`.
 *
 * @param inputs the step's inputs (an item's context carries them)
 */
export function stepContext(
  host: ContextHost,
  attempt: Attempt,
  inputs: Record<string, unknown>,
): StepContext | ItemContext<Record<string, unknown>> {
  const { node, index, record, logs } = attempt;
  const signal = attempt.controller.signal;
  const { clock, store, artifacts } = host;
  const runRecord = host.run();
  const run = runInfo(runRecord);
  let bytes = 0;
  const log = (level: LogLine["level"]) => (message: string, fields?: Record<string, unknown>) => {
    if (logs.length >= MAX_LOG_LINES || bytes >= MAX_LOG_BYTES) return;
    const text = String(message).slice(0, 2000);
    const kept = fields === undefined ? undefined : storableFields(fields);
    // KV keeps strings beyond Latin-1 at two bytes a character
    bytes += 40 + 2 * text.length + (kept?.size ?? 0);
    logs.push(
      kept
        ? { at: clock.now(), level, message: text, fields: kept.fields }
        : { at: clock.now(), level, message: text },
    );
    if (printStepLogs) {
      logStepLine(level, text, {
        run: runRecord.id,
        step: node.def.name,
        item: index,
        attempt: record.attempt,
        fields: kept?.fields,
      });
    }
    if (logs.length === MAX_LOG_LINES || bytes >= MAX_LOG_BYTES) {
      logs.push({
        at: clock.now(),
        level: "warn",
        message: "(log limit reached: later lines dropped)",
      });
    }
  };
  const step = node.def.name;
  const ctx: StepContext = {
    run,
    step,
    attempt: record.attempt,
    idempotencyKey: idempotencyKey(runRecord.id, step, index, record.generation),
    signal,
    log: { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") },
    artifact: (name, data, options) => artifacts.store(step, index, name, data, options),
    readArtifact: async (ref) => {
      const name = typeof ref === "string" ? ref : ref.name;
      return (await store.readArtifact(runRecord.id, name)).bytes;
    },
  };
  if (index < 0) return ctx;
  return { ...ctx, item: { index, total: node.fan!.values.length }, inputs };
}

/** The artifacts a run's attempts store, through its checkpoint queue. */
export class Artifacts implements ArtifactStore {
  readonly #kv: Kv;
  readonly #runId: string;
  readonly #clock: Clock;
  readonly #checkpoints: Checkpoints;
  readonly #lost: () => boolean;
  /** The blob of each artifact this driver stored, by name. */
  readonly #blobs = new Map<string, BlobRef>();

  /**
   * Creates the artifact store of a run.
   *
   * @param lost whether the run was lost, so that a stored artifact may not be durable
   */
  constructor(
    run: { kv: Kv; runId: string; clock: Clock; checkpoints: Checkpoints },
    lost: () => boolean,
  ) {
    this.#kv = run.kv;
    this.#runId = run.runId;
    this.#clock = run.clock;
    this.#checkpoints = run.checkpoints;
    this.#lost = lost;
  }

  /**
   * Stores an artifact of a step's attempt; resolves once it is durable.
   *
   * @throws {Error} when the run stopped being the driver's meanwhile
   */
  async store(
    step: string,
    item: number,
    name: string,
    data: Uint8Array | string,
    options?: ArtifactOptions,
  ): Promise<ArtifactRef> {
    const { bytes, contentType } = artifactBytes(name, data, options);
    const checkpoints = this.#checkpoints;
    const blob = await writeBlob(
      this.#kv,
      this.#runId,
      bytes,
      { artifact: name },
      (op) => checkpoints.commitChunks(op),
    );
    // The blob an artifact of this name had before (an earlier attempt's, a rerun's, or a
    // concurrent item's) is dropped with the new metadata: it goes back to pending.
    const known = this.#blobs.has(name);
    const stored = known
      ? null
      : (await this.#kv.get<ArtifactMeta>(keys.artifact(this.#runId, name))).value;
    const replaced = this.#blobs.get(name) ?? stored?.blob;
    this.#blobs.set(name, blob);
    if (replaced && replaced.id !== blob.id) {
      checkpoints.write(
        keys.blobPending(this.#runId, replaced.id),
        { artifact: name, chunks: replaced.chunks } satisfies PendingBlob,
        256,
      );
    }
    const meta: ArtifactMeta = {
      runId: this.#runId,
      name,
      contentType,
      size: bytes.byteLength,
      blob,
      step,
      item,
      createdAt: this.#clock.now(),
    };
    checkpoints.write(keys.artifact(this.#runId, name), meta);
    checkpoints.write(keys.blobPending(this.#runId, blob.id), null, 256);
    await checkpoints.flush();
    if (this.#lost()) {
      throw new Error(`Run ${this.#runId} stopped while storing artifact '${name}'`);
    }
    return artifactRef(meta);
  }
}

/**
 * A copy of a log line's fields, taken when it is logged, that the attempt record can
 * hold: fields KV cannot serialize (a function) or too large for one line are replaced by
 * a note, because a log line must never make a checkpoint commit fail.
 */
function storableFields(
  fields: Record<string, unknown>,
): { fields: Record<string, unknown>; size: number } {
  let note: string;
  try {
    const bytes = v8.serialize(fields);
    if (bytes.byteLength <= MAX_FIELDS_BYTES) {
      return { fields: v8.deserialize(bytes), size: bytes.byteLength };
    }
    note = `(fields not stored: ${bytes.byteLength} bytes, more than ${MAX_FIELDS_BYTES})`;
  } catch (error) {
    note = `(fields not stored: ${toErrorInfo(error).message.slice(0, 200)})`;
  }
  return { fields: { note }, size: 2 * note.length };
}

/**
 * An artifact's name checked, its data as bytes and its content type (given, or from the
 * data's kind).
 *
 * @throws {UsageError} on a bad name; {@linkcode TypeError} when the data is not bytes or text
 */
export function artifactBytes(
  name: string,
  data: Uint8Array | string,
  options?: ArtifactOptions,
): { bytes: Uint8Array; contentType: string } {
  checkArtifactName(name);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError(`Artifact '${name}' must be a Uint8Array or a string`);
  }
  const contentType = options?.contentType ??
    (typeof data === "string" ? "text/plain; charset=utf-8" : "application/octet-stream");
  return { bytes, contentType };
}
