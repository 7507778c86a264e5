/**
 * Where kvflow keeps its state, from the environment: `KVFLOW_KV_PATH` names a local
 * file (default `./data/kvflow.kv`), `:memory:`, or a KV Connect URL. On Deno Deploy
 * the app's own database is used. Only local files and memory have queues.
 *
 * @module
 */
import { kvUnavailable, KvUnavailableError } from "../model/errors.ts";
import { env, onDeploy as isDeploy } from "../platform/env.ts";
import type { Kv } from "./kv.ts";

/** An open KV database and what it can do. */
export interface OpenedKv {
  /** The database. */
  kv: Kv;
  /** Where it is, for messages. */
  location: string;
  /** Whether `kv.enqueue` works here. */
  queues: boolean;
  /** The path of the local file, when it is one (not memory, a URL or Deploy's). */
  file?: string;
}

/** The default KV file. */
export const DEFAULT_KV_PATH = "./data/kvflow.kv";

/**
 * Opens the KV database at `path`, or where the environment says.
 *
 * @throws {KvUnavailableError} when it cannot be opened, saying where and why
 */
export async function openKv(path?: string): Promise<OpenedKv> {
  const onDeploy = isDeploy();
  const location = path ?? env("KVFLOW_KV_PATH") ?? (onDeploy ? "" : DEFAULT_KV_PATH);
  const remote = /^https?:\/\//.test(location);
  const local = location && location !== ":memory:" && !remote ? location : undefined;
  const dir = local ? location.replace(/[^/]*$/, "") : "";
  try {
    if (dir) await Deno.mkdir(dir, { recursive: true });
    const kv = await Deno.openKv(location || undefined);
    return {
      kv,
      location: location || "(Deno Deploy database)",
      queues: !remote && !onDeploy,
      file: local,
    };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    // mkdir of a path through a regular file says only "File exists"
    const why =
      error instanceof Deno.errors.AlreadyExists || error instanceof Deno.errors.NotADirectory
        ? `part of ${JSON.stringify(dir)} is a file, not a directory (${message})`
        : message;
    throw new KvUnavailableError(
      `Cannot open the KV database at ${JSON.stringify(location)}: ${why}` +
        " (set KVFLOW_KV_PATH to a writable file, :memory:, or a KV Connect URL)",
      kvUnavailable(error)?.problem ?? "cannot-open",
      { cause: error },
    );
  }
}
