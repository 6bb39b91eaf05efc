import { InstanceStatus, type Delta } from "../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./helpers/eventually.js";
import {
  WatchRecorder,
  registration,
  testWithSharedFixture,
  rpc,
  type RegistryFixture,
} from "./helpers/registry-fixture.js";

const test = testWithSharedFixture();

/** Registers, updates and deregisters on `service`, returning the revision of every change in order. */
async function churn(fixture: RegistryFixture, service: string, suffix: string): Promise<string[]> {
  const { client } = fixture;
  const a = await rpc(client).register(registration({ service, instanceId: `a${suffix}`, ttlSeconds: "30" }));
  const b = await rpc(client).register(registration({ service, instanceId: `b${suffix}`, ttlSeconds: "30" }));
  const updated = await rpc(client).updateInstance({
    service,
    instanceId: `a${suffix}`,
    leaseId: a.leaseId,
    registrationToken: a.registrationToken,
    weight: 5,
    metadata: undefined,
  });
  const drained = await rpc(client).updateInstance({
    service,
    instanceId: `a${suffix}`,
    leaseId: a.leaseId,
    registrationToken: a.registrationToken,
    status: InstanceStatus.INSTANCE_STATUS_DRAINING,
    metadata: undefined,
  });
  const removed = await rpc(client).deregister({
    service,
    instanceId: `b${suffix}`,
    leaseId: b.leaseId,
    registrationToken: b.registrationToken,
  });
  return [a.revision, b.revision, updated.revision, drained.revision, removed.revision];
}

function describe(delta: Delta): string {
  return [
    ...delta.upserted.map((instance) => `+${instance.instanceId}@w${instance.weight}s${instance.status}`),
    ...delta.removed.map((key) => `-${key.instanceId}`),
  ].join(",");
}

test("Watch sends a snapshot, then one delta per revision in strictly increasing order, and progress", async (t) => {
  const { client } = t.context;
  await rpc(client).register(registration({ service: "seq", instanceId: "z0", ttlSeconds: "30" }));
  const watch = new WatchRecorder(client, { service: "seq" });
  t.teardown(() => watch.cancel());
  const snapshot = await watch.until((w) => w.snapshots()[0], "snapshot");
  t.is(watch.messages[0]?.event?.$case, "snapshot", "the first message is the snapshot");
  t.false(snapshot.reset);
  t.deepEqual(
    snapshot.instances.map((instance) => instance.instanceId),
    ["z0"],
  );

  const revisions = await churn(t.context, "seq", "");
  await watch.until((w) => w.deltas().length >= 5, "five deltas");
  const deltas = watch.deltas();
  t.deepEqual(
    deltas.map((delta) => delta.revision),
    revisions,
    "one delta per change, at the change's revision",
  );
  for (const [index, delta] of deltas.entries()) {
    if (index > 0) t.true(BigInt(delta.revision) > BigInt(deltas[index - 1]?.revision ?? "0"));
  }
  t.true(BigInt(deltas[0]?.revision ?? "0") > BigInt(snapshot.revision));
  t.deepEqual(deltas.map(describe), ["+a@w1s1", "+b@w1s1", "+a@w5s1", "+a@w5s2", "-b"]);
  t.is(deltas[0]?.upserted[0]?.revision, revisions[0], "instances carry their mod revision");

  const progress = await watch.until(
    (w) => w.progresses().find((p) => BigInt(p.revision) >= BigInt(revisions[4] ?? "0")),
    "progress after the last change",
  );
  t.true(BigInt(progress.revision) >= BigInt(revisions[4] ?? "0"));
});

