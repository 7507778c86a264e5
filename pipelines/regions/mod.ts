/**
 * Child pipelines: `regions` runs the `region-report` pipeline once per region, as child
 * runs, and sums their results. Each child's id derives from its parent, step and item,
 * so a crash while starting them never starts two; a failed child fails its item, and
 * resuming `regions` resumes that child.
 *
 * @module
 */
import { z } from "zod";
import { invoke, pipeline, step } from "../../lib/mod.ts";

const SALES: Record<string, number> = { north: 12_400, south: 9_800, east: 15_150, west: 7_300 };

const total = step("total", (_inputs, ctx) => {
  const region = String(ctx.run.params.region);
  const sales = SALES[region];
  if (sales === undefined) throw new Error(`no sales data for region '${region}'`);
  return { region, sales };
});

/** One region's report; its result is the `total` step's output. */
export const regionReport = pipeline("region-report", {
  description: "One region's sales total (run as a child of regions)",
  params: z.object({ region: z.string() }),
  steps: [total],
  result: total,
});

const list = step("list", () => Object.keys(SALES));
const reports = invoke("reports", {
  needs: { list },
  items: ({ list }) => list,
  pipeline: regionReport,
  params: (region) => ({ region }),
});
const sum = step("sum", { needs: { reports } }, ({ reports }) => ({
  regions: reports.length,
  sales: reports.reduce((total, r) => total + r.sales, 0),
}));

export default pipeline("regions", {
  description: "Runs region-report for every region as child runs and sums them",
  steps: [list, reports, sum],
});
