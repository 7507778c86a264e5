/**
 * Hears commits to a local KV file made by any process: `kv.watch` on a local file sees
 * only its own process's writes, but SQLite appends every commit to the file's `-wal`,
 * and the kernel's file watch (inotify on Linux) reports that within a few ms. A report
 * means only "something was written": what changed is read from KV.
 *
 * This is a seam: a Node.js port of kvflow would replace this module for this call.
 *
 * @module
 */

/** A watch started by {@linkcode watchCommits}. */
export interface CommitWatcher {
  /** Stops watching; resolves once the watch has let go of its resources. */
  close(): Promise<void>;
}

/**
 * Calls `onWrite` whenever the write-ahead log of the SQLite file `file` is written
 * (by this process or another). The `-wal` may not exist yet: then its directory is
 * watched until it appears. Reads (`access` events) are ignored: a watcher that woke on
 * them would wake itself.
 *
 * @param file the KV file's path
 * @param onWrite called for each write seen; it may be called several times per commit,
 *   and the first call may come before the commit is visible to readers
 * @param onError called once if the watch fails (e.g. no read permission); the watch
 *   has then stopped
 * @returns the watch, to close
 */
export function watchCommits(
  file: string,
  onWrite: () => void,
  onError: (error: unknown) => void,
): CommitWatcher {
  const wal = `${file}-wal`;
  const slash = wal.lastIndexOf("/");
  const dir = slash < 0 ? "." : wal.slice(0, slash) || "/";
  const walName = wal.slice(slash + 1);
  let watcher: Deno.FsWatcher | undefined;
  let closed = false;

  /** Watches the `-wal` itself, or its directory while it is missing, until closed. */
  const loop = async () => {
    while (!closed) {
      let walExists = true;
      try {
        watcher = Deno.watchFs(wal, { recursive: false });
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
        walExists = false;
        watcher = Deno.watchFs(dir, { recursive: false });
      }
      if (closed) return watcher.close();
      for await (const event of watcher) {
        if (walExists) {
          if (event.kind === "modify") onWrite();
          // gone (the last connection closed it): watch the directory until it is back
          else if (event.kind === "remove") break;
        } else if (
          (event.kind === "create" || event.kind === "modify") &&
          event.paths.some((path) => path.endsWith(`/${walName}`))
        ) {
          onWrite();
          break;
        }
      }
      // left by `break`; after close() the watcher is closed already
      if (!closed) watcher.close();
    }
  };
  const running = loop().catch((error) => {
    if (!closed) onError(error);
  });
  return {
    async close() {
      closed = true;
      try {
        watcher?.close();
      } catch {
        // already closed by the loop
      }
      await running;
    },
  };
}
