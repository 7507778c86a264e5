/**
 * The pipelines the benchmarks run, shared by the bench process and the worker and CLI
 * processes it starts (`bench/entry.ts`).
 *
 * @module
 */
import {
  type AnyStep,
  type Pipeline,
  pipeline,
  type Schema,
  sleep,
  step,
  type StepContext,
  waitFor,
} from "../lib/mod.ts";

/** A chain of `n` trivial steps, each needing the previous one. */
export function chain(name: string, n: number): Pipeline<unknown> {
  let prev = step("s0", () => 0);
  const steps: AnyStep[] = [prev];
  for (let i = 1; i < n; i++) {
    const before = prev;
    prev = step(`s${i}`, { needs: { prev: before } }, ({ prev }) => prev + 1);
    steps.push(prev);
  }
  return pipeline(name, { steps }) as Pipeline<unknown>;
}

/** A 5-step diamond: load → (left, right) → join → report. */
export function diamond(name: string): Pipeline<unknown> {
  const load = step("load", () => ({ n: 1 }));
  const left = step("left", { needs: { load } }, ({ load }) => load.n + 1);
  const right = step("right", { needs: { load } }, ({ load }) => load.n + 2);
  const join = step("join", { needs: { left, right } }, ({ left, right }) => left + right);
  const report = step("report", { needs: { join } }, ({ join }) => `sum=${join}`);
  return pipeline(name, { steps: [load, left, right, join, report] }) as Pipeline<unknown>;
}

/** The same diamond, each step waiting `ms` first, as a step that calls a service would. */
export function waitingDiamond(name: string, ms: number): Pipeline<unknown> {
  const wait = () => new Promise((resolve) => setTimeout(resolve, ms));
  const load = step("load", async () => (await wait(), { n: 1 }));
  const left = step("left", { needs: { load } }, async ({ load }) => (await wait(), load.n + 1));
  const right = step("right", { needs: { load } }, async ({ load }) => (await wait(), load.n + 2));
  const join = step("join", { needs: { left, right } }, async ({ left, right }) => {
    await wait();
    return left + right;
  });
  const report = step("report", { needs: { join } }, async ({ join }) => {
    await wait();
    return `sum=${join}`;
  });
  return pipeline(name, { steps: [load, left, right, join, report] }) as Pipeline<unknown>;
}

/** Steps of the restart benchmark's run, and the step its first process is killed in. */
export const RESTART_STEPS = 20;
/** Index of the step the first process parks in: the steps before it are checkpointed. */
export const RESTART_PARK_AT = 10;

/**
 * A chain of 20 trivial steps `r0 … r19`. With `KVFLOW_BENCH_HOLD_FILE` set, step
 * `r10` — which starts only once `r0 … r9` are checkpointed — writes the run id to that
 * file and never returns, so the bench can SIGKILL the process there.
 */
export const RESTART = restartChain();

function restartChain(): Pipeline<unknown> {
  const park = async (ctx: StepContext) => {
    const file = Deno.env.get("KVFLOW_BENCH_HOLD_FILE");
    if (!file) return;
    await Deno.writeTextFile(`${file}.tmp`, ctx.run.id);
    await Deno.rename(`${file}.tmp`, file);
    await new Promise(() => {});
  };
  let prev = step("r0", () => 0);
  const steps: AnyStep[] = [prev];
  for (let i = 1; i < RESTART_STEPS; i++) {
    const before = prev;
    prev = i === RESTART_PARK_AT
      ? step(`r${i}`, { needs: { prev: before } }, async ({ prev }, ctx) => {
        await park(ctx);
        return prev + 1;
      })
      : step(`r${i}`, { needs: { prev: before } }, ({ prev }) => prev + 1);
    steps.push(prev);
  }
  return pipeline("bench-restart", { steps }) as Pipeline<unknown>;
}

/** Hooks of {@linkcode flaky}: each attempt's start, wall ms. */
export const retryProbe: { onStart?: (runId: string, attempt: number, at: number) => void } = {};

