/**
 * `npm run bench -- NAME... --quick` runs benchmarks of bench/ 5 interleaved rounds at small sizes
 * and prints their tables; with --out it saves the records with the commit measured. Only that they
 * run and the shape of what they print and save is asserted, never a timing.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import test from "ava";

const root = fileURLToPath(new URL("..", import.meta.url));

interface Summary {
  median: number;
  min: number;
  max: number;
  samples: number[];
}

interface BenchRecord {
  benchmark: string;
  commit: string | null;
  quick: boolean;
  rounds: number;
  columns: { key: string; label: string; unit: string }[];
  variants: ({ name: string } & Record<string, Summary | string>)[];
  ratios: { name: string; metric: string; perRound: number[]; median: number; min: number; max: number }[];
}

const MIN_ROUNDS = 5;

test("npm run bench -- --quick runs the CLI-start and registration benchmarks 5 rounds each, prints ratios and saves records", async (t) => {
  t.timeout(300_000);
  const out = await mkdtemp(join(tmpdir(), "leasehold-bench-"));
  t.teardown(async () => await rm(out, { recursive: true, force: true }));
  const { stdout } = await promisify(execFile)(
    "npm",
    ["run", "--silent", "bench", "--", "cli-start", "registration", "--quick", "--out", out],
    { cwd: root, timeout: 280_000 },
  );
  t.regex(stdout, /^cli-start: /m);
  t.regex(stdout, /^registration: /m);
  t.regex(stdout, /^variant\s+wall median ms\s+min\s+max\s+CPU median ms\s+min\s+max$/m);
  for (const variant of ["node -e 0", "node \\+ import @grpc/grpc-js", "leasehold --help"])
    t.regex(stdout, new RegExp(`^${variant}(\\s+[\\d.]+){6}$`, "m"));
  t.regex(stdout, /^leasehold --help \/ node \+ import @grpc\/grpc-js\s+wall\s+[\d.]+×/m);
  t.regex(stdout, /^leasehold --help \/ node \+ import @grpc\/grpc-js\s+CPU\s+[\d.]+×/m);
  t.regex(stdout, /^leasehold N=\d+ \/ etcd3 N=\d+\s+rate\s+[\d.]+×\s+[\d.]+×\s+[\d.]+×\s+≥ 0\.80×$/m);

  const files = (await readdir(out)).sort();
  t.is(files.length, 2);
  t.regex(files[0] ?? "", /^cli-start-\d{4}-\d{2}-\d{2}\.json$/);
  t.regex(files[1] ?? "", /^registration-\d{4}-\d{2}-\d{2}\.json$/);
  const records = await Promise.all(
    files.map(async (file) => JSON.parse(await readFile(join(out, file), "utf8")) as BenchRecord),
  );
  t.deepEqual(
    records.map((record) => record.benchmark),
    ["cli-start", "registration"],
  );
  for (const record of records) {
    t.true(record.quick);
    t.is(record.rounds, MIN_ROUNDS);
    t.regex(record.commit ?? "", /^[0-9a-f]{40}$/);
    t.true(record.ratios.length > 0);
    for (const ratio of record.ratios) {
      t.is(ratio.perRound.length, MIN_ROUNDS, ratio.name);
      t.true(ratio.min <= ratio.median && ratio.median <= ratio.max, ratio.name);
    }
    for (const variant of record.variants)
      for (const column of record.columns) {
        const summary = variant[column.key] as Summary;
        t.is(summary.samples.length, MIN_ROUNDS, `${variant.name} ${column.key}`);
      }
  }
  t.deepEqual(
    records[0]?.variants.map((variant) => variant.name),
    ["node -e 0", "node + import @grpc/grpc-js", "leasehold --help"],
  );
  t.deepEqual(
    records[1]?.variants.map((variant) => variant.name),
    ["leasehold N=200", "etcd3 N=200"],
  );
});

test("the bench runner refuses fewer than 5 rounds and unknown benchmarks with exit status 2", async (t) => {
  const run = promisify(execFile);
  for (const args of [
    ["--rounds", "3"],
    ["no-such-benchmark", "--quick"],
  ]) {
    const error = await t.throwsAsync<Error & { code: number; stderr: string }>(
      run(process.execPath, ["bench/run.mjs", ...args], { cwd: root }),
    );
    t.is(error?.code, 2);
    t.regex(error?.stderr ?? "", /^bench: /);
  }
});
