/**
 * `send`: sends an event from the command line — `deno task send <name> --data '<json>'
 * [--id <id>]` — and says what it did: the waits it woke, the runs it started, or that its
 * id was sent before.
 *
 * @module
 */
import { UsageError } from "../model/errors.ts";
import { EXIT, type Invocation, openCliEngine } from "./invocation.ts";
import { dueText, stepName } from "./waiting.ts";

/**
 * `send`: stores the event, ends the waits it matches and starts the runs it triggers.
 * This process only sends: the runs it wakes or starts continue in the worker that
 * follows them (a foreground `run`, `serve` or `worker`), which a queue hint reaches.
 */
export async function send(invocation: Invocation): Promise<number> {
  const name = invocation.args[0];
  const data = parseData(invocation.flags.data);
  const engine = await openCliEngine(invocation, invocation.context.pipelines);
  try {
    // The registry tells the send which fields waits match by and which pipelines the
    // event starts; the worker stays out of it, so this process drives no run.
    await engine.worker.stop(0);
    const result = await engine.send(name, data, { id: invocation.flags.id, source: "cli" });
    const { event } = result;
    if (invocation.flags.json) {
      invocation.out(JSON.stringify(
        {
          event,
          duplicate: result.duplicate,
          woke: result.woke,
          started: result.started.map((r) => ({
            id: r.id,
            pipeline: r.pipeline,
            status: r.status,
          })),
          joined: result.joined.map((r) => ({ id: r.id, pipeline: r.pipeline, held: r.held })),
        },
        null,
        2,
      ));
      return EXIT.ok;
    }
    if (result.duplicate) {
      invocation.out(
        `event ${event.id} (${event.name}) was sent before, at ${
          dueText(event.at).replace(/ \(.*/, "")
        }: nothing stored, nobody woken`,
      );
      return EXIT.ok;
    }
    invocation.out(`event ${event.id} · ${event.name} · sent`);
    for (const w of result.woke) {
      invocation.out(`  woke     run ${w.runId}, step ${stepName(w.step, w.item)}`);
    }
    for (const run of result.started) {
      invocation.out(`  started  run ${run.id} of pipeline ${run.pipeline} (${run.status})`);
    }
    for (const run of result.joined) {
      invocation.out(
        `  joined   run ${run.id} of pipeline ${run.pipeline}: ${run.held?.reason ?? run.status}`,
      );
    }
    if (result.woke.length === 0 && result.started.length === 0 && result.joined.length === 0) {
      invocation.out(
        "  no run waits for it now; a wait that starts later still takes it while it is kept",
      );
    }
    if (result.started.length + result.joined.length > 0) {
      invocation.out(
        "  a worker runs what it started: deno task serve (or deno task worker)",
      );
    }
    return EXIT.ok;
  } finally {
    await engine.close();
  }
}

/** The payload of `--data`: JSON, or null without the flag. */
function parseData(text: string | undefined): unknown {
  if (text === undefined) return null;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UsageError(
      `Invalid --data: not JSON (${error instanceof Error ? error.message : error})`,
    );
  }
}
