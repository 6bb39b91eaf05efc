#!/usr/bin/env node
// The `leasehold` CLI: runs the compiled JavaScript in dist/ (`npm run build`; `npm install` in a
// clone and `npm pack` build it through `prepare`).
import { existsSync } from "node:fs";

const main = new URL("./dist/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  process.stderr.write("leasehold: dist/cli/main.js is missing: run npm run build\n");
  process.exit(2);
}
await import(main.href);
