/**
 * Memory with 1,000 active runs: a fresh process (`bench/entry.ts rss`) opens an engine,
 * measures itself idle, then parks 1,000 runs in a running step at once and measures again.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import type { RssReport } from "./entry.ts";
import { fmt, log } from "./_util.ts";
import type { Row } from "./report.ts";

const ENTRY = fileURLToPath(new URL("./entry.ts", import.meta.url));

/** Runs the memory benchmark's process on a fresh KV file. */
export async function rss(path: string, runs: number): Promise<RssReport> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", ENTRY, "rss", path, `${runs}`],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    throw new Error(`rss process exited ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
  }
  const report = JSON.parse(text.split("\n").at(-1)!) as RssReport;
  log(
    `rss: idle ${fmt(report.idle.rssMiB, 0)} MiB, ${runs} parked ${
      fmt(report.active.rssMiB, 0)
    } MiB (heap ${fmt(report.activeAfterGc.heapUsedMiB, 1)} MiB after GC)`,
  );
  return report;
}

/** Table rows of the memory benchmark. */
export function rssRows(r: RssReport): Row[] {
  const rss = r.active.rssMiB - r.idle.rssMiB;
  const heap = r.activeAfterGc.heapUsedMiB - r.idle.heapUsedMiB;
  return [{
    benchmark: `**6. memory with ${
      r.runs.toLocaleString("en-US")
    } active runs**, each parked in a running step (one process)`,
    figure: `**RSS +${fmt(rss, 0)} MiB** over an idle engine (${fmt(r.idle.rssMiB, 0)} → ${
      fmt(r.active.rssMiB, 0)
    } MiB, ${fmt((rss * 1024) / r.runs, 0)} KiB a run); V8 heap used +${fmt(heap, 1)} MiB (${
      fmt((heap * 1024) / r.runs, 1)
    } KiB a run, after GC; ${fmt(r.active.heapUsedMiB - r.idle.heapUsedMiB, 1)} MiB before); ${
      fmt(r.after.rssMiB, 0)
    } MiB RSS after they finished`,
    target: "-",
    met: null,
    ratio: "-",
  }];
}
