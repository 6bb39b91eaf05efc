import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Instance } from "../proto/gen/leasehold/registry/v1/registry.js";
import { echo } from "../services/echo.js";
import { startServiceInstance } from "../services/service-host.js";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { rpc, testWithSharedFixture } from "./helpers/registry-fixture.js";

const test = testWithSharedFixture();

async function instanceOf(
  client: Parameters<typeof rpc>[0],
  service: string,
  instanceId: string,
): Promise<Instance | undefined> {
  return (await rpc(client).getService({ service })).instances.find((i) => i.instanceId === instanceId);
}

test("serve --metadata registers the pairs; typing `w 5` + Enter changes the weight live, a bad one is one stderr line", async (t) => {
  const { client, registry } = t.context;
  const serve = spawnCli(t, [
    "serve",
    "echo",
    "--id=echo-w",
    // Not v2: the file's tests share one registry and run at once, and `call --filter version=v2`
    // below must find only its own v2 instance (a v2 here took 3 of its 40 calls in a CI run).
    "--metadata=version=v9",
    "--metadata=track=canary",
    "--listen=127.0.0.1:0",
    "--ttl=3",
    `--registry=${registry.address}`,
  ]);
  await serve.waitForLine(/serving echo/);
  const registered = await instanceOf(client, "echo", "echo-w");
  t.like(registered, { weight: 1, metadata: { version: "v9", track: "canary" } });
  serve.child.stdin?.write("w 5\n");
  await serve.waitForLine(/weight 5$/);
  const updated = await eventually(async () => {
    const instance = await instanceOf(client, "echo", "echo-w");
    return instance?.weight === 5 ? instance : undefined;
  });
  t.is(updated.registeredAt, registered?.registeredAt ?? "", "the same registration, updated in place");
  t.deepEqual(updated.metadata, { version: "v9", track: "canary" });
  serve.child.stdin?.write("w 99999\n");
  await eventually(() => serve.stderr.includes("w: weight must be an integer 0..10000"));
  t.is((await instanceOf(client, "echo", "echo-w"))?.weight, 5);
  serve.child.stdin?.write("q");
  t.is(await serve.exited, 0, serve.stderr);
});

test("register --weight-file applies the file's weight at once and again whenever it changes", async (t) => {
  const { client, registry } = t.context;
  const dir = mkdtempSync(join(tmpdir(), "leasehold-weight-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "weight");
  writeFileSync(file, "3\n");
  const sidecar = spawnCli(t, [
    "register",
    "--service=wfile",
    "--address=127.0.0.1:5999",
    "--id=wfile-1",
    `--weight-file=${file}`,
    "--ttl=3",
    `--registry=${registry.address}`,
  ]);
  await sidecar.waitForLine(/weight 3$/);
  t.is((await instanceOf(client, "wfile", "wfile-1"))?.weight, 3);
  writeFileSync(file, "8\n");
  await sidecar.waitForLine(/weight 8$/);
  t.is((await instanceOf(client, "wfile", "wfile-1"))?.weight, 8);
  writeFileSync(file, "lots\n");
  await eventually(() => sidecar.stderr.includes("want an integer 0..10000"));
  t.is((await instanceOf(client, "wfile", "wfile-1"))?.weight, 8);
  sidecar.child.kill("SIGTERM");
  t.is(await sidecar.exited, 0, sidecar.stderr);
});

test("call --filter version=v2 reaches only the v2 instance; --zone keeps calls in the caller's zone", async (t) => {
  const { registry } = t.context;
  const instances = await Promise.all(
    [
      { instanceId: "echo-v1", metadata: { version: "v1" }, zone: "zone-a" },
      { instanceId: "echo-v2", metadata: { version: "v2" }, zone: "zone-b" },
    ].map((options) =>
      startServiceInstance(echo, {
        registry: registry.address,
        listen: "127.0.0.1:0",
        drainMs: 0,
        ...options,
      }),
    ),
  );
  for (const instance of instances) t.teardown(async () => await instance.shutdown());
  const load = async (flags: readonly string[]): Promise<Record<string, number>> => {
    const run = spawnCli(t, [
      "call",
      "echo",
      "Echo",
      '{"message":"x"}',
      "--count=40",
      "--json",
      ...flags,
      `--registry=${registry.address}`,
    ]);
    t.is(await run.exited, 0, run.stderr);
    const summary = JSON.parse(run.stdout.join("\n")) as {
      errors: number;
      instances: { instance_id: string; calls: number }[];
    };
    t.is(summary.errors, 0);
    // Only instances that took calls, so the assertion shows the whole distribution.
    return Object.fromEntries(
      summary.instances.filter((i) => i.calls > 0).map((i) => [i.instance_id, i.calls]),
    );
  };
  t.deepEqual(await load(["--filter=version=v2"]), { "echo-v2": 40 });
  t.deepEqual(await load(["--zone=zone-a"]), { "echo-v1": 40 });
});
