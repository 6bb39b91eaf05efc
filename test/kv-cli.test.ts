import test from "ava";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { servingKv } from "./helpers/kv.js";
import { startFixtureFor } from "./helpers/registry-fixture.js";

test("leasehold kv: a put sent to a backup is redirected to the primary; after SIGKILL of the primary the value reads back from the new one", async (t) => {
  const fixture = await startFixtureFor(t);
  const registry = fixture.registry.address;
  const serving = async (count: number): Promise<boolean> =>
    (await servingKv(fixture.client, count)) !== undefined;
  const serve = async (id: string) => {
    const cli = spawnCli(t, [
      "serve",
      "kv",
      "--registry",
      registry,
      "--id",
      id,
      "--ttl",
      "3",
      "--listen",
      "127.0.0.1:0",
    ]);
    const line = await cli.waitForLine(/serving kv on /);
    return { cli, address: /serving kv on (\S+)/.exec(line)?.[1] ?? "" };
  };
  const primary = await serve("kv-1");
  await eventually(() => serving(1), { timeoutMs: 20_000, what: "kv-1 SERVING" });
  const backup = await serve("kv-2");
  await eventually(() => serving(2), { timeoutMs: 20_000, what: "kv-2 SERVING" });

  const kv = async (...args: string[]) => {
    const cli = spawnCli(t, ["kv", "--registry", registry, ...args]);
    const code = await cli.exited;
    return { code, stdout: cli.stdout.join("\n").trim(), stderr: cli.stderr.trim() };
  };
  const put = await kv("--instance", backup.address, "put", "greeting", "hello");
  t.is(put.code, 0, put.stderr);
  t.regex(put.stderr, new RegExp(`redirected to the primary at ${primary.address}`));
  t.regex(put.stdout, /^OK sequence 1 \(primary kv-1\)$/);
  t.is((await kv("incr", "visits", "5")).stdout, "5 (sequence 2, primary kv-1)");
  t.is((await kv("--instance", backup.address, "get", "--stale", "greeting")).stdout, "hello");

  primary.cli.child.kill("SIGKILL");
  const after = await eventually(
    async () => {
      const read = await kv("--json", "get", "greeting");
      return read.code === 0 ? (JSON.parse(read.stdout) as { value: string; instanceId: string }) : undefined;
    },
    { timeoutMs: 30_000, what: "a linearizable read after the failover" },
  );
  t.deepEqual(after, { ...after, value: "hello", instanceId: "kv-2" });
  t.is((await kv("incr", "visits")).stdout, "6 (sequence 3, primary kv-2)");

  const missing = await kv("get", "nothing-here");
  t.is(missing.code, 1);
  t.regex(missing.stderr, /key "nothing-here" not found/);
  const bad = await kv("incr", "visits", "lots");
  t.is(bad.code, 2);
  t.is(bad.stderr.split("\n").length, 1);
});
