/** The step graph the driver walks: pure, no KV. */
import assert from "node:assert/strict";
import { resolveRetry } from "../../lib/define/retry.ts";
import { type AnyStep, step } from "../../lib/define/step.ts";
import type { StepStatus, TaskRecord } from "../../lib/model/records.ts";
import { pendingTask } from "../../lib/model/transitions.ts";
import {
  blockingNeed,
  isEnded,
  knownInputs,
  readiness,
  StepGraph,
  type StepNode,
} from "../../lib/engine/driver/graph.ts";
import { newFan, trackItem } from "../../lib/engine/driver/fan_out.ts";

function record(status: StepStatus, nextAt: number | null = null): TaskRecord {
  return { ...pendingTask(), status, nextAt };
}

function add(graph: StepGraph, def: AnyStep, status: StepStatus = "pending"): StepNode {
  return graph.add(def, {
    record: record(status),
    retry: resolveRetry(undefined),
    timeoutMs: 1000,
    key: ["run", def.name],
    keyId: def.name,
    keyBytes: 0,
  });
}

/** The names a full walk of the open list visits, in order. */
function walk(graph: StepGraph, visit: (node: StepNode) => void = () => {}): string[] {
  const seen: string[] = [];
  do {
    graph.startWalk();
    for (let node = graph.nextOpen(); node; node = graph.nextOpen()) {
      seen.push(node.def.name);
      visit(node);
    }
  } while (graph.walkAgain());
  graph.endWalk();
  return seen;
}

const a = step("a", () => 1);
const b = step("b", { needs: { a } }, ({ a }) => a + 1);
const c = step("c", { needs: { a } }, ({ a }) => a + 2);
const d = step("d", { needs: { b, c } }, ({ b, c }) => b + c);

function diamond(statuses: Partial<Record<string, StepStatus>> = {}): StepGraph {
  const graph = new StepGraph();
  for (const def of [a, b, c, d]) add(graph, def, statuses[def.name]);
  return graph;
}

Deno.test("graph: nodes keep topological order and link needs both ways", () => {
  const graph = diamond();
  assert.deepEqual(graph.order.map((n) => n.def.name), ["a", "b", "c", "d"]);
  assert.deepEqual(graph.order.map((n) => n.at), [0, 1, 2, 3]);
  const [na, nb, nc, nd] = graph.order;
  assert.deepEqual(nd.needs, [nb, nc]);
  assert.deepEqual(na.dependents, [nb, nc]);
  assert.equal(graph.node("c"), nc);
  assert.equal(graph.node("nope"), undefined);
});

Deno.test("graph: a step that needs nothing is ready", () => {
  assert.equal(readiness(diamond().node("a")!), "ready");
});

Deno.test("graph: a step whose needs all succeeded is ready", () => {
  const graph = diamond({ a: "succeeded", b: "succeeded", c: "succeeded" });
  assert.equal(readiness(graph.node("d")!), "ready");
});

Deno.test("graph: a step with a need still to end waits", () => {
  const graph = diamond({ a: "succeeded", b: "succeeded", c: "running" });
  assert.equal(readiness(graph.node("d")!), "waiting");
});

Deno.test("graph: a step with a failed or skipped need is blocked, by that need", () => {
  const graph = diamond({ a: "succeeded", b: "running", c: "failed" });
  assert.equal(readiness(graph.node("d")!), "blocked");
  assert.equal(blockingNeed(graph.node("d")!), graph.node("c"));
  const skipped = diamond({ a: "succeeded", b: "skipped", c: "succeeded" });
  assert.equal(readiness(skipped.node("d")!), "blocked");
  assert.equal(blockingNeed(skipped.node("d")!), skipped.node("b"));
});

Deno.test("graph: succeeded, failed and skipped are ended; pending, running and retrying are not", () => {
  assert.deepEqual(
    (["pending", "running", "retrying", "succeeded", "failed", "skipped"] as const).map(isEnded),
    [false, false, false, true, true, true],
  );
});

Deno.test("graph: ended steps are never in the open list", () => {
  const graph = diamond({ a: "succeeded", b: "succeeded" });
  assert.deepEqual(graph.openNodes.map((n) => n.def.name), ["c", "d"]);
  assert.deepEqual(walk(graph), ["c", "d"]);
});

