/**
 * `npm run bench -- --quick` runs every benchmark of bench/ once and prints its table; with --out
 * it saves the record with the commit measured. Only that it runs is asserted, never a timing.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import test from "ava";

const root = fileURLToPath(new URL("..", import.meta.url));

interface CliStartRecord {
  benchmark: string;
  commit: string | null;
  quick: boolean;
  rounds: number;
  variants: { name: string; command: string; wallMs: { samples: number[] }; cpuMs: { samples: number[] } }[];
  ratios: { name: string; metric: string; perRound: number[] }[];
}

test("npm run bench -- --quick runs the CLI-start benchmark once and prints its table and ratios", async (t) => {
  const out = await mkdtemp(join(tmpdir(), "leasehold-bench-"));
  t.teardown(async () => await rm(out, { recursive: true, force: true }));
  const { stdout } = await promisify(execFile)(
    "npm",
    ["run", "--silent", "bench", "--", "--quick", "--out", out],
    { cwd: root, timeout: 60_000 },
  );
  t.regex(stdout, /^cli-start: /m);
  t.regex(stdout, /^variant\s+wall median ms\s+min\s+max\s+CPU median ms\s+min\s+max$/m);
  for (const variant of ["node -e 0", "node \\+ import @grpc/grpc-js", "leasehold --help"])
    t.regex(stdout, new RegExp(`^${variant}(\\s+[\\d.]+){6}$`, "m"));
  t.regex(stdout, /^leasehold --help \/ node \+ import @grpc\/grpc-js\s+wall\s+[\d.]+×/m);
  t.regex(stdout, /^leasehold --help \/ node \+ import @grpc\/grpc-js\s+CPU\s+[\d.]+×/m);

  const files = await readdir(out);
  t.is(files.length, 1);
  t.regex(files[0] ?? "", /^cli-start-\d{4}-\d{2}-\d{2}\.json$/);
  const record = JSON.parse(await readFile(join(out, files[0] ?? ""), "utf8")) as CliStartRecord;
  t.is(record.benchmark, "cli-start");
  t.true(record.quick);
  t.is(record.rounds, 1);
  t.regex(record.commit ?? "", /^[0-9a-f]{40}$/);
  t.deepEqual(
    record.variants.map((variant) => [
      variant.name,
      variant.wallMs.samples.length,
      variant.cpuMs.samples.length,
    ]),
    [
      ["node -e 0", 1, 1],
      ["node + import @grpc/grpc-js", 1, 1],
      ["leasehold --help", 1, 1],
    ],
  );
  t.is(record.ratios[0]?.perRound.length, 1);
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
