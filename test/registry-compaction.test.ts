import { credentials } from "@grpc/grpc-js";
import { InstanceStatus, RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";
import { startRegistry } from "../registry/index.js";
import { WatchRecorder, registration, testWithSharedFixture, rpc } from "./helpers/registry-fixture.js";

const test = testWithSharedFixture();

test.serial(
  "a resume from a compacted revision starts with a reset snapshot equal to etcd's content",
  async (t) => {
    const { client, etcd3 } = t.context;
    const first = new WatchRecorder(client, { service: "compact" });
    await first.until((w) => w.snapshots()[0], "snapshot");
    const a = await rpc(client).register(
      registration({ service: "compact", instanceId: "a", ttlSeconds: "30" }),
    );
    const b = await rpc(client).register(
      registration({ service: "compact", instanceId: "b", ttlSeconds: "30" }),
    );
    await first.until((w) => w.deltas().length === 2, "two deltas");
    const resumeFrom = first.lastRevision();
    first.cancel();

    await rpc(client).deregister({
      service: "compact",
      instanceId: "a",
      leaseId: a.leaseId,
      registrationToken: a.registrationToken,
    });
    await rpc(client).updateInstance({
      service: "compact",
      instanceId: "b",
      leaseId: b.leaseId,
      registrationToken: b.registrationToken,
      weight: 42,
      metadata: undefined,
    });
    await rpc(client).register(registration({ service: "compact", instanceId: "c", ttlSeconds: "30" }));
    const head = (await etcd3.get("/leasehold/").exec()).header.revision;
    await etcd3.kv.compact({ revision: head, physical: true });

    const resumed = new WatchRecorder(client, { service: "compact", startRevision: resumeFrom });
    t.teardown(() => resumed.cancel());
    await resumed.until((w) => w.messages.length > 0, "first message");
    const firstEvent = resumed.messages[0]?.event;
    t.is(firstEvent?.$case, "snapshot");
    const snapshot = resumed.snapshots()[0];
    t.true(snapshot?.reset);
    t.true(BigInt(snapshot?.revision ?? "0") >= BigInt(head));

    const inEtcd = await etcd3.getAll().prefix("/leasehold/v1/services/compact/").exec();
    t.deepEqual(
      snapshot?.instances.map((instance) => [instance.instanceId, instance.weight, instance.revision]),
      inEtcd.kvs.map((kv) => {
        const value = JSON.parse(kv.value.toString()) as { instance_id: string; weight: number };
        return [value.instance_id, value.weight, kv.mod_revision];
      }),
    );

    const d = await rpc(client).register(
      registration({ service: "compact", instanceId: "d", ttlSeconds: "30" }),
    );
    const delta = await resumed.until((w) => w.deltas()[0], "a delta after the reset");
    t.is(delta.revision, d.revision);
  },
);

test.serial("a replica started later answers an older resume with one catch-up delta", async (t) => {
  const { client, etcd } = t.context;
  const x = await rpc(client).register(registration({ service: "late", instanceId: "x", ttlSeconds: "30" }));
  const y = await rpc(client).register(registration({ service: "late", instanceId: "y", ttlSeconds: "30" }));
  const resumeFrom = y.revision;
  await rpc(client).deregister({
    service: "late",
    instanceId: "x",
    leaseId: x.leaseId,
    registrationToken: x.registrationToken,
  });
  const z = await rpc(client).register(registration({ service: "late", instanceId: "z", ttlSeconds: "30" }));
  await rpc(client).updateInstance({
    service: "late",
    instanceId: "y",
    leaseId: y.leaseId,
    registrationToken: y.registrationToken,
    status: InstanceStatus.INSTANCE_STATUS_DRAINING,
    metadata: undefined,
  });

  const replica = await startRegistry({
    listen: "127.0.0.1:0",
    etcdEndpoints: [etcd.endpoint],
    progressIntervalMs: 300,
  });
  t.teardown(() => replica.close());
  const replicaClient = new RegistryServiceClient(replica.address, credentials.createInsecure());
  t.teardown(() => replicaClient.close());
  const resumed = new WatchRecorder(replicaClient, { service: "late", startRevision: resumeFrom });
  t.teardown(() => resumed.cancel());
  await resumed.until(
    (w) => w.deltas().length > 0 && w.progresses().length > 0,
    "catch-up delta and a progress",
  );
  t.deepEqual(resumed.snapshots(), []);
  t.is(resumed.deltas().length, 1);
  const catchUp = resumed.deltas()[0];
  t.deepEqual(
    catchUp?.upserted.map((instance) => [instance.instanceId, instance.status]),
    [
      ["y", InstanceStatus.INSTANCE_STATUS_DRAINING],
      ["z", InstanceStatus.INSTANCE_STATUS_SERVING],
    ],
  );
  t.deepEqual(catchUp?.removed, [{ service: "late", instanceId: "x" }]);
  t.true(BigInt(catchUp?.revision ?? "0") > BigInt(z.revision));
});
