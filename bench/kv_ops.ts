/**
 * What one KV operation costs on a local KV file, by kind, the way a grouped commit pays
 * for it: commits of 100 operations each, one after another, on one handle. It is the
 * floor under a limit's cost: a step limit's start adds a check and a write of its slot
 * to a commit, and its end a delete (`engine/driver/step_flow.ts`); a run limit's claim a
 * check of its key's mark and two writes, and its end a delete and two writes
 * (`store/flow.ts`, `kv/indexes.ts`).
 *
 * `deno run -A bench/kv_ops.ts [rounds]`: each kind once per round, kinds interleaved,
 * then the median per kind over the rounds, in µs per operation (wall time, and the part
 * on the calling thread: building the commit and handing it to KV), with an empty commit
 * for scale.
 *
 * @module
 */
import * as keys from "../lib/kv/keys.ts";
import type { SlotHolder } from "../lib/model/records.ts";
import { fmt, median, table } from "./_util.ts";

/** Operations per commit, as in a busy grouped commit (KV takes at most 100 checks). */
const PER_COMMIT = 100;
/** Commits per kind and round. */
const COMMITS = 40;

interface Kind {
  name: string;
  /** Adds operation `i` of commit `c` in round `r`. */
  add(op: Deno.AtomicOperation, r: number, c: number, i: number): void;
}

const SCOPE = "bench-diamond-step-limited/left";
const holder: SlotHolder = {
  run: "20261205-120000-abcdefghjk",
  step: "left",
  item: -1,
  attempt: 1,
  at: Date.now(),
};
const slot = (tag: string, r: number, c: number, i: number) =>
  keys.slot(SCOPE, `${tag}${r}`, c * PER_COMMIT + i);

const KINDS: Kind[] = [
  {
    name: "slot check (absent)",
    add: (op, r, c, i) => op.check({ key: slot("x", r, c, i), versionstamp: null }),
  },
  { name: "slot write (a holder)", add: (op, r, c, i) => op.set(slot("s", r, c, i), holder) },
  { name: "slot delete", add: (op, r, c, i) => op.delete(slot("s", r, c, i)) },
];

async function measure(
  kv: Deno.Kv,
  kind: Kind,
  r: number,
): Promise<{ wall: number; caller: number }> {
  let caller = 0;
  const t0 = performance.now();
  for (let c = 0; c < COMMITS; c++) {
    const a = performance.now();
    const op = kv.atomic();
    for (let i = 0; i < PER_COMMIT; i++) kind.add(op, r, c, i);
    const committed = op.commit();
    caller += performance.now() - a;
    if (!(await committed).ok) throw new Error(`${kind.name}: a commit failed`);
  }
  const n = COMMITS * PER_COMMIT;
  return { wall: (1000 * (performance.now() - t0)) / n, caller: (1000 * caller) / n };
}

async function emptyCommits(kv: Deno.Kv): Promise<number> {
  const t0 = performance.now();
  for (let c = 0; c < COMMITS; c++) await kv.atomic().set(["bench", "empty"], c).commit();
  return (1000 * (performance.now() - t0)) / COMMITS;
}

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? 7);
  const dir = await Deno.makeTempDir({ prefix: "kvflow-kv-ops-" });
  try {
    const kv = await Deno.openKv(`${dir}/ops.kv`);
    const wall = new Map<string, number[]>();
    const caller = new Map<string, number[]>();
    const empty: number[] = [];
    try {
      await measure(kv, KINDS[1], -1); // warm up
      for (let r = 0; r < rounds; r++) {
        // the write comes before the delete of the same slots
        for (const kind of KINDS) {
          const m = await measure(kv, kind, r);
          (wall.get(kind.name) ?? wall.set(kind.name, []).get(kind.name)!).push(m.wall);
          (caller.get(kind.name) ?? caller.set(kind.name, []).get(kind.name)!).push(m.caller);
        }
        empty.push(await emptyCommits(kv));
      }
    } finally {
      kv.close();
    }
    const rows = KINDS.map((k) => [
      k.name,
      fmt(median(wall.get(k.name)!), 1),
      fmt(median(caller.get(k.name)!), 1),
    ]);
    const each = KINDS.map((k) => median(wall.get(k.name)!));
    rows.push(["a step limit's slot (the three)", fmt(each[0] + each[1] + each[2], 1), "-"]);
    rows.push(["an empty commit (per commit)", fmt(median(empty), 0), "-"]);
    console.log(
      `${PER_COMMIT} operations a commit, ${COMMITS} commits per kind and round, median of ${rounds} rounds\n`,
    );
    console.log(table([["operation", "µs each (wall)", "µs each (calling thread)"], ...rows]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
