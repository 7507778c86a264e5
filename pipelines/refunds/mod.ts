/**
 * `refund-credits`: started by the event `refund.approved`, one run per event id. The payload's
 * `orderId` and `amount` become the run's params (checked by its schema), so a payload
 * without them is refused when it is sent, naming the field. The step credits the order
 * with the run's idempotency key, so a retried credit is recognised by the ledger.
 *
 * @module
 */
import { z } from "zod";
import { pipeline, step } from "../../lib/mod.ts";

const params = z.object({
  orderId: z.string().min(1),
  amount: z.number().positive(),
});

const credit = step("credit", (_inputs, ctx) => {
  const { orderId, amount } = params.parse(ctx.run.params);
  ctx.log.info("credited", { orderId, amount });
  return { orderId, credited: amount, reference: ctx.idempotencyKey };
});

export default pipeline("refund-credits", {
  description: "Credits a refunded order; started by the event refund.approved",
  params,
  on: {
    "refund.approved": (data) => ({ orderId: data?.orderId, amount: data?.amount }),
  },
  steps: [credit],
});
