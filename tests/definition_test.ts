import assert from "node:assert/strict";
import { z } from "zod";
import { type AnyStep, type OutputOf, pipeline, type Step, step } from "../lib/mod.ts";

/** A step built by hand, so its `needs` can be filled in after creation to close a cycle. */
function looseStep(name: string): AnyStep & { needs: Record<string, AnyStep> } {
  return { kind: "step", name, needs: {}, run: () => Promise.resolve(name) };
}

Deno.test("pipeline() rejects a cycle and names the steps on it", () => {
  const a = looseStep("a");
  const b = step("b", { needs: { a } }, ({ a }) => a);
  const c = step("c", { needs: { b } }, ({ b }) => b);
  a.needs.c = c;
  assert.throws(
    () => pipeline("cyclic", { steps: [a, b, c] }),
    (e: unknown) =>
      e instanceof TypeError && /cycle/.test(e.message) && /'cyclic'/.test(e.message) &&
      /a -> c -> b -> a|b -> a -> c -> b|c -> b -> a -> c/.test(e.message),
  );
});

Deno.test("pipeline() rejects a step that needs itself", () => {
  const a = looseStep("selfish");
  a.needs.me = a;
  assert.throws(
    () => pipeline("self-cycle", { steps: [a] }),
    { name: "TypeError", message: /cycle: selfish -> selfish/ },
  );
});

Deno.test("pipeline() rejects two steps with the same name", () => {
  const one = step("load", () => 1);
  const two = step("load", () => 2);
  assert.throws(
    () => pipeline("dupes", { steps: [one, two] }),
    { name: "TypeError", message: /two steps are named 'load'/ },
  );
  assert.throws(
    () => pipeline("dupes", { steps: [one, one] }),
    { name: "TypeError", message: /the same step is listed twice/ },
  );
});

Deno.test("pipeline() rejects a step that needs a step not in its list", () => {
  const hidden = step("hidden", () => 1);
  const user = step("user", { needs: { hidden } }, ({ hidden }) => hidden + 1);
  assert.throws(
    () => pipeline("missing", { steps: [user] }),
    {
      name: "TypeError",
      message: /step 'user' needs 'hidden', which is not in its steps list/,
    },
  );
});

Deno.test("pipeline() rejects a same-named stand-in for a needed step", () => {
  const real = step("source", () => 1);
  const impostor = step("source", () => 2);
  const user = step("user", { needs: { real } }, ({ real }) => real);
  assert.throws(
    () => pipeline("impostor", { steps: [impostor, user] }),
    { name: "TypeError", message: /needs 'source', which is not in its steps list/ },
  );
});

Deno.test("step() and pipeline() reject bad names, quoting them", () => {
  for (const bad of ["", "has space", "-leading", "a/b", "x".repeat(101)]) {
    assert.throws(
      () => step(bad, () => 1),
      (e: unknown) =>
        e instanceof TypeError && e.message.includes(`Invalid step name ${JSON.stringify(bad)}`),
      `step name ${JSON.stringify(bad)}`,
    );
  }
  const ok = step("ok", () => 1);
  assert.throws(
    () => pipeline("bad name", { steps: [ok] }),
    { name: "TypeError", message: /Invalid pipeline name "bad name"/ },
  );
  // accepted shapes
  assert.equal(step("a.b_c-9", () => 1).name, "a.b_c-9");
});

