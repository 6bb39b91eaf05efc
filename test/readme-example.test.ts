import { execFile } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import test from "ava";
import { startFixtureFor } from "./helpers/registry-fixture.js";

const root = fileURLToPath(new URL("..", import.meta.url));

test("the README's library example runs against a real registry", async (t) => {
  const readme = await readFile(`${root}README.md`, "utf8");
  const code = /<!-- example:start -->\s*```ts\n([\s\S]*?)```\s*<!-- example:end -->/.exec(readme)?.[1];
  t.truthy(code, "README has the example block");
  // Run it from a git-ignored folder inside the package, so `leasehold` resolves to this package.
  await mkdir(`${root}.tmp`, { recursive: true });
  const file = `${root}.tmp/readme-example.ts`;
  await writeFile(file, (code ?? "").replaceAll('"./proto/gen/', '"../proto/gen/'));
  const { registry } = await startFixtureFor(t);
  const { stdout } = await promisify(execFile)(process.execPath, ["--import=tsx", file], {
    env: { ...process.env, LEASEHOLD_REGISTRY: registry.address },
    timeout: 30_000,
  });
  t.is(stdout.trim(), "echo-a answered hello");
});