Deno.test("graph: a walk drops the nodes it closed, and the list keeps the rest", () => {
  const graph = diamond();
  assert.deepEqual(
    walk(graph, (node) => {
      if (readiness(node) === "waiting") node.open = false;
    }),
    ["a", "b", "c", "d"],
  );
  assert.deepEqual(graph.openNodes.map((n) => n.def.name), ["a"]);
  assert.equal(graph.node("b")!.listed, false);
});

Deno.test("graph: a step's end opens its dependents, in topological order", () => {
  const graph = diamond();
  walk(graph, (node) => {
    if (readiness(node) === "waiting") node.open = false;
  });
  const na = graph.node("a")!;
  na.record = record("succeeded");
  graph.openDependents(na);
  assert.deepEqual(graph.openNodes.map((n) => n.def.name), ["a", "b", "c"]);
  assert.deepEqual(
    walk(graph, (node) => {
      if (isEnded(node.record.status)) node.open = false;
    }),
    ["a", "b", "c"],
  );
  assert.deepEqual(graph.openNodes.map((n) => n.def.name), ["b", "c"]);
});

Deno.test("graph: an ended step is not opened again", () => {
  const graph = diamond({ a: "succeeded", b: "failed" });
  const nb = graph.node("b")!;
  assert.equal(nb.open, false);
  graph.open(nb);
  assert.equal(nb.open, false);
  assert.deepEqual(graph.openNodes.map((n) => n.def.name), ["c", "d"]);
});

Deno.test("graph: a node opened behind the walk makes the walk go again, and none is missed", () => {
  const graph = diamond();
  // close b, c and d first, as a walk does while a runs
  walk(graph, (node) => {
    if (readiness(node) === "waiting") node.open = false;
  });
  const seen = walk(graph, (node) => {
    if (node.def.name === "a" && node.record.status !== "succeeded") {
      node.record = record("succeeded");
      graph.openDependents(node);
    }
  });
  // b and c are inserted after a (the walk is at a): they are visited in this walk
  assert.deepEqual(seen.slice(0, 3), ["a", "b", "c"]);
  assert.deepEqual(graph.openNodes.map((n) => n.def.name), ["a", "b", "c"]);
});

Deno.test("graph: a node inserted before the walk's place is walked in a second pass", () => {
  const graph = diamond({ a: "succeeded" });
  const nb = graph.node("b")!;
  const nc = graph.node("c")!;
  nb.open = false;
  graph.endWalk(); // b leaves the list
  const seen = walk(graph, (node) => {
    if (node === nc && !nb.open) graph.open(nb);
  });
  assert.deepEqual(seen, ["c", "d", "b", "c", "d"]);
  assert.deepEqual(graph.openNodes.map((n) => n.def.name), ["b", "c", "d"]);
});

Deno.test("graph: the earliest retry is the first due of retrying steps and fan-out items", () => {
  const graph = diamond({ a: "succeeded" });
  assert.equal(graph.earliestRetry(0), Infinity);
  graph.node("b")!.record = record("retrying", 500);
  assert.equal(graph.earliestRetry(0), 500);
  const fan = newFan([1, 2]);
  trackItem(fan, 0, record("retrying", 200));
  graph.node("c")!.fan = fan;
  assert.equal(graph.earliestRetry(0), 200);
  trackItem(fan, 0, record("succeeded"));
  assert.equal(graph.earliestRetry(0), 500);
});

Deno.test("graph: the run's verdict reads from every step", () => {
  const done = diamond({ a: "succeeded", b: "succeeded", c: "succeeded", d: "succeeded" });
  assert.equal(done.allSucceeded(), true);
  assert.equal(done.firstFailed(), undefined);
  const failed = diamond({ a: "succeeded", b: "failed", c: "failed", d: "skipped" });
  assert.equal(failed.allSucceeded(), false);
  assert.equal(failed.firstFailed(), failed.node("b"));
});

Deno.test("graph: inputs are known without a read once every need's output is in memory", () => {
  const graph = diamond({ a: "succeeded", b: "succeeded", c: "succeeded" });
  const nd = graph.node("d")!;
  assert.equal(knownInputs(nd), undefined);
  graph.node("b")!.output = { value: 2 };
  assert.equal(knownInputs(nd), undefined);
  graph.node("c")!.output = { value: 3 };
  assert.deepEqual(knownInputs(nd), { b: 2, c: 3 });
  assert.deepEqual(knownInputs(graph.node("a")!), {});
});
