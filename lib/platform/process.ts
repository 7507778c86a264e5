/**
 * This process and its host, as the runtime shows them: the host identity leases record,
 * whether another local process is gone, the process id, memory, signals and exit.
 *
 * This is a seam: a Node.js port of kvflow (over the npm package `@deno/kv`) would
 * replace this module, and only this module, for these calls.
 *
 * @module
 */

/** This process's id. */
export function pid(): number {
  return Deno.pid;
}

/** This process's resident memory, in bytes. */
export function residentMemoryBytes(): number {
  return Deno.memoryUsage().rss;
}

/**
 * The host as leases record it: the host name, and on Linux the process-id namespace, the
 * boot id and the user id, so that "on this host" (where a holder whose pid is gone is
 * known dead) means: the same boot of the same machine, the same pid namespace, and a
 * user whose processes this one can see even under `/proc` mounted with `hidepid`.
 */
export function hostname(): string {
  let name = "unknown-host";
  try {
    name = Deno.hostname();
  } catch {
    // no permission to read it: leases then never count as local
  }
  if (Deno.build.os !== "linux") return name;
  try {
    const boot = Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
    return `${name}/${Deno.readLinkSync("/proc/self/ns/pid")}/boot:${boot}/uid:${Deno.uid()}`;
  } catch {
    return name;
  }
}

/** A process as a lease names it: the host (see {@linkcode hostname}) and the pid. */
export interface ProcessRef {
  /** The host, as {@linkcode hostname} gives it. */
  host: string;
  /** The process id. */
  pid: number;
}

/**
 * Whether a lease's holder is a process of this host that is gone: same boot, pid
 * namespace and user (see {@linkcode hostname}), so a pid missing from /proc means a
 * dead process, not one hidden from this user. Only Linux shows other processes under
 * /proc; elsewhere a holder is never "dead" early and its lease is waited out.
 */
export function isDeadLocalHolder(held: ProcessRef, me: ProcessRef): boolean {
  if (Deno.build.os !== "linux" || !me.host.includes("/uid:")) return false;
  if (held.host !== me.host || held.pid === me.pid) return false;
  try {
    Deno.statSync(`/proc/${held.pid}`);
    return false;
  } catch (error) {
    return error instanceof Deno.errors.NotFound;
  }
}

/** The signals that stop a long-running command gracefully. */
const STOP_SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

/**
 * Calls `handler` on each SIGINT and SIGTERM until the returned function is called.
 *
 * @returns a function that removes the listeners
 */
export function onStopSignal(handler: () => void): () => void {
  for (const s of STOP_SIGNALS) Deno.addSignalListener(s, handler);
  return () => {
    for (const s of STOP_SIGNALS) Deno.removeSignalListener(s, handler);
  };
}

/** Standard output, for asking whether it is a terminal. */
export function stdout(): { isTerminal(): boolean } {
  return Deno.stdout;
}

/** Ends this process at once with `code`. */
export function exit(code: number): never {
  Deno.exit(code);
}
