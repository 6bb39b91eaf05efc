#!/usr/bin/env node
// `npm run bench [-- NAME... --quick --large --rounds N --out DIR]`: runs the benchmarks of bench/
// (every bench/NAME.bench.mjs; all of them when no NAME is given), prints a table of medians and
// per-round ratios with min–max, and writes a JSON record (with the commit measured) to
// bench/results/NAME-DATE.json. `--quick` runs 5 rounds at small sizes without warm-up, and saves
// nothing unless --out is given: a smoke run, not a measurement. `--large` adds the large sizes
// (registration at 5,000; memory at 10,000 instances with 1,000 Watch streams).
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { environment, formatTable, gitState, writeRecord } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const DEFAULT_ROUNDS = 10;
const MIN_ROUNDS = 5;

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      quick: { type: "boolean", default: false },
      large: { type: "boolean", default: false },
      rounds: { type: "string" },
      out: { type: "string" },
    },
  });
} catch (error) {
  console.error(`bench: ${error.message}`);
  process.exit(2);
}
const { values, positionals } = parsed;
const roundsGiven = values.rounds === undefined ? undefined : Number(values.rounds);
if (roundsGiven !== undefined && !(Number.isInteger(roundsGiven) && roundsGiven >= MIN_ROUNDS)) {
  console.error(`bench: --rounds must be an integer ≥ ${MIN_ROUNDS} (or use --quick)`);
  process.exit(2);
}
const available = readdirSync(here)
  .filter((file) => file.endsWith(".bench.mjs"))
  .map((file) => file.slice(0, -".bench.mjs".length))
  .sort();
const selected = positionals.length > 0 ? positionals : available;
const unknown = selected.filter((name) => !available.includes(name));
if (unknown.length > 0) {
  console.error(`bench: no benchmark ${unknown.join(", ")} (have: ${available.join(", ")})`);
  process.exit(2);
}

const git = gitState(root);
const env = environment();
const times = (value) => `${value.toFixed(2)}×`;
for (const name of selected) {
  const benchmark = await import(join(here, `${name}.bench.mjs`));
  // A benchmark whose round takes seconds names fewer default rounds (never under MIN_ROUNDS).
  const rounds = values.quick ? MIN_ROUNDS : (roundsGiven ?? benchmark.defaultRounds ?? DEFAULT_ROUNDS);
  // One warm-up round, or more where a benchmark measures a server that needs its JIT warm.
  const warmupRounds = values.quick ? 0 : (benchmark.defaultWarmupRounds ?? 1);
  console.log(
    `${name}: ${benchmark.description}\n` +
      `${rounds} interleaved round(s)${warmupRounds > 0 ? ` after ${warmupRounds} warm-up` : ""}, ` +
      `node ${env.node}, ${env.cpus} CPUs, commit ${git.commit?.slice(0, 12) ?? "unknown"}` +
      `${git.dirty ? " (with uncommitted changes)" : ""}\n`,
  );
  let result;
  const began = Date.now();
  try {
    result = await benchmark.run({ root, rounds, warmupRounds, quick: values.quick, large: values.large });
  } catch (error) {
    console.error(`bench: ${name} failed: ${error.stack ?? error.message}`);
    process.exit(1);
  }
  const number = (value, digits = 1) => (Number.isFinite(value) ? value.toFixed(digits) : String(value));
  console.log(
    formatTable([
      [
        "variant",
        ...result.columns.flatMap((column) => [`${column.label} median ${column.unit}`, "min", "max"]),
      ],
      ...result.variants.map((variant) => [
        variant.name,
        ...result.columns.flatMap((column) =>
          ["median", "min", "max"].map((at) => number(variant[column.key][at], column.digits)),
        ),
      ]),
    ]),
  );
  console.log();
  const shown = (ratio, value) =>
    ratio.difference ? `${value >= 0 ? "+" : ""}${number(value)} ${ratio.unit}` : times(value);
  console.log(
    formatTable([
      ["ratio (per round)", "of", "median", "min", "max", "goal"],
      ...result.ratios.map((ratio) => [
        ratio.name,
        ratio.of,
        shown(ratio, ratio.median),
        shown(ratio, ratio.min),
        shown(ratio, ratio.max),
        ratio.target === null ? "" : `${ratio.goal} ${shown(ratio, ratio.target)}`,
      ]),
    ]),
  );
  for (const note of result.notes ?? []) console.log(note);
  console.log(`(${((Date.now() - began) / 1000).toFixed(0)} s)`);
  const record = {
    benchmark: name,
    description: benchmark.description,
    date: new Date().toISOString(),
    commit: git.commit,
    dirty: git.dirty,
    ...env,
    rounds,
    warmupRounds,
    quick: values.quick,
    large: values.large,
    ...result,
  };
  if (values.quick && values.out === undefined) {
    console.log("\nnot saved (--quick is a smoke run; pass --out DIR to save it)\n");
  } else {
    const path = writeRecord(values.out ?? join(here, "results"), name, record);
    console.log(`\nsaved ${path}\n`);
  }
}
