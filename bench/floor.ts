/**
 * The KV commit floor: what the disk gives a bare atomic commit on the same file, measured
 * next to each benchmark so every figure can be read as a ratio to it.
 *
 * @module
 */
import { percentile } from "./_util.ts";

/** Commit latency statistics, ms. */
export interface Floor {
  commits: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  perSecond: number;
}

/** The shape of a commit: the floor's `check + set + set`, or the driver's `check + 3 sets`. */
export type CommitShape = "floor" | "driver";

let floorSeq = 0;

/**
 * Sequential commits on `kv` (the benchmark's own handle, so the same file, warmed up):
 * `check + set + set` (the floor), or the shape of a driver checkpoint (`check` lease +
 * `set` attempt, step, next step). Keys live under `["bench"]`.
 */
export async function commitFloor(
  kv: Deno.Kv,
  commits: number,
  shape: CommitShape = "floor",
): Promise<Floor> {
  const runId = `20260101-000000-floor${floorSeq++}`;
  const lease = ["bench", "lease", runId];
  const { versionstamp } = await kv.set(lease, {
    owner: "host:1234:abcdefgh",
    host: "host",
    pid: 1234,
    deadline: Date.now(),
  });
  const task = (i: number, status: string) => ({
    status,
    attempt: 1,
    generation: 0,
    startedAt: Date.now(),
    endedAt: Date.now(),
    nextAt: null,
    error: null,
    output: { inline: i },
  });
  const once = async (i: number) => {
    const op = kv.atomic().check({ key: lease, versionstamp });
    if (shape === "floor") {
      op.set(["bench", "step", runId, `a${i}`], task(i, "succeeded"))
        .set(["bench", "step", runId, `b${i}`], task(i, "succeeded"));
    } else {
      op.set(["bench", "attempt", runId, `s${i}`, -1, 1], {
        step: `s${i}`,
        item: -1,
        n: 1,
        status: "succeeded",
        startedAt: Date.now(),
        endedAt: Date.now(),
        error: null,
        logs: [],
      }).set(["bench", "step", runId, `s${i}`], task(i, "succeeded"))
        .set(["bench", "step", runId, `s${i + 1}`], task(i, "running"));
    }
    const result = await op.commit();
    if (!result.ok) throw new Error("floor: check failed");
  };
  for (let i = 0; i < 50; i++) await once(-i - 1); // warm-up
  const samples: number[] = [];
  const start = performance.now();
  for (let i = 0; i < commits; i++) {
    const t0 = performance.now();
    await once(i);
    samples.push(performance.now() - t0);
  }
  const total = performance.now() - start;
  samples.sort((a, b) => a - b);
  return {
    commits,
    p50: percentile(samples, 50),
    p90: percentile(samples, 90),
    p99: percentile(samples, 99),
    mean: total / commits,
    perSecond: (commits * 1000) / total,
  };
}

/** Floor of a KV file opened just for it. */
export async function fileFloor(path: string, commits: number): Promise<Floor> {
  const kv = await Deno.openKv(path);
  try {
    return await commitFloor(kv, commits);
  } finally {
    kv.close();
  }
}

/** Throughput of `check + set + set` commits on `kv` with `inFlight` of them at once. */
export async function commitThroughput(
  kv: Deno.Kv,
  commits: number,
  inFlight: number,
): Promise<number> {
  const value = { status: "succeeded", attempt: 1, startedAt: Date.now(), output: { inline: 1 } };
  let next = 0;
  const lane = async (lane: number) => {
    const lease = ["bench", "lease", `lane${lane}`];
    const { versionstamp } = await kv.set(lease, { owner: "bench" });
    while (next < commits) {
      const i = next++;
      const result = await kv.atomic().check({ key: lease, versionstamp })
        .set(["bench", "step", `lane${lane}`, `a${i}`], value)
        .set(["bench", "step", `lane${lane}`, `b${i}`], value)
        .commit();
      if (!result.ok) throw new Error("throughput: check failed");
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: inFlight }, (_, i) => lane(i)));
  return (commits * 1000) / (performance.now() - t0);
}
