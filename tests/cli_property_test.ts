/**
 * The command line under fire: random argv never makes the parser throw anything but a
 * `UsageError`, parsing is deterministic, valid command lines parse to what they say, and
 * bad ones exit 2 with one line and no stack, through `main()` and through a real
 * `deno run main.ts` process, leaving the KV file as it was.
 *
 * @module
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { EXIT, main } from "../lib/cli/cli.ts";
import { type Command, type Flags, parseCommand, type ParsedCommand } from "../lib/cli/parse.ts";
import { parseParams } from "../lib/cli/params.ts";
import { UsageError } from "../lib/mod.ts";
import { RUN_STATUSES } from "../lib/model/records.ts";
import { validateParams } from "../lib/model/params.ts";
import { pipelines } from "../pipelines/mod.ts";
import { type Exit, Sandbox } from "./_support/harness.ts";
import { kvSnapshot, propertyOptions, SEED } from "./_support/property.ts";

const COMMANDS: Command[] = [
  "run",
  "resume",
  "rerun",
  "cancel",
  "status",
  "runs",
  "pipelines",
  "backfill",
  "serve",
  "worker",
];
const ONE_ARGUMENT = new Set<Command>(["run", "resume", "rerun", "cancel", "status", "backfill"]);
const STRING_FLAGS = [
  "params",
  "date",
  "from",
  "pipeline",
  "status",
  "limit",
  "port",
  "to",
  "max-active",
] as const;
const BOOLEAN_FLAGS = ["detach", "force", "json"] as const;

const oddText = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: "grapheme", maxLength: 8 }),
  fc.string({ unit: "binary", maxLength: 8 }),
  fc.constantFrom(
    "",
    " ",
    "=",
    "==",
    "k=v",
    "=v",
    "k=",
    "a=b=c",
    "-",
    "--",
    "-x",
    "---",
    "\n",
    "a\nb",
    "\u0000",
    "\u202e",
    "'",
    '"',
    "\\",
    "{",
    '{"customers":2}',
    "null",
  ),
  fc.integer({ min: 1000, max: 20_000 }).map((n) => "x".repeat(n)),
);

/** One token of a random command line. */
const token = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...COMMANDS, "help", "Run", "launch", "", "--", "-") },
  {
    weight: 4,
    arbitrary: fc.constantFrom(
      ...[...STRING_FLAGS, ...BOOLEAN_FLAGS, "param", "help"].map((f) => `--${f}`),
      "-h",
      "-x",
      "-hx",
      "--colour",
      "--no-json",
      "--JSON",
      "--=x",
    ),
  },
  {
    weight: 2,
    arbitrary: fc.tuple(
      fc.constantFrom(...STRING_FLAGS, ...BOOLEAN_FLAGS, "param", "help", "nope", ""),
      oddText,
    ).map(([f, v]) => `--${f}=${v}`),
  },
  { weight: 3, arbitrary: oddText },
);
const argv = fc.array(token, { maxLength: 8 });

type Outcome = { ok: ParsedCommand } | { error: string };

function outcome(args: readonly string[]): Outcome {
  try {
    const parsed = parseCommand(args);
    return { ok: { ...parsed, flags: { ...parsed.flags } } };
  } catch (error) {
    if (!(error instanceof UsageError)) {
      throw new Error(`parseCommand(${JSON.stringify(args)}) threw ${error}`, { cause: error });
    }
    return { error: error.message };
  }
}

function briefly(args: readonly string[]): string {
  return JSON.stringify(args.map((a) => a.length > 40 ? `${a.slice(0, 40)}…(${a.length})` : a));
}

Deno.test("property: any argv parses to a command or a usage error, the same every time", async () => {
  let parsed = 0;
  let refused = 0;
  await fc.assert(
    fc.asyncProperty(argv, async (args) => {
      const first = outcome(args);
      assert.deepEqual(outcome([...args]), first, `not deterministic: ${briefly(args)}`);
      if ("ok" in first) {
        parsed++;
        const { command, args: rest } = first.ok;
        if (ONE_ARGUMENT.has(command as Command)) assert.equal(rest.length, 1);
        if (COMMANDS.includes(command as Command) && !ONE_ARGUMENT.has(command as Command)) {
          assert.deepEqual(rest, []);
        }
        if (command !== "help" && command !== "usage") return;
      } else {
        refused++;
      }
      // What parsing refuses (and help) returns before anything is opened, so main() is
      // safe to run here: exit 2 with one line on stderr, or the usage text.
      const out: string[] = [];
      const err: string[] = [];
      const code = await main([...args], {
        pipelines,
        out: (l) => out.push(l),
        err: (l) => err.push(l),
      });
      if ("error" in first) {
        assert.equal(code, EXIT.usage, briefly(args));
        assert.deepEqual(out, [], briefly(args));
        assert.equal(err.length, 1, briefly(args));
        assert.match(err[0], /^kvflow: \S/, briefly(args));
        assert.ok(!/[\r\n]/.test(err[0]), `two lines for ${briefly(args)}: ${err[0]}`);
        assert.doesNotMatch(err[0], /^\s+at |Uncaught|Stack backtrace/m);
      } else {
        assert.equal(code, first.ok.command === "usage" ? EXIT.usage : EXIT.ok);
        assert.match([...out, ...err].join("\n"), /^kvflow — durable pipelines/);
      }
    }),
    propertyOptions(1500),
  );
  console.log(`argv property (seed ${SEED}): ${parsed} parsed, ${refused} refused`);
  assert.ok(parsed > 50 && refused > 50, `too one-sided: ${parsed} parsed, ${refused} refused`);
});

