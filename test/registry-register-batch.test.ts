import { status } from "@grpc/grpc-js";
import { failure, registration, rpc, testWithSharedFixture } from "./helpers/registry-fixture.js";

// Concurrent Registers share etcd transactions (registry/store/key-creates.ts); a key already held
// must fail only its own Register, never its neighbours'.
const test = testWithSharedFixture();

const key = (service: string, instanceId: string) => `/leasehold/v1/services/${service}/${instanceId}`;

test("concurrent Registers, one for a key another lease holds: that one is ALREADY_EXISTS, the rest are registered, and the held key keeps its lease", async (t) => {
  const { client, etcd3 } = t.context;
  const held = await rpc(client).register(registration({ service: "batch", instanceId: "held" }));
  const fresh = Array.from({ length: 20 }, (_, index) => `fresh-${index}`);
  const [refused, ...created] = await Promise.all([
    failure(rpc(client).register(registration({ service: "batch", instanceId: "held" }))),
    ...fresh.map((instanceId) => rpc(client).register(registration({ service: "batch", instanceId }))),
  ]);
  t.is(refused.code, status.ALREADY_EXISTS);
  t.is((await etcd3.get(key("batch", "held")).exec()).kvs[0]?.lease, held.leaseId);
  for (const [index, instanceId] of fresh.entries()) {
    const kv = (await etcd3.get(key("batch", instanceId)).exec()).kvs[0];
    t.is(kv?.lease, created[index]?.leaseId, instanceId);
    t.is(kv?.mod_revision, created[index]?.revision, `${instanceId}: the revision returned is the put's`);
  }
});

test("two concurrent Registers of one new key: exactly one is registered, the other is ALREADY_EXISTS", async (t) => {
  const { client, etcd3 } = t.context;
  const outcomes = await Promise.allSettled([
    rpc(client).register(registration({ service: "batch", instanceId: "twice" })),
    rpc(client).register(registration({ service: "batch", instanceId: "twice" })),
  ]);
  const registered = outcomes.flatMap((outcome) => (outcome.status === "fulfilled" ? [outcome.value] : []));
  const refused = outcomes.flatMap((outcome) =>
    outcome.status === "rejected" ? [(outcome.reason as { code?: number }).code] : [],
  );
  t.is(registered.length, 1);
  t.deepEqual(refused, [status.ALREADY_EXISTS]);
  t.is((await etcd3.get(key("batch", "twice")).exec()).kvs[0]?.lease, registered[0]?.leaseId);
});
