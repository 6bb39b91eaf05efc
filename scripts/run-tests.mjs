#!/usr/bin/env node
// Runs ava with TAP output, passes it through, and ends with the plain line CI reads:
// "N passed, N failed" (todo tests are not failures). Exits with ava's own status.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

const ava = spawn(
  process.execPath,
  ["node_modules/ava/entrypoints/cli.mjs", "--tap", ...process.argv.slice(2)],
  {
    stdio: ["ignore", "pipe", "inherit"],
  },
);
let passed = 0;
let failed = 0;
let skipped = 0;
for await (const line of createInterface({ input: ava.stdout })) {
  process.stdout.write(`${line}\n`);
  if (/^ok \d+/.test(line)) {
    if (/# (SKIP|TODO)/i.test(line)) skipped += 1;
    else passed += 1;
  } else if (/^not ok \d+/.test(line)) {
    if (/# TODO/i.test(line)) skipped += 1;
    else failed += 1;
  }
}
const [code] = await new Promise((resolve) => ava.on("close", (...args) => resolve(args)));
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`);
process.exit(code ?? 1);
