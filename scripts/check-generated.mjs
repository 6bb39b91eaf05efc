#!/usr/bin/env node
// Regenerates proto/gen (buf + ts-proto) and fails when that changes anything: the committed
// output must match the .proto sources. `git status --porcelain`, since `git diff` misses new files.
import { execFileSync } from "node:child_process";

execFileSync("npm", ["run", "--silent", "generate"], { stdio: "inherit" });
const changes = execFileSync("git", ["status", "--porcelain", "--", "proto/gen"], { encoding: "utf8" });
if (changes.trim() !== "") {
  console.error(`proto/gen is out of date with proto/*.proto; run npm run generate and commit:\n${changes}`);
  process.exit(1);
}
