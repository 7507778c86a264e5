/**
 * Hears commits to a local KV file made by any process: `kv.watch` on a local file sees
 * only its own process's writes, but SQLite appends every commit to the file's `-wal`,
 * and the kernel's file watch (inotify on Linux) reports that within a few ms. A report
 * means only "something was written": what changed is read from KV.
 *
 * A watch is armed for one write and closed when it comes. A watch left open on a busy
 * file would hand this process every write (about six a commit, thousands a second),
 * and taking each one costs more CPU than everything else an idle worker does.
 *
 * This is a seam: a Node.js port of kvflow would replace this module for this call.
 *
 * @module
 */

/**
 * Resolves at the next write to the write-ahead log of the SQLite file `file` (by this
 * process or another); the first one of a commit may come before the commit is visible
 * to readers. The `-wal` may not exist yet: then its directory is watched until it
 * appears. Reads (`access` events) are ignored: a watcher that woke on them would wake
 * itself. The watch is armed when this returns.
 *
 * @param file the KV file's path
 * @param signal stops waiting
 * @returns true at a write, false when `signal` aborted
 * @throws when the file cannot be watched (e.g. no read permission)
 */
export async function nextWrite(file: string, signal: AbortSignal): Promise<boolean> {
  const wal = `${file}-wal`;
  const slash = wal.lastIndexOf("/");
  const dir = slash < 0 ? "." : wal.slice(0, slash) || "/";
  const walName = wal.slice(slash + 1);
  while (!signal.aborted) {
    let walExists = true;
    let watcher: Deno.FsWatcher;
    try {
      watcher = Deno.watchFs(wal, { recursive: false });
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      walExists = false;
      watcher = Deno.watchFs(dir, { recursive: false });
    }
    const stop = () => close(watcher);
    signal.addEventListener("abort", stop, { once: true });
    try {
      for await (const event of watcher) {
        if (walExists) {
          if (event.kind === "modify") return true;
          // gone (its last connection closed it): watch the directory until it is back
          if (event.kind === "remove") break;
        } else if (
          (event.kind === "create" || event.kind === "modify") &&
          event.paths.some((path) => path.endsWith(`/${walName}`))
        ) {
          return true;
        }
      }
    } catch (error) {
      if (!signal.aborted) throw error;
    } finally {
      signal.removeEventListener("abort", stop);
      close(watcher);
    }
  }
  return false;
}

function close(watcher: Deno.FsWatcher): void {
  try {
    watcher.close();
  } catch {
    // closed already
  }
}
