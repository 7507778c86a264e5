/**
 * The benchmark table: its rows, the machine it was measured on, and writing it into
 * `bench/README.md` between the `bench:table` markers.
 *
 * @module
 */
import { table } from "./_util.ts";

/** One row of the table. */
export interface Row {
  /** What was measured. */
  benchmark: string;
  /** The figure. */
  figure: string;
  /** The target, or "-". */
  target: string;
  /** Whether the target is met: true, false, or null without a target. */
  met: boolean | null;
  /** The figure as a ratio to the KV commit floor measured next to it, or "-". */
  ratio: string;
}

/** Where the figures were measured. */
export interface Machine {
  date: string;
  command: string;
  commit: string;
  nproc: number;
  cpu: string;
  memory: string;
  kernel: string;
  deno: string;
  loadBefore: number[];
  loadAfter?: number[];
}

function read(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

async function git(args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command("git", {
      args,
      cwd: new URL("../", import.meta.url),
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : "";
  } catch {
    return "";
  }
}

/** The machine, the command and the lib commit, with the load average now. */
export async function machine(command: string): Promise<Machine> {
  const cpu = read("/proc/cpuinfo").match(/^model name\s*:\s*(.+)$/m)?.[1]?.trim() ??
    Deno.build.arch;
  const kb = Number(read("/proc/meminfo").match(/^MemTotal:\s+(\d+) kB/m)?.[1] ?? 0);
  const head = await git(["rev-parse", "--short", "HEAD"]);
  const dirty = await git(["status", "--porcelain", "--", "lib/"]);
  return {
    date: new Date().toISOString().replace(/:\d\d\.\d+Z$/, " UTC").replace("T", " "),
    command,
    commit: head ? `${head}${dirty ? " + uncommitted changes in lib/" : ""}` : "unknown",
    nproc: navigator.hardwareConcurrency,
    cpu,
    memory: kb ? `${(kb / 2 ** 20).toFixed(1)} GiB` : "unknown",
    kernel: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: `Deno ${Deno.version.deno} (V8 ${Deno.version.v8})`,
    loadBefore: Deno.loadavg(),
  };
}

function load(l: number[] | undefined): string {
  return l ? l.map((x) => x.toFixed(2)).join(" / ") : "-";
}

/** The table and the lines about the machine, as Markdown. */
export function markdown(rows: Row[], m: Machine): string {
  const head = [
    `\`${m.command}\`, ${m.date}, lib at \`${m.commit}\`.`,
    "",
    `Machine: ${m.nproc} CPUs (${m.cpu}), ${m.memory} RAM, ${m.kernel}, ${m.deno}. ` +
    `Load average (1 / 5 / 15 min) ${load(m.loadBefore)} before, ${load(m.loadAfter)} after.`,
  ];
  const cells = rows.map((r) => [
    r.benchmark,
    r.figure,
    r.target,
    r.met === null ? "-" : r.met ? "yes" : "**no**",
    r.ratio,
  ]);
  return head.join("\n") + "\n\n" +
    table([["benchmark", "figure", "target", "met", "ratio to the KV commit floor"], ...cells]);
}

/** Start and end markers of the generated region of `bench/README.md`. */
export const MARKERS = ["<!-- bench:table:start -->", "<!-- bench:table:end -->"] as const;

/**
 * Replaces the region between the markers of `path` with `text`.
 *
 * @throws {Error} when the file lacks the markers
 */
export async function writeTable(path: string | URL, text: string): Promise<void> {
  const old = await Deno.readTextFile(path);
  const start = old.indexOf(MARKERS[0]);
  const end = old.indexOf(MARKERS[1]);
  if (start < 0 || end < start) {
    throw new Error(`${path}: the markers ${MARKERS.join(" and ")} are missing`);
  }
  const next = old.slice(0, start + MARKERS[0].length) + "\n\n" + text + "\n\n" + old.slice(end);
  await Deno.writeTextFile(path, next);
}
