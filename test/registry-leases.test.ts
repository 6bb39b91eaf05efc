import { status } from "@grpc/grpc-js";
import { createHash } from "node:crypto";
import { InstanceStatus } from "../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./helpers/eventually.js";
import { KeepAliveSession } from "./helpers/keep-alive-session.js";
import {
  WatchRecorder,
  failure,
  registration,
  testWithSharedFixture,
  rpc,
} from "./helpers/registry-fixture.js";

const test = testWithSharedFixture();

const key = (service: string, instanceId: string) => `/leasehold/v1/services/${service}/${instanceId}`;

test("Register stores the instance JSON under its key and returns the lease id as an exact decimal string", async (t) => {
  const { client, etcd3 } = t.context;
  const response = await rpc(client).register(
    registration({
      service: "json",
      instanceId: "a-1",
      metadata: { v: "1" },
      metricsAddress: "127.0.0.1:9100",
      weight: undefined,
    }),
  );
  t.regex(response.leaseId, /^\d+$/);
  t.is(BigInt(response.leaseId).toString(), response.leaseId, "decimal string, no precision lost");
  t.log(`lease id ${response.leaseId} (2^53 = ${2 ** 53})`);
  t.is(response.ttlSeconds, "3");
  t.is(response.instance?.weight, 1, "weight defaults to 1");
  t.is(response.instance?.revision, response.revision);
  const stored = JSON.parse((await etcd3.get(key("json", "a-1")).string()) ?? "null") as Record<
    string,
    unknown
  >;
  t.deepEqual(Object.keys(stored).sort(), [
    "address",
    "instance_id",
    "metadata",
    "metrics_address",
    "registered_at",
    "service",
    "status",
    "token_hash",
    "ttl_seconds",
    "weight",
    "zone",
  ]);
  t.is(stored.token_hash, createHash("sha256").update(response.registrationToken).digest("hex"));
  t.like(stored, { service: "json", instance_id: "a-1", status: "SERVING", weight: 1, metadata: { v: "1" } });
  const kv = (await etcd3.get(key("json", "a-1")).exec()).kvs[0];
  t.is(kv?.lease, response.leaseId);
});

test("keepalives keep an instance past its TTL; once they stop it is gone within TTL + 1 s", async (t) => {
  const { client, etcd3 } = t.context;
  const registered = await rpc(client).register(
    registration({ service: "ttl", instanceId: "i1", ttlSeconds: "2" }),
  );
  t.is(registered.ttlSeconds, "2");
  const session = new KeepAliveSession(client);
  t.teardown(() => session.cancel());
  const start = Date.now();
  let lastRenewalAt = Date.now();
  while (Date.now() - start < 4500) {
    const reply = await session.renew(registered);
    lastRenewalAt = Date.now();
    t.is(reply.leaseId, registered.leaseId);
    t.true(Number(reply.ttlSeconds) >= 1);
    await eventually(() => Date.now() - lastRenewalAt >= 600, { intervalMs: 50 });
  }
  t.true(await etcd3.get(key("ttl", "i1")).exists(), "alive after more than 2 x TTL thanks to keepalives");
  session.end();
  await eventually(async () => !(await etcd3.get(key("ttl", "i1")).exists()), {
    what: "expiry",
    timeoutMs: 6000,
    intervalMs: 50,
  });
  const goneAfterMs = Date.now() - lastRenewalAt;
  t.log(`gone ${goneAfterMs} ms after the last keepalive`);
  t.true(goneAfterMs <= 3000, `gone after ${goneAfterMs} ms, expected <= TTL + 1 s`);
});

test("Deregister removes the key at once and watchers see the removal delta", async (t) => {
  const { client, etcd3 } = t.context;
  const registered = await rpc(client).register(
    registration({ service: "dereg", instanceId: "i1", ttlSeconds: "30" }),
  );
  const watch = new WatchRecorder(client, { service: "dereg" });
  t.teardown(() => watch.cancel());
  await watch.until((w) => w.snapshots()[0]?.instances.length === 1, "snapshot with the instance");
  const response = await rpc(client).deregister({
    service: "dereg",
    instanceId: "i1",
    leaseId: registered.leaseId,
    registrationToken: registered.registrationToken,
  });
  t.false(await etcd3.get(key("dereg", "i1")).exists());
  const removal = await watch.until(
    (w) => w.deltas().find((delta) => delta.removed.some((removed) => removed.instanceId === "i1")),
    "removal delta",
  );
  t.is(removal.revision, response.revision);
  const leases = await etcd3.leaseClient.leaseLeases();
  t.false(
    leases.leases.some((lease) => lease.ID === registered.leaseId),
    "the lease was revoked",
  );
});

