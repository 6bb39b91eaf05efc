import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import anyTest, { type TestFn } from "ava";
import { Registry } from "prom-client";
import {
  RegistryServiceClient,
  type KeepAliveResponse,
  type RegisterResponse,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import type { Instance } from "../proto/gen/leasehold/registry/v1/registry.js";
import type { RegistryLimitOptions } from "../registry/index.js";
import { RegistryLimiter, resolveRegistryLimits } from "../registry/registry-limits.js";
import { RegistryMetrics } from "../registry/registry-metrics.js";
import { eventually } from "./helpers/eventually.js";
import {
  failure,
  registration,
  rpc,
  startRegistryFixture,
  WatchRecorder,
  type RegistryFixture,
} from "./helpers/registry-fixture.js";

/** One registry with small quotas, shared by the serial tests of this file. */
interface Context {
  fixture: RegistryFixture;
  metrics: Registry;
}
const test = anyTest as TestFn<Context>;

const limits: RegistryLimitOptions = {
  maxInstancesPerService: 50,
  maxWatchStreamsPerConnection: 5,
  maxKeepAlivesPerSecond: 10,
  maxEtcdResumesPerSecond: 3,
};

test.before(async (t) => {
  const metrics = new Registry();
  t.context = { fixture: await startRegistryFixture({ limits, metricsRegistry: metrics }), metrics };
});
test.after.always(async (t) => {
  await t.context.fixture?.close();
});

/** `leasehold_registry_limited_total{limit}` now. */
async function limited(metrics: Registry, limit: string): Promise<number> {
  const metric = await metrics.getSingleMetric("leasehold_registry_limited_total")?.get();
  return metric?.values.find((value) => value.labels["limit"] === limit)?.value ?? 0;
}

/** A client on a connection of its own (grpc-js shares subchannels between clients otherwise). */
function ownConnection(address: string): RegistryServiceClient {
  return new RegistryServiceClient(address, credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
  });
}

