/**
 * Where kvflow keeps its state, from the environment: `KVFLOW_KV_PATH` names a local
 * file (default `./data/kvflow.kv`), `:memory:`, or a KV Connect URL. On Deno Deploy
 * the app's own database is used. Only local files and memory have queues.
 *
 * @module
 */
import { UsageError } from "./errors.ts";

/** An open KV database and what it can do. */
export interface OpenedKv {
  /** The database. */
  kv: Deno.Kv;
  /** Where it is, for messages. */
  location: string;
  /** Whether `kv.enqueue` works here. */
  queues: boolean;
}

/** The default KV file. */
export const DEFAULT_KV_PATH = "./data/kvflow.kv";

/**
 * Opens the KV database at `path`, or where the environment says.
 *
 * @throws {UsageError} when it cannot be opened, saying where and why
 */
export async function openKv(path?: string): Promise<OpenedKv> {
  const onDeploy = Deno.env.get("DENO_DEPLOY") === "true";
  const location = path ?? Deno.env.get("KVFLOW_KV_PATH") ?? (onDeploy ? "" : DEFAULT_KV_PATH);
  const remote = /^https?:\/\//.test(location);
  try {
    if (location && location !== ":memory:" && !remote) {
      const dir = location.replace(/[^/]*$/, "");
      if (dir) await Deno.mkdir(dir, { recursive: true });
    }
    const kv = await Deno.openKv(location || undefined);
    return {
      kv,
      location: location || "(Deno Deploy database)",
      queues: !remote && !onDeploy,
    };
  } catch (error) {
    throw new UsageError(
      `Cannot open the KV database at ${JSON.stringify(location)}: ${
        error instanceof Error ? error.message : String(error)
      } (set KVFLOW_KV_PATH to a writable file, :memory:, or a KV Connect URL)`,
      "kv_unavailable",
    );
  }
}
