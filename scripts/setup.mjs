#!/usr/bin/env node
// Set-up for a fresh machine with Node and npm: node modules, then the system tools a run needs.
//   node scripts/setup.mjs            etcd (for the demo)
//   node scripts/setup.mjs --for=test etcd, prometheus/promtool, docker-compose and chromium (for the tests)
//   node scripts/setup.mjs --for=chaos etcd and jemalloc (the chaos suite runs registries under it)
// Tools come from Debian's packages (etcd-server, prometheus, docker-compose, chromium) when apt-get is there
// and we are root; otherwise it says how to get them and exits 1.
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const forTests = process.argv.includes("--for=test");
const forChaos = process.argv.includes("--for=chaos");

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: "inherit", cwd: root, ...options });
  return result.status === 0;
}

function onPath(command) {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

// 1. Node modules, when missing or older than the lock file.
const installed = join(root, "node_modules", ".package-lock.json");
const lock = join(root, "package-lock.json");
if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(lock).mtimeMs) {
  // Not `npm ci`: see .ci/run (the lock cannot list buf's packages for other platforms here).
  console.error("setup: installing node modules (npm install)");
  if (!run("npm", ["install", "--no-audit", "--no-fund"])) process.exit(1);
}

// 2. System tools from Debian's packages.
const tools = [{ command: process.env.LEASEHOLD_ETCD_BIN ?? "etcd", pkg: "etcd-server" }];
if (forTests)
  tools.push(
    { command: "promtool", pkg: "prometheus" },
    { command: "docker-compose", pkg: "docker-compose" },
    // The web console's test drives Debian's Chromium with playwright-core (no browser download).
    { command: process.env.LEASEHOLD_CHROMIUM ?? "chromium", pkg: "chromium" },
  );
// glibc keeps the native memory a watch burst freed; chaos/lib/cluster.ts preloads jemalloc when present.
if (forChaos) tools.push({ file: "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", pkg: "libjemalloc2" });
const isThere = (tool) => (tool.file === undefined ? onPath(tool.command) : existsSync(tool.file));
const missing = tools.filter((tool) => !isThere(tool));
if (missing.length === 0) process.exit(0);

const packages = missing.map((tool) => tool.pkg);
const isRoot = process.getuid?.() === 0;
if (onPath("apt-get") && isRoot) {
  console.error(`setup: installing ${packages.join(", ")} from Debian's packages`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const ok =
    run("apt-get", ["update", "-qq"], { env }) &&
    run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...packages], { env });
  if (ok && missing.every(isThere)) process.exit(0);
}
console.error(
  `setup: missing ${missing.map((tool) => tool.command ?? tool.file).join(", ")}. Install Debian's ${packages.join(", ")} ` +
    `(sudo apt-get install ${packages.join(" ")}), or put the binaries on PATH` +
    ` (etcd releases: github.com/etcd-io/etcd/releases; or set LEASEHOLD_ETCD_BIN).`,
);
process.exit(1);
