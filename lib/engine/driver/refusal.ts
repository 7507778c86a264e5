/**
 * What the driver does when KV refuses a checkpoint commit for breaking one of its limits:
 * a record kvflow could not measure beforehand (an Error object in an output is stored
 * inline whole, say). KV refuses the same commit every time, so dropping the run would
 * only run the step again until its crashes ran out. Instead the tasks whose records broke
 * the limit fail at once, not retryably, with an error that names the limit and the task;
 * attempts still running are handed back as on a graceful stop; and the run goes back to
 * queued, so the next claim carries on from what KV holds. Nothing of the refused commit
 * or of those after it is kept. This module finds the culprits and queues the hand-back;
 * the driver commits it, fenced by the lease like every commit.
 *
 * @module
 */
import v8 from "node:v8";
import type { ErrorInfo } from "../../model/errors.ts";
import * as keys from "../../kv/keys.ts";
import { KV_KEY_BYTES, KV_VALUE_BYTES } from "../../kv/limits.ts";
import type { AttemptRecord, LogLine, RunRecord, TaskRecord } from "../../model/records.ts";
import { attemptRecord, releaseError, releaseTask } from "../../model/transitions.ts";
import type { Store } from "../../store/store.ts";
import { taskKey } from "./attempt.ts";
import type { Checkpoints, Write } from "./checkpoints.ts";
import type { StepGraph } from "./graph.ts";
import type { RunRecords } from "./records.ts";

/** What broke a KV limit: a task's result, its attempt's record, or the commit as a whole. */
export type LimitCause = "result" | "attempt" | "commit";

/** The tasks a refusal blames, and what the uncommitted writes say of the others. */
export interface Blame {
  /** The tasks to fail, by task key. */
  culprits: Map<string, { step: string; item: number; what: LimitCause }>;
  /** The lines logged by the attempts whose records were not committed, by task key. */
  logs: Map<string, LogLine[]>;
  /** The tasks whose crash (of a dead holder) was found but not stored. */
  crashed: Set<string>;
}

/**
 * Finds the tasks whose records broke the limit: those over a limit on their own, or,
 * when none is, every task of the refused commit, since together they break it.
 *
 * @param refused the writes of the refused commit
 * @param uncommitted those and the writes of the commits after it
 * @returns undefined when no write of the refused commit records a task
 */
export function blame(refused: Write[], uncommitted: Write[]): Blame | undefined {
  const over = refused.filter((w) => keys.taskOf(w.key) !== null && overKvLimit(w));
  const blamed = over.length > 0 ? over : refused.filter((w) => keys.taskOf(w.key) !== null);
  if (blamed.length === 0) return undefined;
  const culprits: Blame["culprits"] = new Map();
  for (const w of blamed) {
    const task = keys.taskOf(w.key)!;
    const what = !over.includes(w) ? "commit" : task.attempt ? "attempt" : "result";
    culprits.set(taskKey(task.step, task.item), { ...task, what });
  }
  // An attempt of a dead holder that this driver found but whose crash it had not stored
  // yet is still `running` in KV: the next claim finds that crash again, so it stays.
  const logs = new Map<string, LogLine[]>();
  const crashed = new Set<string>();
  for (const w of uncommitted) {
    const task = keys.taskOf(w.key);
    if (!task?.attempt) continue;
    const attempt = w.value as AttemptRecord;
    logs.set(taskKey(task.step, task.item), attempt.logs);
    if (attempt.status === "crashed") crashed.add(taskKey(task.step, task.item));
  }
  return { culprits, logs, crashed };
}

/**
 * Queues the hand-back of a run whose commit KV refused, from what KV holds (the queue
 * must be empty): the blamed tasks fail, not retryably; attempts still running are handed
 * back as on a graceful stop; the run goes back to queued, due now, without its lease.
 *
 * @param run the run's store, step graph, records and checkpoint queue
 * @param refusal KV's words for the limit, who is to blame, and the time
 */