test("Register answers ALREADY_EXISTS while another live lease holds the instance", async (t) => {
  const { client } = t.context;
  await rpc(client).register(registration({ service: "dup", instanceId: "i1", ttlSeconds: "30" }));
  const error = await failure(
    rpc(client).register(registration({ service: "dup", instanceId: "i1", address: "127.0.0.1:9001" })),
  );
  t.is(error.code, status.ALREADY_EXISTS);
  t.regex(error.details, /dup\/i1/);
});

test("KeepAlive on a revoked lease ends the stream with NOT_FOUND", async (t) => {
  const { client } = t.context;
  const registered = await rpc(client).register(registration({ service: "revoked", instanceId: "i1" }));
  await rpc(client).deregister({
    service: "revoked",
    instanceId: "i1",
    leaseId: registered.leaseId,
    registrationToken: registered.registrationToken,
  });
  const session = new KeepAliveSession(client);
  const error = await failure(session.renew(registered));
  t.is(error.code, status.NOT_FOUND);
  t.regex(error.details, /register again/);
});

test("UpdateInstance and Deregister are fenced by the holding lease: PERMISSION_DENIED, then NOT_FOUND after expiry", async (t) => {
  const { client, etcd3 } = t.context;
  const holder = await rpc(client).register(
    registration({ service: "fence", instanceId: "a", ttlSeconds: "2" }),
  );
  const other = await rpc(client).register(
    registration({ service: "fence", instanceId: "b", ttlSeconds: "30" }),
  );
  const before = (await etcd3.get(key("fence", "a")).exec()).kvs[0];

  const updated = await rpc(client).updateInstance({
    service: "fence",
    instanceId: "a",
    leaseId: holder.leaseId,
    registrationToken: holder.registrationToken,
    weight: 7,
    status: InstanceStatus.INSTANCE_STATUS_DRAINING,
    zone: undefined,
    metadata: { entries: { k: "v" } },
  });
  t.like(updated.instance, {
    weight: 7,
    status: InstanceStatus.INSTANCE_STATUS_DRAINING,
    zone: "z1",
    metadata: { k: "v" },
  });
  t.like(JSON.parse((await etcd3.get(key("fence", "a")).string()) ?? "{}"), {
    weight: 7,
    status: "DRAINING",
    zone: "z1",
  });
  t.not(before?.mod_revision, updated.revision);

  const afterUpdate = (await etcd3.get(key("fence", "a")).exec()).kvs[0];
  const deniedUpdate = await failure(
    rpc(client).updateInstance({
      service: "fence",
      instanceId: "a",
      leaseId: other.leaseId,
      registrationToken: other.registrationToken,
      weight: 9,
      metadata: undefined,
    }),
  );
  t.is(deniedUpdate.code, status.PERMISSION_DENIED);
  const deniedDeregister = await failure(
    rpc(client).deregister({
      service: "fence",
      instanceId: "a",
      leaseId: other.leaseId,
      registrationToken: other.registrationToken,
    }),
  );
  t.is(deniedDeregister.code, status.PERMISSION_DENIED);
  const unchanged = (await etcd3.get(key("fence", "a")).exec()).kvs[0];
  t.is(unchanged?.mod_revision, afterUpdate?.mod_revision, "key unchanged by the denied calls");
  t.is(unchanged?.lease, holder.leaseId);

  await eventually(async () => !(await etcd3.get(key("fence", "a")).exists()), {
    what: "expiry",
    timeoutMs: 6000,
  });
  const goneUpdate = await failure(
    rpc(client).updateInstance({
      service: "fence",
      instanceId: "a",
      leaseId: holder.leaseId,
      registrationToken: holder.registrationToken,
      weight: 2,
      metadata: undefined,
    }),
  );
  t.is(goneUpdate.code, status.NOT_FOUND);
  const goneDeregister = await failure(
    rpc(client).deregister({
      service: "fence",
      instanceId: "a",
      leaseId: holder.leaseId,
      registrationToken: holder.registrationToken,
    }),
  );
  t.is(goneDeregister.code, status.NOT_FOUND);
  const expiredKeepAlive = await failure(new KeepAliveSession(client).renew(holder));
  t.is(expiredKeepAlive.code, status.NOT_FOUND, "KeepAlive on an expired lease is NOT_FOUND too");
});
