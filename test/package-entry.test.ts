/**
 * The compiled entry points (dist/, built by `npm run build` before the tests) as a consumer's
 * plain `node` loads them: the client entry never loads etcd3, the client and registry entries
 * can be `require()`d (no top-level await), and the bin says how to build when dist/ is missing.
 */
import { execFile } from "node:child_process";
import { copyFile, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import test from "ava";

const root = fileURLToPath(new URL("..", import.meta.url));
const run = promisify(execFile);

/** Imports `entry` in a fresh `node` and reports which packages under node_modules it loaded. */
async function packagesLoadedBy(entry: string): Promise<string[]> {
  // ESM imports of CommonJS packages (etcd3 is one) go through the CommonJS loader, so they are
  // in require.cache; ESM-only packages are not, which is fine for this question.
  const script = String.raw`
    import { createRequire } from "node:module";
    await import(${JSON.stringify(join(root, entry))});
    const loaded = new Set();
    for (const file of Object.keys(createRequire(import.meta.url).cache)) {
      const parts = file.split(/[\/]node_modules[\/]/);
      if (parts.length < 2) continue;
      const [scope, name] = parts.at(-1).split(/[\/]/);
      loaded.add(scope.startsWith("@") ? scope + "/" + name : scope);
    }
    console.log(JSON.stringify([...loaded].sort()));`;
  const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { cwd: root });
  return JSON.parse(stdout) as string[];
}

test("importing the client entry (dist/client/index.js) does not load etcd3", async (t) => {
  const loaded = await packagesLoadedBy("dist/client/index.js");
  t.true(loaded.includes("@grpc/grpc-js"), `the probe sees CommonJS packages: ${loaded.join(", ")}`);
  t.false(loaded.includes("etcd3"), `loaded: ${loaded.join(", ")}`);
});

test("the same probe sees etcd3 when the registry entry (dist/registry/index.js) is imported", async (t) => {
  t.true((await packagesLoadedBy("dist/registry/index.js")).includes("etcd3"));
});

test("CommonJS can require() the client and registry entries (no top-level await in their graphs)", async (t) => {
  const script = `
    const client = require(${JSON.stringify(join(root, "dist/client/index.js"))});
    const registry = require(${JSON.stringify(join(root, "dist/registry/index.js"))});
    console.log(typeof client.registerLeasehold, typeof client.Registrar, typeof registry.startRegistry);`;
  // Node >= 20.19 (and 22.12) require() ESM by default; Node 20.20 prints no warning for it.
  const { stdout } = await run(process.execPath, ["-e", script], { cwd: root });
  t.is(stdout.trim(), "function function function");
});

test("the leasehold bin without dist/ prints one line saying to build, and exits 2", async (t) => {
  const directory = await mkdtemp(join(tmpdir(), "leasehold-bin-"));
  t.teardown(async () => await rm(directory, { recursive: true, force: true }));
  await copyFile(join(root, "leasehold.mjs"), join(directory, "leasehold.mjs"));
  const error = await t.throwsAsync<Error & { code: number; stdout: string; stderr: string }>(
    run(process.execPath, [join(directory, "leasehold.mjs"), "--help"]),
  );
  t.is(error?.code, 2);
  t.is(error?.stdout, "");
  t.is(error?.stderr, "leasehold: dist/cli/main.js is missing: run npm run build\n");
});

test("the leasehold bin runs the compiled CLI", async (t) => {
  const { stdout } = await run(process.execPath, [join(root, "leasehold.mjs"), "--help"]);
  t.regex(stdout, /^Usage: leasehold /);
});

test("every package the compiled code imports is a dependency or peer dependency", async (t) => {
  const manifest = JSON.parse(await readFile(join(root, "package.json"), "utf8")) as {
    dependencies?: Record<string, string>;
    peerDependencies?: Record<string, string>;
  };
  const declared = new Set([
    ...Object.keys(manifest.dependencies ?? {}),
    ...Object.keys(manifest.peerDependencies ?? {}),
  ]);
  const importedBy = new Map<string, string>();
  const files = await readdir(join(root, "dist"), { recursive: true });
  for (const file of files.filter((name) => name.endsWith(".js"))) {
    const text = await readFile(join(root, "dist", file), "utf8");
    for (const [, specifier] of text.matchAll(/(?:from |import\()"([^".][^"]*)"/g)) {
      if (specifier === undefined || specifier.startsWith("node:")) continue;
      const [first = "", second = ""] = specifier.split("/");
      importedBy.set(first.startsWith("@") ? `${first}/${second}` : first, file);
    }
  }
  t.true(importedBy.has("etcd3"), `the scan finds imports: ${[...importedBy.keys()].join(", ")}`);
  t.deepEqual(
    [...importedBy].filter(([name]) => !declared.has(name)).map(([name, file]) => `${name} (dist/${file})`),
    [],
  );
});