/**
 * One step that fails its first `attempts - 1` attempts and is retried after `delayMs`
 * (fixed backoff, the default 20 % jitter), then a step that needs it.
 */
export function flaky(name: string, delayMs: number, attempts: number): Pipeline<unknown> {
  const fails = step("fails", {
    retry: { attempts, delay: delayMs, backoff: "fixed" },
  }, (_inputs, ctx) => {
    retryProbe.onStart?.(ctx.run.id, ctx.attempt, Date.now());
    if (ctx.attempt < attempts) throw new Error(`Attempt ${ctx.attempt} fails on purpose`);
    return ctx.attempt;
  });
  const after = step("after", { needs: { fails } }, ({ fails }) => fails);
  return pipeline(name, { steps: [fails, after] }) as Pipeline<unknown>;
}

/** Where {@linkcode PARKED} runs are: how many entered their step, and the way out. */
export const parking = {
  entered: 0,
  release: () => {},
  released: Promise.resolve(),
  /** Closes the gate: steps entering from now on wait for {@linkcode parking.release}. */
  reset(): void {
    this.entered = 0;
    this.released = new Promise<void>((resolve) => (this.release = resolve));
  },
};

/** A run that parks in its first step until {@linkcode parking.release} (or cancel). */
export const PARKED = pipeline("bench-parked", {
  steps: [
    step("park", { timeout: "10m" }, async (_inputs, ctx) => {
      parking.entered++;
      await new Promise<void>((resolve) => {
        parking.released.then(resolve);
        ctx.signal.addEventListener("abort", () => resolve(), { once: true });
      });
      return 1;
    }),
  ],
}) as Pipeline<unknown>;

/** The event the waiting benchmark runs wait for, matched by its payload field `key`. */
export const GO_EVENT = "bench.go";

/**
 * Hooks of the waiting benchmark pipelines: when a step after a wait or sleep started (wall
 * ms with sub-ms precision, `performance.timeOrigin + performance.now()`), and the sleep's
 * `until` it followed (null after an event wait).
 */
export const waitProbe: {
  onAfter?: (runId: string, at: number, until: number | null) => void;
} = {};

/** Wall time in ms with sub-ms precision, comparable across processes of one machine. */
export function wallNow(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * The params `{ key: string }`, checked by hand: with zod here every benchmark process
 * would load zod at start (≈ 25 ms), and the restart benchmark's pipeline needs none.
 */
function keyParams(): Schema<{ key: string }> {
  return {
    safeParse: (value) => {
      const key = (value as { key?: unknown } | null)?.key;
      return typeof key === "string"
        ? { success: true, data: { key } }
        : { success: false, error: { issues: [{ path: ["key"], message: "Expected a string" }] } };
    },
  };
}

/**
 * A run that waits for {@linkcode GO_EVENT} whose `key` equals its param `key` (up to a
 * day, so it is parked: longer than a worker's hold time), then a step `after` that
 * records when it started.
 */
export const AWAIT = pipeline("bench-await", {
  params: keyParams(),
  steps: (() => {
    const go = waitFor("go", {
      events: { [GO_EVENT]: null },
      match: { field: "key", equals: (_inputs, run) => String(run.params.key) },
      timeout: "1d",
    });
    const after = step("after", { needs: { go } }, (_inputs, ctx) => {
      waitProbe.onAfter?.(ctx.run.id, wallNow(), null);
      return 1;
    });
    return [go, after];
  })(),
}) as Pipeline<unknown>;

/** A sleep of `ms`, then a step `after` that records when it started and the sleep's until. */
export function napping(ms: number): Pipeline<unknown> {
  const nap = sleep("nap", { for: ms });
  const after = step("after", { needs: { nap } }, ({ nap }, ctx) => {
    waitProbe.onAfter?.(ctx.run.id, wallNow(), nap.until);
    return 1;
  });
  return pipeline(`bench-nap-${ms}`, { steps: [nap, after] }) as Pipeline<unknown>;
}