/** Runs `task(i)` for i < count, `concurrency` at a time. */
async function pool(count: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

test.serial(
  "a 2,000-registration attack on one service is cut at maxInstancesPerService (50) with RESOURCE_EXHAUSTED, while another caller's Register succeeds",
  async (t) => {
    const { fixture, metrics } = t.context;
    const api = rpc(fixture.client);
    const outcomes: ("ok" | "limited" | "other")[] = [];
    let refusal: ServiceError | undefined;
    const attack = pool(2000, 32, async (i) => {
      try {
        await api.register(registration({ service: "flooded", instanceId: `a-${i}`, ttlSeconds: "30" }));
        outcomes.push("ok");
      } catch (error) {
        const code = (error as ServiceError).code;
        outcomes.push(code === status.RESOURCE_EXHAUSTED ? "limited" : "other");
        refusal ??= error as ServiceError;
      }
    });
    await eventually(() => outcomes.includes("limited"), { what: "the first refusal" });
    const refusalsBefore = outcomes.filter((outcome) => outcome === "limited").length;
    // A well-behaved caller registers into its own service while the attack runs.
    const goodStarted = performance.now();
    const good = await api.register(registration({ service: "good", instanceId: "g-1", ttlSeconds: "30" }));
    const goodMs = performance.now() - goodStarted; // reported, not asserted (a loaded machine)
    const refusalsAtGood = outcomes.filter((outcome) => outcome === "limited").length;
    await attack;
    t.truthy(good.registrationToken, "the well-behaved Register succeeded");
    t.true(refusalsAtGood < 1950, "it was answered while the attack still ran");
    t.log(
      `good Register answered in ${goodMs.toFixed(1)} ms, after ${refusalsBefore}..${refusalsAtGood} of 1950 refusals`,
    );
    t.is(outcomes.filter((outcome) => outcome === "ok").length, 50, "exactly the limit got through");
    t.is(outcomes.filter((outcome) => outcome === "limited").length, 1950);
    t.is(outcomes.filter((outcome) => outcome === "other").length, 0);
    t.regex(refusal?.details ?? "", /service flooded holds 50 instances.*maxInstancesPerService/);
    const keys = await fixture.etcd3.getAll().prefix("/leasehold/v1/services/flooded/").keys();
    t.is(keys.length, 50, "etcd holds 50 instances of the service");
    t.is(await limited(metrics, "instances_per_service"), 1950);

    // At the limit, an instance already listed may still register again (its own registration id).
    const again = registration({ service: "flooded", instanceId: "held", registrationId: "h".repeat(32) });
    const full = await failure(api.register(again));
    t.is(full.code, status.RESOURCE_EXHAUSTED, "a new instance is refused at the limit");
    await fixture.etcd3.delete().key("/leasehold/v1/services/flooded/a-0").exec();
    const held = await eventually(() => api.register(again).catch(() => undefined), { what: "a free slot" });
    await eventually(
      async () =>
        (await api.getService({ service: "flooded" })).instances.some((i) => i.instanceId === "held"),
      { what: "the cache lists it" },
    );
    const reregistered = await api.register(again);
    t.is(reregistered.leaseId, held.leaseId, "a listed instance re-registers at the limit");
  },
);

test.serial(
  "Watch streams beyond maxWatchStreamsPerConnection (5) end with RESOURCE_EXHAUSTED; other connections and freed slots still watch",
  async (t) => {
    const { fixture, metrics } = t.context;
    const client = ownConnection(fixture.registry.address);
    t.teardown(() => client.close());
    const streams = Array.from({ length: 8 }, () => new WatchRecorder(client, { service: "good" }));
    t.teardown(() => streams.forEach((stream) => stream.cancel()));
    await eventually(() => streams.filter((s) => s.snapshots().length > 0).length === 5, {
      what: "5 snapshots",
    });
    const refused = await eventually(
      () => {
        const ended = streams.filter((s) => s.ended?.code === status.RESOURCE_EXHAUSTED);
        return ended.length === 3 && ended;
      },
      { what: "3 refusals" },
    );
    for (const stream of refused) {
      t.regex(stream.ended?.details ?? "", /5 Watch streams open.*maxWatchStreamsPerConnection/);
      t.is(stream.messages.length, 0, "a refused stream got nothing");
    }
    t.is(await limited(metrics, "watch_streams_per_connection"), 3);

    const other = ownConnection(fixture.registry.address);
    t.teardown(() => other.close());
    const elsewhere = new WatchRecorder(other, { service: "good" });
    t.teardown(() => elsewhere.cancel());
    await elsewhere.until((w) => w.snapshots().length > 0, "a snapshot on another connection");

    const open = streams.filter((s) => s.snapshots().length > 0);
    open[0]?.cancel();
    const replacement = await eventually(
      async () => {
        const candidate = new WatchRecorder(client, { service: "good" });
        await eventually(() => candidate.ended !== undefined || candidate.snapshots().length > 0);
        if (candidate.snapshots().length > 0) return candidate;
        return undefined;
      },
      { what: "a freed slot" },
    );
    t.teardown(() => replacement.cancel());
    t.pass();
  },
);

test.serial(
  "a KeepAlive flood (500 messages at once) ends its stream with RESOURCE_EXHAUSTED before all are answered, and the lease stays",
  async (t) => {
    const { fixture, metrics } = t.context;
    const registered: RegisterResponse = await rpc(fixture.client).register(
      registration({ service: "good", instanceId: "flood-1", ttlSeconds: "30" }),
    );
    const stream = fixture.client.keepAlive();
    const answers: KeepAliveResponse[] = [];
    stream.on("data", (answer: KeepAliveResponse) => answers.push(answer));
    const ended = new Promise<ServiceError>((resolve) => stream.on("error", resolve));
    for (let i = 0; i < 500; i += 1) {
      stream.write({ leaseId: registered.leaseId, registrationToken: registered.registrationToken });
    }
    const error = await ended;
    t.is(error.code, status.RESOURCE_EXHAUSTED);
    t.regex(error.details, /more than 10 KeepAlive messages a second.*maxKeepAlivesPerSecond/);
    t.true(answers.length < 500, `${answers.length} answered before the cut`);
    t.log(`${answers.length} of 500 keepalives answered before the cut (bucket: 10)`);
    t.true((await limited(metrics, "keepalive_rate")) >= 1);
    const key = await fixture.etcd3.get("/leasehold/v1/services/good/flood-1").exec();
    t.is(key.kvs[0]?.lease, registered.leaseId, "the instance keeps its lease");
  },
);

test("concurrent resumes of one service at one revision share one etcd read; a settled read is not reused", async (t) => {
  const limiter = new RegistryLimiter({
    limits: resolveRegistryLimits({ maxEtcdResumesPerSecond: 100 }),
    metrics: new RegistryMetrics(new Registry()),
    cache: { instanceCount: () => ({ count: 0, isListed: false }) },
  });
  const reads: { revision: bigint; service: string | undefined; resolve: (value: Instance[]) => void }[] = [];
  const listAt = limiter.coalesceResumes(
    (revision, service) => new Promise<Instance[]>((resolve) => reads.push({ revision, service, resolve })),
  );
  const same = Array.from({ length: 20 }, () => listAt(7n, "echo"));
  const otherService = listAt(7n, "calc");
  const otherRevision = listAt(8n, "echo");
  t.deepEqual(
    reads.map(({ revision, service }) => `${service}@${revision}`),
    ["echo@7", "calc@7", "echo@8"],
    "20 resumes of echo@7, one read",
  );
  reads.forEach((read) => read.resolve([]));
  t.true((await Promise.all(same)).every((result) => Array.isArray(result)));
  await Promise.all([otherService, otherRevision]);
  const later = listAt(7n, "echo");
  t.is(reads.length, 4, "a later resume reads again (etcd may have compacted meanwhile)");
  reads[3]?.resolve([]);
  await later;
});

test.serial(
  "Watch resumes that read etcd beyond maxEtcdResumesPerSecond (3) end with RESOURCE_EXHAUSTED",
  async (t) => {
    const { fixture, metrics } = t.context;
    const api = rpc(fixture.client);
    const revisions: string[] = [];
    for (let i = 0; i < 8; i += 1) {
      const response = await api.register(
        registration({ service: "resumed", instanceId: `r-${i}`, ttlSeconds: "30" }),
      );
      revisions.push(response.revision);
    }
    const clients = Array.from({ length: 4 }, () => ownConnection(fixture.registry.address));
    t.teardown(() => clients.forEach((client) => client.close()));
    const distinct = revisions.map(
      (revision, i) =>
        new WatchRecorder(clients[i % 4] as RegistryServiceClient, {
          service: "resumed",
          startRevision: revision,
        }),
    );
    t.teardown(() => distinct.forEach((stream) => stream.cancel()));
    await eventually(() => distinct.every((s) => s.messages.length > 0 || s.ended !== undefined), {
      what: "every resume answered",
    });
    const refused = distinct.filter((s) => s.ended?.code === status.RESOURCE_EXHAUSTED);
    t.true(refused.length >= 1, `${refused.length} of 8 resumes at distinct revisions refused`);
    t.true(distinct.length - refused.length >= 3, "a full bucket's worth was served");
    t.regex(refused[0]?.ended?.details ?? "", /Watch resumes a second read etcd.*maxEtcdResumesPerSecond/);
    t.is(await limited(metrics, "resume_rate"), refused.length);
  },
);

test("grpc.max_concurrent_streams (8): a ninth stream on one connection waits for a free one and never reaches the registry", async (t) => {
  const metrics = new Registry();
  const fixture = await startRegistryFixture({
    limits: { maxConcurrentStreamsPerConnection: 8, maxWatchStreamsPerConnection: 100 },
    metricsRegistry: metrics,
  });
  t.teardown(() => fixture.close());
  const client = ownConnection(fixture.registry.address);
  t.teardown(() => client.close());
  // The connection and the server's SETTINGS first: streams opened before SETTINGS are unbounded.
  await new Promise((resolve, reject) =>
    client.listServices({}, (error) => (error ? reject(error) : resolve(undefined))),
  );
  const streams = Array.from({ length: 12 }, () => new WatchRecorder(client, { service: "any" }));
  t.teardown(() => streams.forEach((stream) => stream.cancel()));
  await eventually(() => streams.filter((s) => s.snapshots().length > 0).length === 8, {
    what: "8 snapshots",
  });
  const gauge = async () =>
    (await metrics.getSingleMetric("leasehold_registry_watch_streams")?.get())?.values[0]?.value;
  t.is(await gauge(), 8, "the registry holds 8 streams");
  const waiting = streams.filter((s) => s.snapshots().length === 0);
  t.is(waiting.length, 4);
  t.true(
    waiting.every((s) => s.ended === undefined),
    "the others wait, not refused",
  );
  streams
    .filter((s) => s.snapshots().length > 0)
    .slice(0, 2)
    .forEach((s) => s.cancel());
  await eventually(() => waiting.filter((s) => s.snapshots().length > 0).length === 2, {
    what: "two waiting streams served once two slots freed",
  });
  t.is(await gauge(), 8);
});

test("message sizes: a request over maxReceiveMessageBytes and a response over maxSendMessageBytes are RESOURCE_EXHAUSTED", async (t) => {
  const fixture = await startRegistryFixture({
    limits: { maxReceiveMessageBytes: 2048, maxSendMessageBytes: 4096 },
  });
  t.teardown(() => fixture.close());
  const api = rpc(fixture.client);
  const metadata = { blob: "x".repeat(3000) }; // valid (≤ 4 KiB of metadata), but a 3 KB message
  const big = await failure(api.register(registration({ service: "sized", instanceId: "big", metadata })));
  t.is(big.code, status.RESOURCE_EXHAUSTED);
  t.regex(big.details, /larger than max/);
  t.is((await fixture.etcd3.getAll().prefix("/leasehold/").keys()).length, 0, "nothing written");

  for (let i = 0; i < 30; i += 1) {
    await api.register(
      registration({ service: "sized", instanceId: `small-${i}`, metadata: { k: "v".repeat(100) } }),
    );
  }
  await eventually(async () => (await api.listServices({})).services[0]?.instances === 30, {
    what: "30 listed",
  });
  const tooLarge = await failure(api.getService({ service: "sized" }));
  t.is(tooLarge.code, status.RESOURCE_EXHAUSTED);
  t.regex(tooLarge.details, /larger than max/);
});

test("leasehold_registry_instances keeps maxServiceLabels (3) service labels; later services are summed under other", async (t) => {
  const metrics = new Registry();
  const fixture = await startRegistryFixture({ limits: { maxServiceLabels: 3 }, metricsRegistry: metrics });
  t.teardown(() => fixture.close());
  const api = rpc(fixture.client);
  const held = new Map<string, RegisterResponse>();
  for (const service of ["s1", "s2", "s3", "s4", "s5"]) {
    for (const id of ["a", "b"]) {
      held.set(
        `${service}/${id}`,
        await api.register(registration({ service, instanceId: id, ttlSeconds: "30" })),
      );
    }
  }
  const series = async () =>
    Object.fromEntries(
      ((await metrics.getSingleMetric("leasehold_registry_instances")?.get())?.values ?? []).map((value) => [
        String(value.labels["service"]),
        value.value,
      ]),
    );
  await eventually(async () => (await series())["other"] === 4, { what: "other = 4" });
  t.deepEqual(await series(), { s1: 2, s2: 2, s3: 2, other: 4 });
  for (const id of ["a", "b"]) {
    const response = held.get(`s5/${id}`) as RegisterResponse;
    await api.deregister({
      service: "s5",
      instanceId: id,
      leaseId: response.leaseId,
      registrationToken: response.registrationToken,
    });
  }
  await eventually(async () => (await series())["other"] === 2, { what: "other = 2" });
  t.deepEqual(await series(), { s1: 2, s2: 2, s3: 2, other: 2 });
});

test("the service label cap (unit): services past it and a service named other are summed under other; a freed slot goes to the next new service", async (t) => {
  const registry = new Registry();
  const metrics = new RegistryMetrics(registry, 2);
  const series = async () =>
    Object.fromEntries(
      ((await registry.getSingleMetric("leasehold_registry_instances")?.get())?.values ?? []).map((value) => [
        String(value.labels["service"]),
        value.value,
      ]),
    );
  metrics.setInstances("a", 1);
  metrics.setInstances("b", 1);
  metrics.setInstances("c", 3);
  metrics.setInstances("other", 2);
  t.deepEqual(await series(), { a: 1, b: 1, other: 5 });
  metrics.setInstances("a", 0);
  metrics.setInstances("d", 4);
  metrics.setInstances("c", 1);
  t.deepEqual(await series(), { b: 1, d: 4, other: 3 });
  metrics.setInstances("c", 0);
  metrics.setInstances("other", 0);
  t.deepEqual(await series(), { b: 1, d: 4 });
});