export async function queueHandBack(
  run: { store: Store; graph: StepGraph; records: RunRecords; checkpoints: Checkpoints },
  refusal: { limit: string; blame: Blame; now: number },
): Promise<void> {
  const { store, graph, records, checkpoints } = run;
  const { limit, now } = refusal;
  const { culprits, logs, crashed } = refusal.blame;
  const runId = records.run.id;
  const stored = await storedTasks(store, runId);
  // A culprit KV has no record of yet (never the case for a task that ran) fails all the same.
  const inKv = new Set(stored.map(({ step, item }) => taskKey(step, item)));
  for (const [key, { step, item }] of culprits) {
    const node = graph.node(step);
    const record = item < 0 ? node?.record : node?.fan?.records.get(item);
    if (!inKv.has(key) && record) stored.push({ step, item, record });
  }
  const runEntry = await store.kv.get<RunRecord>(keys.run(runId));
  for (const { step, item, record } of stored) {
    const node = graph.node(step);
    const key = taskKey(step, item);
    const culprit = culprits.get(key);
    if (!node) continue;
    if (culprit) {
      const error = limitError({ step, item }, { limit, what: culprit.what });
      const failed: TaskRecord = {
        ...record,
        status: "failed",
        endedAt: now,
        nextAt: null,
        error,
      };
      delete failed.output;
      if (item < 0 || node.fan) records.setTask(node, item, failed);
      else checkpoints.write(keys.item(runId, step, item), failed);
      // a fan-out step's own record has no attempts
      if (record.status === "running" && record.items === undefined) {
        const attempt = attemptRecord(
          step,
          item,
          record,
          "failed",
          error,
          logs.get(key) ?? [],
          now,
        );
        records.writeAttempt(fitAttempt(attempt, now));
      }
    } else if (record.status === "running" && record.items === undefined && !crashed.has(key)) {
      checkpoints.write(
        item < 0 ? keys.step(runId, step) : keys.item(runId, step, item),
        releaseTask(record, now),
      );
      records.writeAttempt(
        attemptRecord(step, item, record, "interrupted", releaseError(record.attempt), [], now),
      );
    }
  }
  // The run as KV holds it: what this driver changed since went with the refused commits.
  const inKvRun = runEntry.value ?? records.run;
  records.changeRun({ ...inKvRun, status: "queued", dueAt: now }, inKvRun);
  checkpoints.runOp((op) => {
    op.delete(keys.lease(runId));
    store.wake(op, runId, 0);
  });
}

/** Every task record KV holds for a run: its steps' and their items'. */
export async function storedTasks(
  store: Store,
  runId: string,
): Promise<{ step: string; item: number; record: TaskRecord }[]> {
  const stored: { step: string; item: number; record: TaskRecord }[] = [];
  for (const [step, record] of await store.getSteps(runId)) {
    stored.push({ step, item: -1, record });
    if (record.items === undefined) continue;
    for (const [item, r] of await store.getItems(runId, step)) {
      stored.push({ step, item, record: r });
    }
  }
  return stored;
}

/** A failed attempt's record that fits one KV value: its logs give way to its error. */
export function fitAttempt(attempt: AttemptRecord, now: number): AttemptRecord {
  if (serializedBytes(attempt) <= KV_VALUE_BYTES - 1024) return attempt;
  const note =
    `(${attempt.logs.length} log lines not stored: with the attempt's error they are too large for one KV value)`;
  return { ...attempt, logs: [{ at: now, level: "warn", message: note }] };
}

/** Whether KV would refuse a write on its own: its value or its key is too large. */
export function overKvLimit(w: Write): boolean {
  return w.keyBytes > KV_KEY_BYTES ||
    (w.value !== null && serializedBytes(w.value) > KV_VALUE_BYTES);
}

/** A value's serialized size (as KV stores it, within a few bytes); Infinity if it has none. */
function serializedBytes(value: unknown): number {
  try {
    return v8.serialize(value).byteLength;
  } catch {
    return Infinity;
  }
}

/**
 * The error of a task whose checkpoint KV refused for breaking one of its limits: not
 * retryable, since KV would refuse it the same way again.
 */
export function limitError(
  task: { step: string; item: number },
  refusal: { limit: string; what: LimitCause },
): ErrorInfo {
  const { step, item } = task;
  const { limit, what } = refusal;
  const name = item < 0 ? `Step '${step}'` : `Item ${item} of step '${step}'`;
  const why = what === "result"
    ? "its result is too large for one KV value. Return less, or plain data kvflow can " +
      "measure and split into chunks (an Error object, say, is stored whole), or store " +
      "large data with ctx.artifact()"
    : what === "attempt"
    ? "its logs and error together are too large for one KV value: log less"
    : "the records of its commit break the limit together";
  return {
    name: "KvLimitError",
    message: `${name} could not be checkpointed: KV refused the commit (${limit}), ` +
      `and would refuse it again: ${why}`,
    retryable: false,
  };
}
