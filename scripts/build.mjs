#!/usr/bin/env node
// `npm run build` (and `prepare`, so `npm install` in a clone and `npm pack` build too):
//   1. tsc -p tsconfig.build.json: ESM JavaScript, .d.ts and source maps in dist/, mirroring the
//      source tree (dist/client, dist/registry, dist/services, dist/cli, dist/proto/gen);
//   2. copies proto/**/*.proto to dist/proto/ and the web console's page (registry/console/ui/) to
//      dist/registry/console/ui/, so code that loads them with `new URL(..., import.meta.url)` finds
//      them from dist/ exactly as from the sources;
//   3. removes outputs whose source is gone (no `rm -rf dist`: tests in this working tree may be
//      running the compiled CLI while it builds).
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const compiled = spawnSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], {
  stdio: "inherit",
});
if (compiled.status !== 0) {
  console.error("\nbuild: tsc failed");
  process.exit(compiled.status ?? 1);
}

/** Every file under `directory`, as paths relative to it. */
function filesUnder(directory) {
  if (!existsSync(directory)) return [];
  return readdirSync(directory, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(directory, join(entry.parentPath, entry.name)));
}

const protos = filesUnder(join(root, "proto")).filter((file) => file.endsWith(".proto"));
for (const file of protos) {
  mkdirSync(dirname(join(dist, "proto", file)), { recursive: true });
  copyFileSync(join(root, "proto", file), join(dist, "proto", file));
}
// The web console's page (plain HTML, CSS and a browser module), served from next to its module.
const UI = "registry/console/ui";
const uiFiles = filesUnder(join(root, UI)).map((file) => join(UI, file));
for (const file of uiFiles) {
  mkdirSync(dirname(join(dist, file)), { recursive: true });
  copyFileSync(join(root, file), join(dist, file));
}
const isCopied = (file) => file.endsWith(".proto") || file.startsWith(`${UI}/`);

// dist/x/y.js, .js.map (with the TS source inlined) and .d.ts come from x/y.ts; dist/proto/**/*.proto
// from proto/, dist/registry/console/ui/* from registry/console/ui/.
let pruned = 0;
for (const file of filesUnder(dist)) {
  const source = isCopied(file) ? file : file.replace(/\.(js|js\.map|d\.ts)$/, ".ts");
  const isOutput = isCopied(file) || source !== file;
  if (!isOutput || source.endsWith(".test.ts") || !existsSync(join(root, source))) {
    rmSync(join(dist, file));
    pruned += 1;
  }
}
console.error(
  `build: dist/ has ${filesUnder(dist).length} files (${protos.length} .proto, ${uiFiles.length} console files copied` +
    `${pruned > 0 ? `, ${pruned} stale removed` : ""})`,
);