Deno.test("step() rejects bad retry options, naming the step and the field", () => {
  const cases: [Parameters<typeof step>[1], ErrorConstructor | RangeErrorConstructor, RegExp][] = [
    [{ retry: { attempts: 0 } }, RangeError, /step 'flaky'.*attempts must be an integer/],
    [{ retry: { attempts: 1.5 } }, RangeError, /attempts must be an integer from 1 to 1000/],
    [{ retry: { jitter: 2 } }, RangeError, /step 'flaky'.*jitter must be from 0 to 1, got 2/],
    [
      // deno-lint-ignore no-explicit-any
      { retry: { backoff: "linear" as any } },
      RangeError,
      /backoff must be "exponential" or "fixed", got "linear"/,
    ],
    // deno-lint-ignore no-explicit-any
    [{ retry: { delay: "soon" as any } }, TypeError, /retry delay of step 'flaky'.*"soon"/],
    // deno-lint-ignore no-explicit-any
    [{ retry: { maxDelay: -5 as any } }, TypeError, /retry maxDelay of step 'flaky'/],
    // deno-lint-ignore no-explicit-any
    [{ timeout: "forever" as any }, TypeError, /timeout of step 'flaky'.*"forever"/],
  ];
  for (const [options, type, message] of cases) {
    assert.throws(
      () => step("flaky", options as { retry?: undefined }, () => 1),
      (e: unknown) => e instanceof type && message.test((e as Error).message),
      JSON.stringify(options),
    );
  }
});

Deno.test("step() rejects a missing function, a non-step need and bad fan-out options", () => {
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => (step as any)("nofn", {}),
    { name: "TypeError", message: /step 'nofn': its last argument must be the step function/ },
  );
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => step("orphan", { needs: { ghost: undefined as any } }, () => 1),
    { name: "TypeError", message: /step 'orphan': needs\.ghost is not a step/ },
  );
  const list = step("list", () => [1, 2]);
  assert.throws(
    () => step("fan", { needs: { list }, items: ({ list }) => list, concurrency: 0 }, (x) => x),
    { name: "RangeError", message: /step 'fan': concurrency must be a positive integer, got 0/ },
  );
});

Deno.test("pipeline() rejects an empty step list, bad defaults and bad concurrency", () => {
  const a = step("a", () => 1);
  assert.throws(
    () => pipeline("empty", { steps: [] }),
    { name: "TypeError", message: /pipeline 'empty': steps must be a non-empty list/ },
  );
  assert.throws(
    () => pipeline("defaults", { steps: [a], defaults: { retry: { attempts: -1 } } }),
    { name: "RangeError", message: /pipeline 'defaults'.*attempts/ },
  );
  assert.throws(
    () => pipeline("conc", { steps: [a], concurrency: 0 }),
    { name: "RangeError", message: /pipeline 'conc': concurrency must be a positive integer/ },
  );
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => pipeline("notstep", { steps: [a, { name: "x" } as any] }),
    { name: "TypeError", message: /pipeline 'notstep': steps\[1\] is not a step/ },
  );
});

Deno.test("pipeline() orders steps by their needs and hashes the graph", () => {
  const a = step("a", () => 1);
  const b = step("b", { needs: { a } }, ({ a }) => a + 1);
  const c = step("c", { needs: { a, b } }, ({ a, b }) => a + b);
  const p = pipeline("ordered", { steps: [c, b, a] });
  assert.deepEqual(p.steps.map((s) => s.name), ["a", "b", "c"]);
  assert.deepEqual(p.graph, { a: [], b: ["a"], c: ["a", "b"] });
  // the version depends on the graph, not on the list order or the functions
  const same = pipeline("ordered", { steps: [a, b, c] });
  assert.equal(same.version, p.version);
  const d = step("d", { needs: { c } }, ({ c }) => c);
  assert.notEqual(pipeline("ordered", { steps: [a, b, c, d] }).version, p.version);
});

