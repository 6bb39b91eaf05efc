/**
 * `npm run chaos`: runs the chaos scenarios of issue 6 against real processes (its own etcd,
 * registries, instances and callers per scenario), prints one table, writes the figures to
 * chaos/results/<time>-<commit>.json, and exits 1 on any miss.
 *
 *   npm run chaos -- [--quick] [--only a,b] [--soak-minutes N] [--policy round_robin] [--no-write] [--at REF]
 *
 * `--at REF` runs this harness against the product code of a commit (`git archive REF` into a temp
 * dir, this chaos/ folder and node_modules added), not against a working tree others are editing.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { isPolicyName, type PolicyName } from "../client/balancing/policies.js";
import { REPO_ROOT } from "./lib/child.js";
import { formatTable, type Row } from "./lib/result.js";
import { closeActiveScopes, POLICIES, runScenario } from "./lib/runner.js";
import { SCENARIOS } from "./scenarios/index.js";

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    "soak-minutes": { type: "string", default: "10" },
    policy: { type: "string", multiple: true },
    "no-write": { type: "boolean", default: false },
    list: { type: "boolean", default: false },
    at: { type: "string" },
  },
});

if (values.at !== undefined) process.exit(runAt(values.at));

if (values.list) {
  for (const s of SCENARIOS) process.stdout.write(`${s.name}${s.fast ? " (fast)" : ""}: ${s.summary}\n`);
  process.exit(0);
}
const soakMinutes = Number(values["soak-minutes"]);
if (!(soakMinutes > 0)) {
  process.stderr.write(`chaos: --soak-minutes must be > 0, got ${values["soak-minutes"]}\n`);
  process.exit(2);
}
const policies: PolicyName[] = [];
for (const policy of values.policy ?? POLICIES) {
  if (!isPolicyName(policy)) {
    process.stderr.write(`chaos: unknown policy ${policy}\n`);
    process.exit(2);
  }
  policies.push(policy);
}
const only = values.only?.split(",").map((name) => name.trim());
const unknown = only?.filter((name) => !SCENARIOS.some((s) => s.name === name)) ?? [];
if (unknown.length > 0) {
  process.stderr.write(`chaos: unknown scenario(s) ${unknown.join(", ")}; --list shows them\n`);
  process.exit(2);
}
const selected = SCENARIOS.filter((s) =>
  only === undefined ? !values.quick || s.fast : only.includes(s.name),
);

// Interrupted: kill what the running scenario started (etcd, registries, instances, watchers), then exit.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    process.stderr.write(`chaos: ${signal}; stopping every process of the running scenario\n`);
    void closeActiveScopes().finally(() => process.exit(130));
  });
}

const startedAt = new Date();
const rows: Row[] = [];
for (const scenario of selected) {
  process.stderr.write(`chaos: ${scenario.name} — ${scenario.summary}\n`);
  const scenarioRows = await runScenario(scenario, {
    soakMinutes,
    policies,
    log: (line) => process.stderr.write(`${line}\n`),
  });
  for (const r of scenarioRows)
    process.stderr.write(`  ${r.verdict.toUpperCase()} ${r.scenario} ${r.policy}: ${r.note}\n`);
  rows.push(...scenarioRows);
}

process.stdout.write(`\n${formatTable(rows)}\n`);
const misses = rows.filter((r) => r.verdict !== "pass");
process.stdout.write(`\n${rows.length - misses.length} of ${rows.length} rows pass; ${misses.length} miss\n`);

if (!values["no-write"]) {
  const commit = process.env["CHAOS_COMMIT"] ?? gitCommit();
  const record = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    commit,
    isDirty: process.env["CHAOS_COMMIT"] === undefined ? gitIsDirty() : false,
    node: process.version,
    cpus: cpus().length,
    argv: process.argv.slice(2),
    rows,
  };
  const dir = process.env["CHAOS_RESULTS_DIR"] ?? join(REPO_ROOT, "chaos", "results");
  mkdirSync(dir, { recursive: true });
  const file = join(
    dir,
    `${startedAt.toISOString().replaceAll(":", "").slice(0, 17)}-${commit.slice(0, 8)}.json`,
  );
  writeFileSync(file, await formatJson(record));
  process.stdout.write(`figures: ${file}\n`);
}
process.exit(misses.length > 0 ? 1 : 0);

/** Re-runs this command (minus `--at`) in a temp copy of commit `ref` with this chaos/ folder; its exit status. */
function runAt(ref: string): number {
  const sha = execFileSync("git", ["rev-parse", "--verify", `${ref}^{commit}`], {
    cwd: REPO_ROOT,
    encoding: "utf8",
  }).trim();
  const dir = mkdtempSync(join(tmpdir(), "leasehold-chaos-"));
  try {
    execFileSync("sh", ["-c", `git archive ${sha} | tar -x -C '${dir}'`], { cwd: REPO_ROOT });
    rmSync(join(dir, "chaos"), { recursive: true, force: true });
    cpSync(join(REPO_ROOT, "chaos"), join(dir, "chaos"), {
      recursive: true,
      filter: (source) => !source.includes(`${join("chaos", "results")}`),
    });
    symlinkSync(join(REPO_ROOT, "node_modules"), join(dir, "node_modules"));
    const args: string[] = [];
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i++) {
      if (argv[i] === "--at") i++;
      else if (!(argv[i] ?? "").startsWith("--at=")) args.push(argv[i] ?? "");
    }
    process.stderr.write(`chaos: product code at ${sha.slice(0, 12)} (${dir})\n`);
    const result = spawnSync(process.execPath, ["--import", "tsx", "chaos/run.ts", ...args], {
      cwd: dir,
      stdio: "inherit",
      env: { ...process.env, CHAOS_RESULTS_DIR: join(REPO_ROOT, "chaos", "results"), CHAOS_COMMIT: sha },
    });
    return result.status ?? 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function gitCommit(): string {
  try {
    return execFileSync("git", ["rev-parse", "HEAD"], { cwd: REPO_ROOT, encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}

function gitIsDirty(): boolean {
  try {
    return (
      execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], {
        cwd: REPO_ROOT,
        encoding: "utf8",
      }).trim() !== ""
    );
  } catch {
    return true;
  }
}

/** JSON as prettier prints it (so `prettier --check .` passes on a kept record). */
async function formatJson(value: unknown): Promise<string> {
  const json = JSON.stringify(value, null, 2);
  try {
    const prettier = await import("prettier");
    return await prettier.format(json, { parser: "json", printWidth: 110 });
  } catch {
    return `${json}\n`;
  }
}
