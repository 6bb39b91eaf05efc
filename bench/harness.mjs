// The shared part of every benchmark in bench/: interleaved A/B rounds of commands, medians and
// per-round ratios, a plain-text table, and a JSON record that names the commit measured.
// Benchmarks report numbers and ratios; they never pass or fail on a timing.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";

/**
 * Wall time of one run of `command args` in ms, from spawn to exit.
 * @throws Error with the command's stderr when it exits with a status other than 0.
 */
export function timeCommand(command, args, options = {}) {
  return timeSpawn(command, args, { stdio: ["ignore", "ignore", "pipe"], ...options }).wallMs;
}

const CPU_REPORTER = new URL("./cpu-usage-reporter.mjs", import.meta.url).href;

/**
 * One run of `node nodeArgs` in ms: wall time from spawn to exit, and the CPU time (user +
 * system, all threads) the process reports at exit through a preloaded module that writes
 * `process.cpuUsage()` to fd 3. CPU time is the steadier figure on a busy machine; the preload
 * costs every variant the same.
 * @throws Error with the command's stderr when it exits with a status other than 0.
 */
export function timeNode(nodeArgs, options = {}) {
  const { wallMs, result } = timeSpawn(process.execPath, ["--import", CPU_REPORTER, ...nodeArgs], {
    stdio: ["ignore", "ignore", "pipe", "pipe"],
    ...options,
  });
  const cpuMs = Number(result.output[3]?.toString().trim());
  if (!Number.isFinite(cpuMs)) throw new Error(`node ${nodeArgs.join(" ")} reported no CPU time`);
  return { wallMs, cpuMs };
}

function timeSpawn(command, args, options) {
  const started = process.hrtime.bigint();
  const result = spawnSync(command, args, options);
  const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
  if (result.error !== undefined) throw result.error;
  if (result.status !== 0) {
    const stderr = result.stderr?.toString().trim() ?? "";
    throw new Error(`${[command, ...args].join(" ")} exited ${result.status ?? result.signal}: ${stderr}`);
  }
  return { wallMs, result };
}

/**
 * Runs every variant once per round for `rounds` rounds, rotating the order each round so no
 * variant always goes first (interleaved A/B: drift in machine load hits all variants alike).
 * `warmupRounds` run first and are not recorded (they fill the file cache, warm up the JIT).
 * @param variants `[{ name, run: () => sample | Promise<sample> }]`, run one at a time.
 * @returns `{ [name]: sample[] }`, one sample per round, in round order.
 */
export async function interleave(variants, { rounds, warmupRounds = 0 }) {
  const samples = Object.fromEntries(variants.map((variant) => [variant.name, []]));
  for (let round = -warmupRounds; round < rounds; round += 1) {
    const offset = ((round % variants.length) + variants.length) % variants.length;
    for (let i = 0; i < variants.length; i += 1) {
      const variant = variants[(i + offset) % variants.length];
      const sample = await variant.run();
      if (round >= 0) samples[variant.name].push(sample);
    }
  }
  return samples;
}

/** The `q` quantile (0–1) of ascending `sorted` values, nearest rank; NaN when empty. */
export function percentile(sorted, q) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/**
 * One result row per variant: `{ name, [metric]: { median, min, max, samples } }` for every
 * `metric` (a key of each sample) of `samples` (as `interleave` returns them).
 */
export function summarizeVariants(samples, metrics) {
  return Object.entries(samples).map(([name, list]) => ({
    name,
    ...Object.fromEntries(
      metrics.map((metric) => {
        const values = list.map((sample) => sample[metric]);
        return [metric, { ...summary(values), samples: values }];
      }),
    ),
  }));
}

/**
 * A ratio row: per round, `metric` of `numerator` ÷ the same of `denominator` (or − with
 * `difference: true`, in `unit`), with its median, min and max. `goal` is "≤" or "≥" `target`
 * (null: none), printed beside it, never enforced.
 */
export function ratioRow(
  samples,
  { metric, numerator, denominator, of, target = null, goal = "≤", difference = false, unit },
) {
  const a = samples[numerator].map((sample) => sample[metric]);
  const b = samples[denominator].map((sample) => sample[metric]);
  const perRound = difference ? a.map((value, i) => value - b[i]) : roundRatios(a, b);
  return {
    name: `${numerator} ${difference ? "−" : "/"} ${denominator}`,
    metric,
    of: of ?? metric,
    difference,
    unit,
    target,
    goal,
    ...summary(perRound),
    perRound,
  };
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** `{ median, min, max }` of `values`. */
export function summary(values) {
  return { median: median(values), min: Math.min(...values), max: Math.max(...values) };
}

/** Per-round ratios `numerator[i] / denominator[i]` (same round, so the same machine state). */
export function roundRatios(numerator, denominator) {
  return numerator.map((value, i) => value / denominator[i]);
}

/** A plain-text table: `rows` are arrays of cells, the first row is the header. */
export function formatTable(rows) {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => String(row[column]).length)));
  return rows
    .map((row) =>
      row
        .map((cell, column) =>
          column === 0 ? String(cell).padEnd(widths[column]) : String(cell).padStart(widths[column]),
        )
        .join("  "),
    )
    .join("\n");
}

/** The commit measured, and whether the working tree had changes on top of it. */
export function gitState(cwd) {
  try {
    const commit = execFileSync("git", ["rev-parse", "HEAD"], { cwd, encoding: "utf8" }).trim();
    const status = execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], {
      cwd,
      encoding: "utf8",
    });
    return { commit, dirty: status.trim() !== "" };
  } catch {
    return { commit: null, dirty: null };
  }
}

/** Where and on what the benchmark ran. */
export function environment() {
  return {
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "unknown",
    // 1, 5 and 15 min load averages at the start: wall times on a busy machine spread widely.
    loadAverage: loadavg(),
  };
}

/** Writes `record` to `directory/<name>-<YYYY-MM-DD>[-N].json` (never overwrites); returns the path. */
export function writeRecord(directory, name, record) {
  mkdirSync(directory, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  let path = join(directory, `${name}-${date}.json`);
  for (let n = 2; existsSync(path); n += 1) path = join(directory, `${name}-${date}-${n}.json`);
  writeFileSync(path, `${JSON.stringify(record, null, 2)}\n`);
  return path;
}