Deno.test("types flow from a step's output to the steps that need it", () => {
  const count = step("count", () => 41);
  const label = step("label", { needs: { n: count } }, ({ n }) => {
    const checked: number = n;
    return { text: `n=${checked + 1}` };
  });
  const list = step("list", () => ["ada", "bo"]);
  const greet = step("greet", {
    needs: { list, label },
    items: ({ list }) => list,
  }, (name, ctx) => {
    const s: string = name;
    const t: string = ctx.inputs.label.text;
    return s.length + t.length;
  });
  const l: OutputOf<typeof label> = { text: "x" };
  const g: OutputOf<typeof greet> = [1, 2];
  const typedAsync: Step<string> = step("async", async () => await Promise.resolve("s"));
  assert.ok(l && g && typedAsync);

  // @ts-expect-error `n` is a number: it has no toUpperCase
  step("wrong", { needs: { n: count } }, ({ n }) => n.toUpperCase());
  // @ts-expect-error `label` outputs an object, not a number
  const wrongOut: OutputOf<typeof label> = 3;
  // @ts-expect-error fan-out items are strings
  step("wrong-item", { needs: { list }, items: ({ list }) => list }, (name: number) => name);
  // @ts-expect-error the output must satisfy the output schema's type
  step("wrong-schema", { output: z.string() }, () => 42);
  assert.equal(wrongOut, 3);
});

Deno.test("every flow-control option is refused when the module loads, naming the pipeline, the step and the field", () => {
  const fn = () => 1;
  const steps = [step("mail", fn)];
  const cases: [() => unknown, string][] = [
    [
      () => pipeline("mail-out", { steps: [step("mail", { limit: { max: 0 } }, fn)] }),
      "Invalid pipeline 'mail-out': step 'mail': limit.max: must be an integer from 1 to 1000, got 0",
    ],
    [
      () =>
        pipeline("mail-out", {
          steps: [step("mail", { limit: { max: 2, key: "x" as never } }, fn)],
        }),
      "Invalid pipeline 'mail-out': step 'mail': limit.key: must be a function returning a string",
    ],
    [
      () =>
        pipeline("mail-out", {
          steps: [step("mail", { limit: { max: 2, size: 3 } as never }, fn)],
        }),
      "Invalid pipeline 'mail-out': step 'mail': limit.size: not a field (use key, max, scope)",
    ],
    [
      () => pipeline("mail-out", { steps: [step("mail", { limit: { max: 2, scope: "" } }, fn)] }),
      `Invalid pipeline 'mail-out': step 'mail': limit.scope "": use 1 to 100 letters, digits, '-', '_', '.', '/' or ':'`,
    ],
    [
      () =>
        pipeline("mail-out", { steps: [step("mail", { throttle: { max: 2, per: "2d" } }, fn)] }),
      "Invalid pipeline 'mail-out': step 'mail': throttle.per: must be from 1 ms to 1 day, got 172800000 ms",
    ],
    [
      () => pipeline("mail-out", { steps: [step("mail", { throttle: 5 as never }, fn)] }),
      `Invalid pipeline 'mail-out': step 'mail': throttle: must be an object such as { max: 10, per: "1s" }`,
    ],
    [
      () => pipeline("mail-out", { limit: { max: 1001 }, steps }),
      "Invalid pipeline 'mail-out': limit.max: must be an integer from 1 to 1000, got 1001",
    ],
    [
      () => pipeline("mail-out", { throttle: { max: 1, per: "soon" as never }, steps }),
      `Invalid pipeline 'mail-out': throttle.per "soon": not a duration (use a string like "1s" or "5m")`,
    ],
    [
      () => pipeline("mail-out", { debounce: { quiet: "0s" }, steps }),
      "Invalid pipeline 'mail-out': debounce.quiet: must be from 1 ms to 1 day, got 0 ms",
    ],
    [
      () => pipeline("mail-out", { debounce: { quiet: "1m", maxWait: "30s" }, steps }),
      "Invalid pipeline 'mail-out': debounce.maxWait: it must be at least quiet",
    ],
    [
      () => pipeline("mail-out", { priority: 11, steps }),
      "Invalid pipeline 'mail-out': priority must be an integer from 0 to 10, got 11",
    ],
  ];
  for (const [define, message] of cases) {
    assert.throws(define, { name: "TypeError", message });
  }
  // a step alone keeps what was wrong for the pipeline that lists it
  const alone = step("mail", { limit: { max: 0 } }, fn);
  assert.match(alone.invalid!.message, /^Invalid step 'mail': limit\.max/);
  assert.equal(alone.limit, undefined);
});