/** A valid command line and what it must parse to. */
interface Generated {
  argv: string[];
  expected: ParsedCommand;
}

const flagValue = fc.oneof(
  fc.string({ maxLength: 10 }),
  fc.string({ unit: "grapheme", maxLength: 6 }),
  fc.constantFrom("", "=", "a=b", "-1", "--x", "\n", "k=v=w"),
);

const generated: fc.Arbitrary<Generated> = fc.record({
  command: fc.constantFrom(...COMMANDS),
  argument: flagValue,
  strings: fc.dictionary(
    fc.constantFrom(...STRING_FLAGS),
    fc.array(flagValue, { minLength: 1, maxLength: 3 }),
    { maxKeys: 4 },
  ),
  booleans: fc.subarray([...BOOLEAN_FLAGS]),
  params: fc.array(flagValue, { maxLength: 3 }),
  status: fc.constantFrom(...RUN_STATUSES),
  required: fc.tuple(
    flagValue.filter((v) => v !== ""),
    flagValue.filter((v) => v !== ""),
  ),
  inline: fc.array(fc.boolean(), { minLength: 20, maxLength: 20 }),
  order: fc.array(fc.nat(), { minLength: 20, maxLength: 20 }),
}).map((g) => {
  const values: Record<string, string[]> = { ...g.strings };
  // the flags a command cannot do without, with a value that passes
  if (g.command === "rerun" || g.command === "backfill") values.from = [g.required[0]];
  if (g.command === "backfill") values.to = [g.required[1]];
  if (g.command === "runs" && values.status) values.status = [g.status];
  const pieces: { tokens: string[]; name: string; value: string | true }[] = [];
  let i = 0;
  const flag = (name: string, value: string) => {
    // a value that starts with "-" reads as an option unless given with "="
    const inline = g.inline[i++ % 20] || value.startsWith("-");
    pieces.push({ tokens: inline ? [`--${name}=${value}`] : [`--${name}`, value], name, value });
  };
  for (const [name, list] of Object.entries(values)) for (const v of list) flag(name, v);
  for (const p of g.params) flag("param", p);
  for (const b of g.booleans) pieces.push({ tokens: [`--${b}`], name: b, value: true });
  // options and the command may come in any order; the argument goes last, after "--"
  // when it could read as an option
  const shuffled = pieces.map((p, k) => ({ p, k: g.order[k % 20] * 100 + k }))
    .sort((a, b) => a.k - b.k).map((x) => x.p);
  const argv = [g.command, ...shuffled.flatMap((p) => p.tokens)];
  const rest: string[] = [];
  if (ONE_ARGUMENT.has(g.command)) {
    if (g.argument.startsWith("-")) argv.push("--");
    argv.push(g.argument);
    rest.push(g.argument);
  }
  // a repeated flag keeps its last value; --param keeps each, in order
  const flags: Record<string, unknown> = {};
  for (const { name, value } of shuffled) {
    if (name === "param") flags.param = [...(flags.param as string[] ?? []), value];
    else flags[name] = value;
  }
  return { argv, expected: { command: g.command, args: rest, flags: flags as Flags } };
});

Deno.test("property: a valid command line parses to what it says (round trip)", () => {
  fc.assert(
    fc.property(generated, ({ argv, expected }) => {
      const got = outcome(argv);
      assert.deepEqual(got, { ok: expected }, briefly(argv));
    }),
    propertyOptions(1500),
  );
});

