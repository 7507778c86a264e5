/**
 * Summarizes a V8 `.cpuprofile` (from `deno run --cpu-prof`): self and inclusive time by
 * function, in ms and in µs per unit of work (pass the number of steps profiled).
 *
 * `deno run -A bench/cpuprofile.ts <file.cpuprofile> [units] [rows]`
 *
 * @module
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/**
 * Where a function's self time belongs: kvflow's own code, KV's native calls, KV's value
 * (de)serialization, the rest of KV's JavaScript binding, garbage collection, the benchmark
 * itself, or the runtime (event loop, timers, promises, ops, the profiler's `(program)`).
 */
function category(cf: CallFrame): string {
  const name = cf.functionName;
  if (name === "(idle)") return "idle";
  if (name === "(garbage collector)") return "garbage collection";
  if (/^op_kv_atomic_write/.test(name)) return "KV writes (native commit call)";
  if (/^op_kv_/.test(name)) return "KV reads and other native KV calls";
  if (
    /^(op_)?(de)?serialize(Value)?$/.test(name) || /deno_node\/v8\.ts/.test(cf.url) ||
    /^(read|write)Value$/.test(name)
  ) return "KV serialization (V8 structured clone)";
  if (/deno_kv/.test(cf.url)) return "KV JavaScript binding (keys, atomic ops)";
  if (/\/lib\//.test(cf.url)) return "kvflow JavaScript (lib/)";
  if (/\/bench\//.test(cf.url)) return "benchmark code";
  return "runtime (event loop, timers, promises, other ops)";
}

function label(cf: CallFrame): string {
  const file = cf.url.split("/").slice(-2).join("/");
  return `${cf.functionName || "(anonymous)"} ${file}${file ? `:${cf.lineNumber + 1}` : ""}`;
}

if (import.meta.main) {
  const [path, unitsArg, rowsArg] = Deno.args;
  const profile: Profile = JSON.parse(await Deno.readTextFile(path));
  const units = Number(unitsArg ?? 1);
  const rows = Number(rowsArg ?? 30);
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfUs = new Map<number, number>();
  let totalUs = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
    totalUs += dt;
  });
  const self = new Map<string, number>();
  const byCategory = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const name = label(nodes.get(id)!.callFrame);
    self.set(name, (self.get(name) ?? 0) + us);
    const kind = category(nodes.get(id)!.callFrame);
    byCategory.set(kind, (byCategory.get(kind) ?? 0) + us);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = label(nodes.get(cur)!.callFrame);
      if (seen.has(n)) continue;
      seen.add(n);
      inclusive.set(n, (inclusive.get(n) ?? 0) + us);
    }
  }
  const idle = self.get("(idle) ") ?? 0;
  console.log(
    `sampled ${(totalUs / 1000).toFixed(1)} ms, idle ${(idle / 1000).toFixed(1)} ms, busy ${
      ((totalUs - idle) / 1000).toFixed(1)
    } ms = ${((totalUs - idle) / units).toFixed(1)} µs per unit (${units} units)`,
  );
  const print = (title: string, m: Map<string, number>) => {
    console.log(`\n${title}\n      ms  µs/unit  function`);
    for (const [name, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, rows)) {
      console.log(
        `${(us / 1000).toFixed(1).padStart(8)} ${(us / units).toFixed(2).padStart(8)}  ${name}`,
      );
    }
  };
  print("self time by kind", byCategory);
  print("self time", self);
  print("inclusive time", inclusive);
}