test("GetService and ListServices answer from the watch-fed cache with its revision", async (t) => {
  const { client } = t.context;
  const revisions = await churn(t.context, "reads", "");
  const lastRevision = BigInt(revisions[4] ?? "0");
  const service = await eventually(async () => {
    const response = await rpc(client).getService({ service: "reads" });
    return BigInt(response.revision) >= lastRevision && response;
  });
  t.deepEqual(
    service.instances.map((instance) => [instance.instanceId, instance.weight, instance.status]),
    [["a", 5, InstanceStatus.INSTANCE_STATUS_DRAINING]],
  );
  const list = await rpc(client).listServices({});
  t.like(
    list.services.find((summary) => summary.service === "reads"),
    { instances: 1, serving: 0, draining: 1 },
  );
  t.true(BigInt(list.revision) >= lastRevision);
  const unknown = await rpc(client).getService({ service: "no-such-service" });
  t.deepEqual(unknown.instances, []);
});

test("a resumed Watch receives exactly the changes made while it was disconnected", async (t) => {
  const { client } = t.context;
  const first = new WatchRecorder(client, { service: "resume" });
  await first.until((w) => w.snapshots()[0], "snapshot");
  const before = await churn(t.context, "resume", "1");
  await first.until((w) => w.deltas().length === 5, "deltas before the disconnect");
  const resumeFrom = first.deltas().at(-1)?.revision ?? "0";
  t.deepEqual([resumeFrom], before.slice(-1));
  first.cancel();
  await eventually(() => first.ended !== undefined, { what: "first stream ended" });

  const missed = await churn(t.context, "resume", "2");
  const resumed = new WatchRecorder(client, { service: "resume", startRevision: resumeFrom });
  t.teardown(() => resumed.cancel());
  await resumed.until((w) => w.deltas().length >= 5, "the missed deltas");
  await resumed.until((w) => w.progresses().length > 0, "a progress after them");
  t.deepEqual(resumed.snapshots(), [], "no snapshot on a resume");
  t.deepEqual(
    resumed.deltas().map((delta) => delta.revision),
    missed,
    "exactly the missed changes, in order, no duplicates",
  );
  t.deepEqual(resumed.deltas().map(describe), ["+a2@w1s1", "+b2@w1s1", "+a2@w5s1", "+a2@w5s2", "-b2"]);
});

test("fifty Watch streams share one etcd watch and all receive the same deltas", async (t) => {
  const { client, etcd } = t.context;
  const watches = Array.from({ length: 50 }, () => new WatchRecorder(client, { service: "fanout" }));
  t.teardown(() => watches.forEach((watch) => watch.cancel()));
  await eventually(() => watches.every((watch) => watch.snapshots().length === 1), { what: "50 snapshots" });
  const metrics = await (await fetch(`${etcd.endpoint}/metrics`)).text();
  t.regex(metrics, /^etcd_debugging_mvcc_watcher_total 1$/m, "the registry holds one etcd watcher");

  const revisions = await churn(t.context, "fanout", "");
  await eventually(() => watches.every((watch) => watch.deltas().length >= 5), {
    what: "deltas on every stream",
  });
  const expected = watches[0]?.deltas();
  t.deepEqual(
    expected?.map((delta) => delta.revision),
    revisions,
  );
  for (const watch of watches) t.deepEqual(watch.deltas(), expected);
});

test("writes outside the registry's prefix do not make it stale: progress reaches their revision with stale false", async (t) => {
  const { client, etcd3 } = t.context;
  const stream = new WatchRecorder(client, { service: "quiet" });
  t.teardown(() => stream.cancel());
  // Instance churn elsewhere (keys created and deleted under the prefix) and unrelated keys.
  const churned = await rpc(client).register(registration({ service: "noisy", instanceId: "n-1" }));
  await rpc(client).deregister({
    service: "noisy",
    instanceId: "n-1",
    leaseId: churned.leaseId,
    registrationToken: churned.registrationToken,
  });
  let outside = 0n;
  for (let index = 0; index < 5; index += 1) {
    outside = BigInt((await etcd3.put(`/other-app/key-${index}`).value("x").exec()).header.revision);
  }
  const progress = await stream.until(
    (s) => s.progresses().find((p) => BigInt(p.revision) >= outside),
    "a progress at the outside writes' revision",
  );
  t.false(progress.stale);
  t.false(
    stream.progresses().some((p) => p.stale),
    "never stale on a live etcd",
  );
});