Deno.test("property: --param and --params give params the schema accepts, or a usage error", () => {
  const pair = fc.oneof(
    fc.tuple(fc.constantFrom("customers", "simulateOutage", "date", "x", "", "__proto__"), oddText)
      .map(([k, v]) => `${k}=${v}`),
    oddText,
  );
  const json = fc.option(
    fc.oneof(
      fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
      fc.dictionary(
        fc.constantFrom("customers", "simulateOutage", "__proto__", "constructor"),
        fc.jsonValue({ maxDepth: 2 }),
      ).map((v) => JSON.stringify(v)),
      oddText,
    ),
    { nil: undefined },
  );
  fc.assert(
    fc.property(
      fc.constantFrom(...pipelines),
      fc.array(pair, { maxLength: 4 }),
      json,
      (p, pairs, text) => {
        const run = () => {
          try {
            return { ok: parseParams(p, pairs, text) };
          } catch (error) {
            if (!(error instanceof UsageError)) {
              throw new Error(`${p.name} ${briefly(pairs)} ${text}: threw ${error}`);
            }
            return { error: error.message };
          }
        };
        const first = run();
        assert.deepEqual(run(), first, "not deterministic");
        // what parseParams gives back is valid params, unchanged by another check
        if ("ok" in first) assert.deepEqual(validateParams(p, first.ok), first.ok);
      },
    ),
    propertyOptions(1000),
  );
});

/** Command lines the CLI must refuse, with exit 2, before changing anything. */
const refused = fc.oneof(
  argv.filter((args) => "error" in outcome(args)).map((args) => ({ args, why: "parse" })),
  fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !/[\\/.]/.test(s) && !s.startsWith("-"))
    .filter((s) => !pipelines.some((p) => p.name === s))
    .map((name) => ({ args: ["run", name], why: "unknown pipeline" })),
  fc.tuple(fc.string({ maxLength: 10 }), oddText).map(([k, v]) => ({
    args: ["run", "example", `--param=zz${k}=${v}`],
    why: "unknown param",
  })),
  oddText.filter((d) => !/^\d{4}-\d{2}-\d{2}$/.test(d)).map((date) => ({
    args: ["run", "example", `--date=${date}`],
    why: "bad date",
  })),
  fc.tuple(fc.constantFrom("status", "cancel", "resume"), oddText).map(([command, id]) => ({
    args: [command, "--", `zz${id}`],
    why: "unknown run",
  })),
  oddText.filter((l) => !/^\s*\d+\s*$/.test(l) || Number(l) < 1 || Number(l) > 1000).map((
    limit,
  ) => ({ args: ["runs", `--limit=${limit}`], why: "bad limit" })),
);

Deno.test("bad command lines exit 2 from a real process with one line and change nothing in KV", async () => {
  await using box = await Sandbox.create();
  // the KV file exists and holds data the CLI must leave alone
  const kv = await Deno.openKv(box.kvPath);
  await kv.set(["guard"], "untouched");
  const before = await kvSnapshot(kv);
  kv.close();
  // An operating system cannot pass a NUL byte in an argument (exec takes C strings), so
  // those cases stay with the in-process property above.
  const cases = fc.sample(refused.filter(({ args }) => args.every((a) => !a.includes("\0"))), {
    numRuns: 10,
    seed: SEED,
  });
  // two at a time: the machine is shared
  const results: Exit[] = [];
  for (let i = 0; i < cases.length; i += 2) {
    results.push(...await Promise.all(cases.slice(i, i + 2).map((c) => box.cli(c.args))));
  }
  for (const [i, { args, why }] of cases.entries()) {
    const { code, stdout, stderr } = results[i];
    const where = `${why} (seed ${SEED}): kvflow ${briefly(args)}\nstdout: ${stdout}\nstderr: ${
      stderr.slice(0, 2000)
    }`;
    assert.equal(code, EXIT.usage, where);
    assert.equal(stdout, "", where);
    assert.equal(stderr.trimEnd().split("\n").length, 1, where);
    assert.match(stderr, /^kvflow: \S/, where);
    assert.doesNotMatch(stderr, /^\s+at |Uncaught|Stack backtrace/m, where);
  }
  const after = await box.withStore(({ kv }) => kvSnapshot(kv));
  assert.deepEqual([...after], [...before], "a refused command changed the KV file");
});

// Counterexamples the property found, kept as fixed cases.
Deno.test("cli regressions: a line break a user typed cannot split the one-line error", async () => {
  for (
    const [args, reason] of [
      [["a\nb"], "kvflow: Unknown command 'a\\nb': use one of run, "],
      [["runs", "--status=x\ny"], "kvflow: Unknown status 'x\\ny': use one of "],
      [["serve", "\r"], "kvflow: serve takes no arguments, got: \\r"],
    ] as const
  ) {
    const err: string[] = [];
    const code = await main([...args], { pipelines, out: () => {}, err: (l) => err.push(l) });
    assert.equal(code, EXIT.usage);
    assert.equal(err.length, 1);
    assert.ok(err[0].startsWith(reason), err[0]);
    assert.ok(!/[\r\n]/.test(err[0]), err[0]);
  }
});
