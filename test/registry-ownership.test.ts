import { status } from "@grpc/grpc-js";
import { MembershipWatcher } from "../client/discovery/membership-watcher.js";
import { Registrar } from "../client/registration/registrar.js";
import type { Etcd3 } from "etcd3";
import { pino } from "pino";
import { InstanceStatus, type RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./helpers/eventually.js";
import { KeepAliveSession } from "./helpers/keep-alive-session.js";
import { Registry } from "prom-client";
import {
  failure,
  registration,
  rpc,
  startRegistryFixture,
  testWithSharedFixture,
} from "./helpers/registry-fixture.js";

const test = testWithSharedFixture();

const keyOf = (service: string, instanceId: string) => `/leasehold/v1/services/${service}/${instanceId}`;

/** What etcd holds: its revision, every lease id, and every Leasehold key with its value and lease. */
async function etcdState(t: { context: { etcd3: Etcd3 } }) {
  const { etcd3 } = t.context;
  const range = await etcd3.getAll().prefix("/leasehold/").exec();
  const { leases } = await etcd3.leaseClient.leaseLeases();
  return {
    revision: range.header.revision,
    leases: leases.map((lease) => String(lease.ID)).sort(),
    keys: range.kvs.map((kv) => `${kv.key.toString()} ${kv.lease} ${kv.value.toString()}`),
  };
}

/** Tries UpdateInstance, Deregister and KeepAlive on `victim` with `leaseId` and `token`. */
async function attempt(
  t: { context: { client: RegistryServiceClient } },
  victim: { service: string; instanceId: string },
  leaseId: string,
  registrationToken: string,
) {
  const api = rpc(t.context.client);
  const update = await failure(
    api.updateInstance({
      ...victim,
      leaseId,
      registrationToken,
      weight: 10_000,
      status: InstanceStatus.INSTANCE_STATUS_DRAINING,
      metadata: undefined,
    }),
  );
  const deregister = await failure(api.deregister({ ...victim, leaseId, registrationToken }));
  const session = new KeepAliveSession(t.context.client);
  const keepAlive = await failure(session.renew({ leaseId, registrationToken }));
  session.cancel();
  return { update, deregister, keepAlive };
}

test.serial(
  "a stranger counting down from its own lease id, with tokens guessed from lease ids, changes nothing in etcd",
  async (t) => {
    const api = rpc(t.context.client);
    const victim = await api.register(
      registration({ service: "owned", instanceId: "victim", ttlSeconds: "30" }),
    );
    const stranger = await api.register(
      registration({ service: "owned", instanceId: "stranger", ttlSeconds: "30" }),
    );
    const before = await etcdState(t);
    // The attack of issue 7 found the victim within 200 guesses below its own lease; here the
    // victim's real lease id is among the guesses, so only the token can stop it.
    const own = BigInt(stranger.leaseId);
    const leaseGuesses = [
      victim.leaseId,
      ...Array.from({ length: 4 }, (_, i) => String(own - BigInt(i + 1))),
    ];
    for (const leaseId of leaseGuesses) {
      for (const token of [
        leaseId,
        Buffer.from(leaseId).toString("base64url"),
        stranger.registrationToken,
        "A".repeat(43),
      ]) {
        const { update, deregister, keepAlive } = await attempt(
          t,
          { service: "owned", instanceId: "victim" },
          leaseId,
          token,
        );
        t.is(update.code, status.PERMISSION_DENIED, `update ${leaseId}`);
        t.is(deregister.code, status.PERMISSION_DENIED, `deregister ${leaseId}`);
        t.true(
          keepAlive.code === status.PERMISSION_DENIED || keepAlive.code === status.NOT_FOUND,
          `keepalive ${leaseId}: ${keepAlive.code}`,
        );
        if (leaseId === victim.leaseId) t.is(keepAlive.code, status.PERMISSION_DENIED);
      }
    }
    t.deepEqual(await etcdState(t), before, "same revision, same leases, same values");
    // The stranger cannot take the victim's name either.
    const takeover = await failure(
      api.register(registration({ service: "owned", instanceId: "victim", address: "10.9.9.9:80" })),
    );
    t.is(takeover.code, status.ALREADY_EXISTS);
    for (const holder of [
      { instanceId: "victim", response: victim },
      { instanceId: "stranger", response: stranger },
    ]) {
      await api.deregister({
        service: "owned",
        instanceId: holder.instanceId,
        leaseId: holder.response.leaseId,
        registrationToken: holder.response.registrationToken,
      });
    }
  },
);

test.serial(
  "the holder's lease with a wrong token is PERMISSION_DENIED for update, deregister and keepalive, and etcd is untouched",
  async (t) => {
    const api = rpc(t.context.client);
    const holder = await api.register(
      registration({ service: "owned", instanceId: "h-1", ttlSeconds: "30" }),
    );
    const other = await api.register(registration({ service: "owned", instanceId: "h-2", ttlSeconds: "30" }));
    const before = await etcdState(t);
    const wrong = await attempt(
      t,
      { service: "owned", instanceId: "h-1" },
      holder.leaseId,
      other.registrationToken,
    );
    for (const [method, error] of Object.entries(wrong)) {
      t.is(error.code, status.PERMISSION_DENIED, method);
      t.regex(error.details, /registration_token does not match/, method);
      t.false(error.details.includes(other.registrationToken), `${method}: the token is not echoed`);
    }
    t.deepEqual(await etcdState(t), before, "same revision, same leases, same values");

    // The right token works for each, in order: update, keepalive, deregister.
    const updated = await api.updateInstance({
      service: "owned",
      instanceId: "h-1",
      leaseId: holder.leaseId,
      registrationToken: holder.registrationToken,
      weight: 4,
      metadata: undefined,
    });
    t.is(updated.instance?.weight, 4);
    const session = new KeepAliveSession(t.context.client);
    t.teardown(() => session.cancel());
    t.true(Number((await session.renew(holder)).ttlSeconds) > 0);
    t.true(Number((await session.renew(holder)).ttlSeconds) > 0, "a proven lease renews again");
    await api.deregister({
      service: "owned",
      instanceId: "h-1",
      leaseId: holder.leaseId,
      registrationToken: holder.registrationToken,
    });
    t.is(await t.context.etcd3.get(keyOf("owned", "h-1")).string(), null);
    await api.deregister({
      service: "owned",
      instanceId: "h-2",
      leaseId: other.leaseId,
      registrationToken: other.registrationToken,
    });
  },
);

test.serial(
  "a missing registration token is INVALID_ARGUMENT naming the field, for every fenced call",
  async (t) => {
    const api = rpc(t.context.client);
    const holder = await api.register(
      registration({ service: "owned", instanceId: "m-1", ttlSeconds: "30" }),
    );
    const before = await etcdState(t);
    const missing = await attempt(t, { service: "owned", instanceId: "m-1" }, holder.leaseId, "");
    for (const [method, error] of Object.entries(missing)) {
      t.is(error.code, status.INVALID_ARGUMENT, method);
      t.regex(error.details, /^registration_token: required/, method);
    }
    t.deepEqual(await etcdState(t), before);
    await api.deregister({
      service: "owned",
      instanceId: "m-1",
      leaseId: holder.leaseId,
      registrationToken: holder.registrationToken,
    });
  },
);

test.serial(
  "KeepAlive on a lease that holds no Leasehold instance is NOT_FOUND and does not renew it",
  async (t) => {
    const { etcd3 } = t.context;
    const bare = await etcd3.leaseClient.leaseGrant({ TTL: 60 });
    const foreign = await etcd3.leaseClient.leaseGrant({ TTL: 60 });
    await etcd3.put("/other-app/config").value("x").lease(foreign.ID).exec();
    const before = await etcdState(t);
    for (const leaseId of [bare.ID, foreign.ID]) {
      const session = new KeepAliveSession(t.context.client);
      const error = await failure(session.renew({ leaseId, registrationToken: "A".repeat(43) }));
      session.cancel();
      t.is(error.code, status.NOT_FOUND, leaseId);
      t.regex(error.details, /holds no Leasehold instance/);
    }
    // Not renewed: a renewal would reset the remaining TTL to the granted 60 s. Asserted on the
    // order of events (no renewal happened), not on a timing bound: etcd's TTL only falls.
    const remaining = await etcd3.leaseClient.leaseTimeToLive({ ID: foreign.ID });
    t.true(Number(remaining.TTL) <= 60);
    t.deepEqual(await etcdState(t), before);
    await etcd3.leaseClient.leaseRevoke({ ID: bare.ID });
    await etcd3.leaseClient.leaseRevoke({ ID: foreign.ID });
  },
);

test.serial(
  "a registrar sends its token: registered, kept alive through two TTLs without losing its lease, drained and deregistered",
  async (t) => {
    const { client, etcd3 } = t.context;
    const watcher = new MembershipWatcher({ registry: client, service: "owned-e2e" });
    t.teardown(async () => await watcher.close());
    watcher.start();
    await watcher.ready();
    const logLines: string[] = [];
    const registrar = new Registrar({
      registry: client,
      instance: { service: "owned-e2e", instanceId: "r-1", address: "127.0.0.1:1" },
      ttlSeconds: 2,
      logger: pino({ level: "debug" }, { write: (line: string) => logLines.push(line) }),
    });
    t.teardown(async () => await registrar.close());
    await registrar.start();
    const leaseId = registrar.leaseId ?? "";
    t.not(leaseId, "");
    await eventually(() => watcher.current().instances.length === 1, { what: "the instance listed" });
    await new Promise((resolve) => setTimeout(resolve, 4500)); // 2 TTLs: only accepted keepalives hold the lease
    t.is(registrar.state, "registered");
    t.is(registrar.leaseId, leaseId, "the same lease all along");
    t.is((await etcd3.get(keyOf("owned-e2e", "r-1")).exec()).kvs[0]?.lease, leaseId);
    t.false(
      logLines.some((line) => line.includes("registering again")),
      "no keepalive was refused (a refusal registers again)",
    );
    await registrar.drain();
    await eventually(
      () => watcher.current().instances[0]?.status === InstanceStatus.INSTANCE_STATUS_DRAINING,
      { what: "DRAINING seen by a watcher" },
    );
    await registrar.stop();
    await eventually(() => watcher.current().instances.length === 0, { what: "removal" });
    t.is(await etcd3.get(keyOf("owned-e2e", "r-1")).string(), null);
    const token = logLines.join("").match(/"registrationToken"/);
    t.is(token, null, "no registrationToken field in the registrar's logs");
  },
);

test("a lease is proven by the Register that granted it: its KeepAlives, on the first stream and on a new one, renew without reading its owner from etcd; a wrong token is still refused", async (t) => {
  const metricsRegistry = new Registry();
  const fixture = await startRegistryFixture({ metricsRegistry });
  t.teardown(async () => await fixture.close());
  const ownerReads = async (): Promise<number> => {
    const metric = metricsRegistry.getSingleMetric("leasehold_registry_etcd_request_duration_seconds");
    const values = (await metric?.get())?.values ?? [];
    const count = values.find(
      (v) =>
        v.labels.op === "lease_time_to_live" &&
        (v as { metricName?: string }).metricName?.endsWith("_count") === true,
    );
    return count?.value ?? 0;
  };
  const held = await rpc(fixture.client).register(
    registration({ service: "proven", instanceId: "p-1", ttlSeconds: "30" }),
  );
  const first = new KeepAliveSession(fixture.client);
  await first.renew(held);
  first.cancel();
  t.is(await ownerReads(), 0, "the first renewal read no owner: Register proved it");
  // A registrar reconnecting (after a registry or etcd outage): a new stream, the same lease.
  const second = new KeepAliveSession(fixture.client);
  t.is((await second.renew(held)).leaseId, held.leaseId);
  second.cancel();
  t.is(await ownerReads(), 0, "no owner read for a proven lease");
  const stranger = new KeepAliveSession(fixture.client);
  const refused = await failure(stranger.renew({ leaseId: held.leaseId, registrationToken: "A".repeat(43) }));
  t.is(refused.code, status.PERMISSION_DENIED);
});
