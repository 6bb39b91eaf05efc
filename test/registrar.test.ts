import test from "ava";
import { Etcd3 } from "etcd3";
import { freePort } from "../cli/local-etcd.js";
import { MembershipWatcher, type MembershipChange } from "../client/discovery/membership-watcher.js";
import { Registrar } from "../client/registration/registrar.js";
import { connectRegistry } from "../client/registry-connection.js";
import { InstanceStatus } from "../proto/gen/leasehold/registry/v1/registry.js";
import { startFixtureFor } from "./helpers/registry-fixture.js";
import { eventually } from "./helpers/eventually.js";

test("a registrar registers, keeps its lease past the TTL, drains, and stop() removes it at once", async (t) => {
  const { client } = await startFixtureFor(t);
  const watcher = new MembershipWatcher({ registry: client, service: "calculator" });
  t.teardown(async () => await watcher.close());
  watcher.start();
  await watcher.ready();
  const registrar = new Registrar({
    registry: client,
    instance: { service: "calculator", instanceId: "calc-1", address: "127.0.0.1:1", weight: 3 },
    ttlSeconds: 2,
  });
  t.teardown(async () => await registrar.close());
  await registrar.start();
  t.is(registrar.state, "registered");
  await eventually(() => watcher.current().instances.length === 1, { what: "the instance listed" });
  t.is(watcher.current().instances[0]?.weight, 3);

  const removals: MembershipChange[] = [];
  watcher.subscribe((_, changes) => removals.push(...changes.filter((c) => c.type === "removed")));
  await new Promise((resolve) => setTimeout(resolve, 4500)); // 2 TTLs: keepalives must hold the lease
  t.deepEqual(removals, [], "the keepalives kept the lease through two TTLs");

  await registrar.drain();
  await eventually(() => watcher.current().instances[0]?.status === InstanceStatus.INSTANCE_STATUS_DRAINING, {
    what: "DRAINING seen by a watcher",
  });
  const stoppedAt = Date.now();
  await registrar.stop();
  await eventually(() => watcher.current().instances.length === 0, { timeoutMs: 1000, what: "removal" });
  t.true(Date.now() - stoppedAt < 1000);
});

test("a registrar whose lease is revoked behind its back registers again within one TTL", async (t) => {
  const { client, etcd } = await startFixtureFor(t);
  const registrar = new Registrar({
    registry: client,
    instance: { service: "echo", instanceId: "echo-1", address: "127.0.0.1:2" },
    ttlSeconds: 3,
  });
  t.teardown(async () => await registrar.close());
  await registrar.start();
  const firstLease = registrar.leaseId;
  t.truthy(firstLease);

  const etcdClient = new Etcd3({ hosts: etcd.endpoint });
  t.teardown(() => etcdClient.close());
  const revokedAt = Date.now();
  await etcdClient.leaseClient.leaseRevoke({ ID: firstLease });
  const secondLease = await eventually(
    () => registrar.state === "registered" && registrar.leaseId !== firstLease && registrar.leaseId,
    { timeoutMs: 3000, what: "a new lease" },
  );
  t.true(Date.now() - revokedAt <= 3000, "loss detected and repaired within one TTL");
  const value = await etcdClient.get("/leasehold/v1/services/echo/echo-1").json();
  t.like(value, { service: "echo", instance_id: "echo-1", status: "SERVING" });
  const lease = await etcdClient.leaseClient.leaseTimeToLive({ ID: secondLease, keys: true });
  t.true(Number(lease.TTL) > 0, "the key is attached to the new live lease");
});

test("a registrar refused with INVALID_ARGUMENT rejects start() without retrying", async (t) => {
  const { client } = await startFixtureFor(t);
  const registrar = new Registrar({
    registry: client,
    instance: { service: "Bad_Name!", instanceId: "x", address: "127.0.0.1:3" },
  });
  t.teardown(async () => await registrar.close());
  const error = await t.throwsAsync(registrar.start());
  t.is((error as { code?: number }).code, 3);
  t.is(registrar.state, "idle");
});

test("stop() before the first successful Register settles start() instead of leaving it pending", async (t) => {
  const port = await freePort(); // nothing listens there
  const client = connectRegistry(`127.0.0.1:${port}`);
  t.teardown(() => client.close());
  const registrar = new Registrar({
    registry: client,
    instance: { service: "echo", instanceId: "echo-9", address: "127.0.0.1:9" },
    callTimeoutMs: 200,
  });
  const starting = registrar.start();
  await registrar.stop();
  await t.throwsAsync(starting, { message: /stopped before it registered/ });
  t.is(registrar.state, "idle");
});

test("update() changes weight, status, zone and metadata live; a watcher sees one instance change in place, same lease", async (t) => {
  const { client } = await startFixtureFor(t);
  const watcher = new MembershipWatcher({ registry: client, service: "calculator" });
  t.teardown(async () => await watcher.close());
  watcher.start();
  await watcher.ready();
  const registrar = new Registrar({
    registry: client,
    instance: {
      service: "calculator",
      instanceId: "calc-u",
      address: "127.0.0.1:1",
      weight: 1,
      zone: "zone-a",
      metadata: { version: "v1" },
    },
    ttlSeconds: 5,
  });
  t.teardown(async () => await registrar.close());
  await registrar.start();
  await eventually(() => watcher.current().instances.length === 1, { what: "the instance listed" });
  const before = watcher.current().instances[0];
  await registrar.update({
    weight: 7,
    zone: "zone-b",
    metadata: { version: "v2", track: "canary" },
    status: InstanceStatus.INSTANCE_STATUS_DRAINING,
  });
  const after = await eventually(
    () => {
      const instance = watcher.current().instances[0];
      return instance?.weight === 7 ? instance : undefined;
    },
    { what: "the update seen by a watcher" },
  );
  t.is(after.zone, "zone-b");
  t.deepEqual(after.metadata, { version: "v2", track: "canary" });
  t.is(after.status, InstanceStatus.INSTANCE_STATUS_DRAINING);
  t.is(after.registeredAt, before?.registeredAt ?? "");
  t.is(after.address, before?.address ?? "");
  t.is(watcher.current().instances.length, 1);
});
