import { credentials } from "@grpc/grpc-js";
import test from "ava";
import { freePort, startLocalEtcd } from "../cli/local-etcd.js";
import { RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";
import { startRegistry, type RunningRegistry } from "../registry/index.js";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { registration, rpc, startFixtureFor } from "./helpers/registry-fixture.js";

test("register and watch outlive their registry: down for longer than the TTL, back on the same port", async (t) => {
  const etcd = await startLocalEtcd();
  t.teardown(async () => await etcd.stop());
  const address = `127.0.0.1:${await freePort()}`;
  const start = async (): Promise<RunningRegistry> =>
    await startRegistry({ listen: address, etcdEndpoints: [etcd.endpoint], progressIntervalMs: 300 });
  let registry = await start();
  t.teardown(async () => await registry.close());
  const client = new RegistryServiceClient(address, credentials.createInsecure());
  t.teardown(() => client.close());
  const listed = async (service: string): Promise<string[]> =>
    (await rpc(client).getService({ service })).instances.map((instance) => instance.instanceId);

  const sidecar = spawnCli(t, [
    "register",
    "--service=outlived",
    "--address=127.0.0.1:5000",
    "--id=o-1",
    "--ttl=2",
    `--registry=${address}`,
  ]);
  await sidecar.waitForLine(/leased .* in/);
  const watch = spawnCli(t, ["watch", "outlived", `--registry=${address}`, "--json"]);
  await eventually(() => watch.stdout.some((line) => line.includes('"snapshot"')), {
    what: "watch's snapshot",
  });

  await registry.close();
  // Longer than the TTL: the lease expires in etcd, so the sidecar must register again.
  await eventually(
    async () => {
      const gone = await etcd3Keys(etcd.endpoint);
      return gone === 0;
    },
    { timeoutMs: 10_000, what: "the lease expired while the registry was down" },
  );
  t.is(sidecar.child.exitCode, null, "the sidecar is still running");
  t.is(watch.child.exitCode, null, "watch is still running");
  await eventually(() => watch.stdout.some((line) => line.includes('"type":"stale","stale":true')), {
    what: "watch said it is stale",
  });

  registry = await start();
  await eventually(async () => (await listed("outlived")).includes("o-1"), {
    timeoutMs: 15_000,
    what: "o-1 registered again",
  });
  await rpc(client).register(registration({ service: "outlived", instanceId: "o-2", ttlSeconds: "30" }));
  await eventually(() => watch.stdout.some((line) => line.includes('"o-2"')), {
    timeoutMs: 15_000,
    what: "watch saw o-2 after the restart",
  });

  // Not always before o-2's line: a registry that just started may first report its own view of
  // etcd as not current (Progress.stale), and the stdout chunk may split the two lines.
  await eventually(() => watch.stdout.some((line) => line.includes('"type":"stale","stale":false')), {
    what: "watch said it is fresh again once the registry answered",
  });
  sidecar.child.kill("SIGTERM");
  watch.child.kill("SIGTERM");
  t.is(await sidecar.exited, 0, sidecar.stderr);
  t.is(await watch.exited, 0, watch.stderr);
});

/** How many keys etcd holds under /leasehold/ (read with etcd's own v3 JSON gateway, no client library). */
async function etcd3Keys(endpoint: string): Promise<number> {
  const key = Buffer.from("/leasehold/").toString("base64");
  const rangeEnd = Buffer.from("/leasehold0").toString("base64");
  const response = await fetch(`${endpoint}/v3/kv/range`, {
    method: "POST",
    body: JSON.stringify({ key, range_end: rangeEnd, count_only: true }),
  });
  const body = (await response.json()) as { count?: string };
  return Number(body.count ?? 0);
}

test("watch says when callers enter panic mode: 3 of 4 serving instances leave at once", async (t) => {
  const fixture = await startFixtureFor(t);
  const address = fixture.registry.address;
  const leases: { leaseId: string; registrationToken: string }[] = [];
  for (const id of ["p-1", "p-2", "p-3", "p-4"]) {
    const granted = await rpc(fixture.client).register(
      registration({ service: "panicky", instanceId: id, address: `127.0.0.1:${9100 + leases.length}` }),
    );
    leases.push(granted);
  }
  const watch = spawnCli(t, ["watch", "panicky", `--registry=${address}`, "--json"]);
  await eventually(() => watch.stdout.filter((line) => line.includes('"snapshot"')).length === 4, {
    what: "watch's snapshot of 4",
    timeoutMs: 30_000, // a CLI process starting on a loaded box (10 s ran out at load 20)
  });
  t.false(watch.stdout.some((line) => line.includes('"panic"')));
  await Promise.all(
    leases.slice(0, 3).map(({ leaseId, registrationToken }, i) =>
      rpc(fixture.client).deregister({
        service: "panicky",
        instanceId: `p-${i + 1}`,
        leaseId,
        registrationToken,
      }),
    ),
  );
  const panic = await eventually(() => watch.stdout.find((line) => line.includes('"type":"panic"')), {
    what: "a panic line",
  });
  t.like(JSON.parse(panic) as object, { type: "panic", service: "panicky" });
  watch.child.kill("SIGTERM");
  t.is(await watch.exited, 0, watch.stderr);
});
