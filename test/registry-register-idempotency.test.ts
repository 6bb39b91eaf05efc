import { status } from "@grpc/grpc-js";
import { createHash } from "node:crypto";
import { pino } from "pino";
import { Registry } from "prom-client";
import { RegistryMetrics, type EtcdOperation } from "../registry/registry-metrics.js";
import { EtcdStore } from "../registry/store/etcd-store.js";
import { eventually } from "./helpers/eventually.js";
import { failure, registration, rpc, testWithSharedFixture } from "./helpers/registry-fixture.js";
import { InstanceStatus, type Instance } from "../proto/gen/leasehold/registry/v1/registry.js";

const test = testWithSharedFixture();

const holderId = "0123456789abcdef0123456789abcdef";
const keyOf = (service: string, instanceId: string) => `/leasehold/v1/services/${service}/${instanceId}`;

test.serial(
  "a retry with the same registration id adopts the holder's key: same lease and TTL, a fresh token (the earlier one refused), changed fields written, never ALREADY_EXISTS",
  async (t) => {
    const { client, etcd3 } = t.context;
    const api = rpc(client);
    const request = registration({ service: "idem", instanceId: "i-1", registrationId: holderId });
    const first = await api.register(request);
    const again = await api.register(request);
    t.is(again.leaseId, first.leaseId);
    t.is(again.ttlSeconds, first.ttlSeconds);
    t.not(again.registrationToken, first.registrationToken, "a fresh token");
    t.true(BigInt(again.revision) > BigInt(first.revision), "its hash was written");
    t.is(again.instance?.ttlSeconds, "3", "Instance carries the granted TTL");
    const stale = await failure(
      api.updateInstance({
        service: "idem",
        instanceId: "i-1",
        leaseId: first.leaseId,
        registrationToken: first.registrationToken,
        weight: 5,
        metadata: undefined,
      }),
    );
    t.is(stale.code, status.PERMISSION_DENIED, "the earlier token stopped working");

    await api.updateInstance({
      service: "idem",
      instanceId: "i-1",
      leaseId: again.leaseId,
      registrationToken: again.registrationToken,
      status: InstanceStatus.INSTANCE_STATUS_DRAINING,
      weight: undefined,
      zone: undefined,
      metadata: undefined,
    });
    const reweighted = await api.register({ ...request, weight: 7 });
    t.is(reweighted.leaseId, first.leaseId);
    t.is(reweighted.instance?.weight, 7);
    t.is(
      reweighted.instance?.status,
      InstanceStatus.INSTANCE_STATUS_SERVING,
      "an update in between keeps the holder",
    );
    t.true(BigInt(reweighted.revision) > BigInt(first.revision));
    const { leases } = await etcd3.leaseClient.leaseLeases();
    t.deepEqual(
      leases.map((lease) => String(lease.ID)),
      [first.leaseId],
      "no second lease was granted",
    );

    const other = await failure(api.register({ ...request, registrationId: "another-holder" }));
    t.is(other.code, status.ALREADY_EXISTS, "another holder is still refused");
    const legacy = await failure(api.register({ ...request, registrationId: "" }));
    t.is(legacy.code, status.ALREADY_EXISTS, "so is a request without a registration id");
    t.is((await etcd3.leaseClient.leaseLeases()).leases.length, 1, "refusals grant nothing");
    await api.deregister({
      service: "idem",
      instanceId: "i-1",
      leaseId: reweighted.leaseId,
      registrationToken: reweighted.registrationToken,
    });
  },
);

test.serial("the registration id is stored only as its SHA-256 and never returned", async (t) => {
  const { client, etcd3 } = t.context;
  const response = await rpc(client).register(
    registration({ service: "idem", instanceId: "secret-1", registrationId: holderId }),
  );
  const value = (await etcd3.get(keyOf("idem", "secret-1")).string()) ?? "";
  t.false(value.includes(holderId));
  t.is(
    (JSON.parse(value) as { registration_hash?: string }).registration_hash,
    createHash("sha256").update(holderId).digest("hex"),
  );
  t.is((JSON.parse(value) as { ttl_seconds?: number }).ttl_seconds, 3);
  t.false(JSON.stringify(response).includes(holderId));
  await rpc(client).deregister({
    service: "idem",
    instanceId: "secret-1",
    leaseId: response.leaseId,
    registrationToken: response.registrationToken,
  });
});

test.serial("a malformed registration id is INVALID_ARGUMENT and is not echoed", async (t) => {
  const api = rpc(t.context.client);
  for (const registrationId of ["x".repeat(65), "has space", "semi;colon"]) {
    const error = await failure(
      api.register(registration({ service: "idem", instanceId: "bad-1", registrationId })),
    );
    t.is(error.code, status.INVALID_ARGUMENT);
    t.regex(error.details, /^registration_id:/);
    t.false(error.details.includes(registrationId));
  }
});

test.serial(
  "a Register whose caller goes away after the lease grant revokes that lease and writes no key",
  async (t) => {
    const { etcd, etcd3 } = t.context;
    const caller = new AbortController();
    // The seam: metrics see every etcd request finish; the caller leaves right after the grant.
    class LeavingAfterGrant extends RegistryMetrics {
      override async timeEtcd<T>(op: EtcdOperation, request: () => Promise<T>): Promise<T> {
        const result = await super.timeEtcd(op, request);
        if (op === "lease_grant") caller.abort();
        return result;
      }
    }
    const store = new EtcdStore({
      endpoints: [etcd.endpoint],
      prefix: "/leasehold/",
      requestTimeoutMs: 5000,
      watchCheckIntervalMs: 1000,
      watchCheckTimeoutMs: 1000,
      watchStaleAfterMs: 3000,
      metrics: new LeavingAfterGrant(new Registry()),
      logger: pino({ level: "silent" }),
    });
    t.teardown(() => store.close());
    const instance: Instance = {
      service: "idem",
      instanceId: "gone-1",
      address: "127.0.0.1:9000",
      weight: 1,
      zone: "",
      metadata: {},
      status: InstanceStatus.INSTANCE_STATUS_SERVING,
      registeredAt: "",
      metricsAddress: "",
      revision: "0",
      ttlSeconds: "30",
      createRevision: "0",
    };
    const before = new Set((await etcd3.leaseClient.leaseLeases()).leases.map((lease) => String(lease.ID)));
    const error = await t.throwsAsync(
      store.register(instance, 30, {}, { isCancelled: () => caller.signal.aborted }),
    );
    t.is((error as { code?: string } | undefined)?.code, "cancelled");
    t.is(await etcd3.get(keyOf("idem", "gone-1")).string(), null, "no key");
    // The revoke runs in the background (it retries while etcd is away); here etcd answers at once.
    await eventually(
      async () =>
        (await etcd3.leaseClient.leaseLeases()).leases.every((lease) => before.has(String(lease.ID))),
      { what: "the granted lease revoked" },
    );
    t.pass();
  },
);
