/**
 * Test pipelines that wait, for the HTTP and dashboard tests of events: an approval gate
 * matched by the logical date, a pipeline an event starts, and a parent that invokes a
 * child which sleeps.
 *
 * @module
 */
import { z } from "zod";
import {
  invoke,
  NonRetryableError,
  type Pipeline,
  pipeline,
  sleep,
  step,
  waitFor,
} from "../../lib/mod.ts";

/** prepare → approval (`t.approved` or `t.rejected` whose `date` is the logical date) → finish. */
export function gatePipeline(): Pipeline<unknown> {
  const prepare = step("prepare", () => "ready");
  const approval = waitFor("approval", {
    needs: { prepare },
    events: {
      "t.approved": null,
      "t.rejected": z.object({ reason: z.string().min(1) }).passthrough(),
    },
    match: { field: "date", equals: (_inputs, run) => run.logicalDate },
    timeout: "1d",
  });
  const finish = step("finish", { needs: { approval } }, ({ approval }) => {
    if (approval.event === "t.rejected") {
      throw new NonRetryableError(`Rejected: ${(approval.data as { reason: string }).reason}`);
    }
    return "done";
  });
  return pipeline("gate", {
    description: "Waits for an approval of its logical date",
    steps: [prepare, approval, finish],
  }) as Pipeline<unknown>;
}

/** Started by `t.refunded` with `{ orderId }` (a string) as its param `order`. */
export function refundPipeline(): Pipeline<unknown> {
  const refund = step("refund", (_inputs, ctx) => `refunded ${ctx.run.params.order}`);
  return pipeline("refunds", {
    params: z.object({ order: z.string().min(1) }),
    on: { "t.refunded": (data) => ({ order: (data as { orderId?: unknown })?.orderId }) },
    steps: [refund],
  }) as Pipeline<unknown>;
}

/** A child that sleeps an hour, and a parent that invokes it. */
export function familyPipelines(): Pipeline<unknown>[] {
  const nap = sleep("nap", { for: "1h" });
  const child = pipeline("napper", {
    params: z.object({ n: z.number() }),
    steps: [nap],
    result: nap,
  });
  const call = invoke("call", { pipeline: child, params: () => ({ n: 1 }) });
  const parent = pipeline("parent", { steps: [call] });
  return [child as Pipeline<unknown>, parent as Pipeline<unknown>];
}

/** Every pipeline of this kit. */
export function gatePipelines(): Pipeline<unknown>[] {
  return [gatePipeline(), refundPipeline(), ...familyPipelines()];
}
