/**
 * Expanding a fan-out step: its `items` function, called within the step's timeout and
 * checked, and the step's fan-out state rebuilt from the item records KV holds (after a
 * resume, a rerun, or a takeover of a crashed run).
 *
 * @module
 */
import { MAX_ITEMS } from "../../define/step.ts";
import { NonRetryableError } from "../../model/errors.ts";
import * as keys from "../../kv/keys.ts";
import { decodeValue } from "../../kv/values.ts";
import type { TaskRecord } from "../../model/records.ts";
import { resetTask } from "../../model/transitions.ts";
import type { Store } from "../../store/store.ts";
import type { Clock } from "../../model/clock.ts";
import { withinTimeout } from "./attempt.ts";
import type { Checkpoints } from "./checkpoints.ts";
import { type FanState, newFan, trackItem } from "./fan_out.ts";
import type { StepNode } from "./graph.ts";
import type { RunRecords } from "./records.ts";

/** What expanding a step needs of its run. */
export interface ExpandOptions {
  /** The step's inputs. */
  inputs: Record<string, unknown>;
  store: Store;
  clock: Clock;
  records: RunRecords;
  checkpoints: Checkpoints;
  /** Whether the driver still acts on the run: if not, nothing is recorded. */
  acting: () => boolean;
}

/**
 * Calls the items of a fan-out step and rebuilds what the run knows of them; the crash
 * of an item a dead holder left running is recorded.
 *
 * @returns the fan-out state and the time it was built at, or undefined when the driver
 *   stopped acting on the run meanwhile
 * @throws {NonRetryableError} when the items are not a list, too many, or not as many as
 *   the run recorded; a TimeoutError when they take longer than the step's timeout
 */
export async function expandItems(
  node: StepNode,
  options: ExpandOptions,
): Promise<{ fan: FanState; now: number } | undefined> {
  const { store, records, checkpoints } = options;
  const name = node.def.name;
  const runId = records.run.id;
  // refused before any item is written: nothing of the fan-out is half done
  const values = await callItems(node, options.inputs);
  // A rerun clears the step's item count (its list may change) but keeps its items'
  // records, back at pending: their attempt history goes on after the earlier attempts.
  const rerun = node.record.items === undefined && node.record.generation > 0;
  const stored = node.record.items !== undefined || rerun
    ? await store.getItems(runId, name)
    : new Map<number, TaskRecord>();
  if (node.record.items !== undefined && node.record.items !== values.length) {
    throw new NonRetryableError(
      `items of step '${name}' returned ${values.length} items, but this run recorded ${node.record.items}: items must depend on the step's inputs only`,
    );
  }
  if (!options.acting()) return undefined;
  const now = options.clock.now();
  const fan = newFan(values);
  for (let i = 0; i < values.length; i++) {
    let record = stored.get(i);
    if (rerun && record) record = resetTask(record, node.record.generation);
    if (!record || record.status === "pending") {
      if (record) trackItem(fan, i, record);
      fan.fresh.push(i);
      continue;
    }
    if (record.status === "running") {
      record = records.recoverCrash(name, i, record, now);
      checkpoints.write(keys.item(runId, name, i), record);
    }
    trackItem(fan, i, record);
    if (record.status === "succeeded") {
      fan.outputs.set(i, await decodeValue(store.kv, runId, record.output!));
    }
  }
  return { fan, now };
}

/**
 * Calls a fan-out step's `items` on its inputs, within the step's timeout, and checks
 * what it returned (the driver's expansion, and a trial of one item).
 *
 * @throws {NonRetryableError} when the items are not a list or too many; a TimeoutError
 *   when they take longer than the step's timeout
 */
export async function callItems(
  node: StepNode,
  inputs: Record<string, unknown>,
): Promise<unknown[]> {
  const name = node.def.name;
  const values = await withinTimeout(
    Promise.resolve(node.def.fanOut!.items(inputs)),
    node.timeoutMs,
    `items of step '${name}' did not return within ${node.timeoutMs} ms (the step's timeout)`,
  );
  if (!Array.isArray(values)) {
    throw new NonRetryableError(`items of step '${name}' must return an array`);
  }
  if (values.length > MAX_ITEMS) {
    throw new NonRetryableError(
      `items of step '${name}' returned ${values.length} items: a fan-out step may have at most ${MAX_ITEMS} (batch the items, or split the list over several steps)`,
    );
  }
  return values;
}
