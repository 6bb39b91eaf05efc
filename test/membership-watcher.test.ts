import { pino } from "pino";
import test from "ava";
import { EventEmitter } from "node:events";
import {
  InstanceStatus,
  type RegistryServiceClient,
  type WatchResponse,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import { Registry } from "prom-client";
import { MembershipWatcher, type MembershipChange } from "../client/discovery/membership-watcher.js";
import { ClientMetrics } from "../client/metrics/client-metrics.js";
import { connectRegistry } from "../client/registry-connection.js";
import { startRegistry } from "../registry/index.js";
import { startFixtureFor } from "./helpers/registry-fixture.js";
import { eventually } from "./helpers/eventually.js";

const instance = (instanceId: string, weight = 1) => ({
  service: "calculator",
  instanceId,
  address: `127.0.0.1:${1000 + weight}`,
  weight,
  zone: "",
  metadata: {},
  metricsAddress: "",
  ttlSeconds: "10",
  createRevision: "0",
  status: 0,
});

async function register(
  client: ReturnType<typeof connectRegistry>,
  request: ReturnType<typeof instance>,
): Promise<string> {
  return await new Promise((resolve, reject) =>
    client.register(request, (error, response) => (error ? reject(error) : resolve(response.leaseId))),
  );
}

test("a watcher keeps its membership through a registry outage, flags it stale, warns once, and resumes without a gap", async (t) => {
  const { etcd, registry, client } = await startFixtureFor(t);
  const metricsRegistry = new Registry();
  const metrics = new ClientMetrics(metricsRegistry);
  const watcherClient = connectRegistry(registry.address);
  t.teardown(() => watcherClient.close());
  const logLines: string[] = [];
  const watcher = new MembershipWatcher({
    registry: watcherClient,
    service: "calculator",
    metrics,
    backoff: { initialDelayMs: 50, maxDelayMs: 200 },
    logger: pino({ level: "debug" }, { write: (line: string) => logLines.push(line) }),
  });
  t.teardown(async () => await watcher.close());
  const changes: MembershipChange[] = [];
  watcher.subscribe((_, applied) => changes.push(...applied));
  watcher.start();
  await watcher.ready();
  await register(client, instance("calc-1", 1));
  await eventually(() => watcher.current().instances.length === 1, { what: "calc-1" });

  // The registry goes away; the membership stays usable and is flagged stale.
  await registry.close();
  await eventually(() => watcher.isStale, { what: "stale flag" });
  t.is(watcher.current().instances.length, 1, "an outage never empties the pick set");
  await eventually(
    async () => {
      const metric = await metricsRegistry
        .getSingleMetric("leasehold_client_membership_stale_seconds")
        ?.get();
      return (metric?.values[0]?.value ?? 0) > 0;
    },
    { what: "stale seconds > 0" },
  );

  // Changes happen while it is away, through another replica.
  const other = await startRegistry({ listen: "127.0.0.1:0", etcdEndpoints: [etcd.endpoint] });
  t.teardown(async () => await other.close());
  const otherClient = connectRegistry(other.address);
  t.teardown(() => otherClient.close());
  await register(otherClient, instance("calc-2", 2));
  await register(otherClient, instance("calc-3", 3));

  // A replica comes back on the same address: the watcher resumes from its last revision.
  const [, port] = registry.address.split(":");
  const back = await startRegistry({ listen: `127.0.0.1:${port}`, etcdEndpoints: [etcd.endpoint] });
  t.teardown(async () => await back.close());
  await eventually(() => watcher.current().instances.length === 3, { timeoutMs: 15_000, what: "resume" });
  t.false(watcher.isStale);
  t.deepEqual(
    changes.map((change) =>
      change.type === "snapshot" ? "snapshot" : `${change.type} ${change.instance.instanceId}`,
    ),
    ["snapshot", "added calc-1", "added calc-2", "added calc-3"],
    "every change exactly once, in order",
  );
  const logged = logLines.map((line) => JSON.parse(line) as { level: number; msg: string });
  const stillDown = logged.filter((line) => line.msg === "membership stream still down").length;
  t.true(stillDown >= 1, "the outage spanned several reconnect attempts");
  t.deepEqual(
    logged
      .filter((line) => line.level >= 30 && line.msg.startsWith("membership stream"))
      .map((line) => line.msg),
    ["membership stream broke; resuming", "membership stream resumed"],
    "one warning for the outage, one line when it is over",
  );
});

/** A registry whose one Watch stream the test drives by hand. */
function fakeRegistry() {
  const stream: EventEmitter & { cancel(): void } = Object.assign(new EventEmitter(), {
    // grpc-js ends a cancelled call with an error (CANCELLED); the watcher's loop waits for it.
    cancel: () => void stream.emit("error", new Error("1 CANCELLED: Cancelled on client")),
  });
  const registry = { watch: () => stream } as unknown as RegistryServiceClient;
  return { registry, send: (message: WatchResponse) => stream.emit("data", message) };
}

test("a stale progress flips isStale and tells both kinds of listener; the gauge counts from the last fresh message; deltas observe their propagation lag", async (t) => {
  let nowMs = 1_000_000;
  const { registry, send } = fakeRegistry();
  const metricsRegistry = new Registry();
  const watcher = new MembershipWatcher({
    registry,
    service: "calculator",
    metrics: new ClientMetrics(metricsRegistry),
    now: () => nowMs,
  });
  t.teardown(async () => await watcher.close());
  const flips: boolean[] = [];
  const notified: number[] = [];
  watcher.onStaleChange((isStale) => flips.push(isStale));
  watcher.subscribe((_, changes) => notified.push(changes.length));
  watcher.start();
  send({
    event: {
      $case: "snapshot",
      value: { instances: [], revision: "5", reset: false, observedAtUnixMs: "0", hasMore: false },
    },
  });
  await watcher.ready();
  t.false(watcher.isStale);
  const upserted = { ...instance("calc-1"), revision: "6", registeredAt: "", ttlSeconds: "10" };
  send({
    event: {
      $case: "delta",
      value: { upserted: [upserted], removed: [], revision: "6", observedAtUnixMs: String(nowMs - 3) },
    },
  });
  nowMs += 1000;
  send({ event: { $case: "progress", value: { revision: "6", stale: false } } });
  nowMs += 2000;
  send({ event: { $case: "progress", value: { revision: "6", stale: true } } });
  t.true(watcher.isStale);
  t.is(watcher.current().instances.length, 1, "the membership stays in use");
  nowMs += 2500;
  send({ event: { $case: "progress", value: { revision: "6", stale: true } } });
  const metrics = await metricsRegistry.metrics();
  t.regex(
    metrics,
    /^leasehold_client_membership_stale_seconds\{service="calculator"\} 4\.5$/m,
    "from the last fresh progress",
  );
  t.regex(
    metrics,
    /^leasehold_client_membership_propagation_seconds_bucket\{le="0\.0025",service="calculator"\} 0$/m,
  );
  t.regex(
    metrics,
    /^leasehold_client_membership_propagation_seconds_bucket\{le="0\.005",service="calculator"\} 1$/m,
  );
  send({ event: { $case: "progress", value: { revision: "7", stale: false } } });
  t.false(watcher.isStale);
  t.deepEqual(flips, [false, true, false], "connected, stale, fresh again");
  // snapshot, stale flip to fresh (on connect), delta, flip to stale, flip to fresh
  t.deepEqual(notified, [1, 0, 1, 0, 0]);
  t.regex(
    await metricsRegistry.metrics(),
    /^leasehold_client_membership_stale_seconds\{service="calculator"\} 0$/m,
  );
});

test("the weight gauge follows membership: 0 while DRAINING, series removed when an instance leaves or a reset drops it", async (t) => {
  const { registry, send } = fakeRegistry();
  const metricsRegistry = new Registry();
  const watcher = new MembershipWatcher({
    registry,
    service: "calculator",
    metrics: new ClientMetrics(metricsRegistry),
  });
  t.teardown(async () => await watcher.close());
  watcher.start();
  const listed = (id: string, weight: number, revision: string, status = 0) => ({
    ...instance(id, weight),
    status,
    revision,
    registeredAt: "",
  });
  const weights = async (): Promise<string[]> =>
    (await metricsRegistry.metrics())
      .split("\n")
      .filter((line) => line.startsWith("leasehold_client_instance_weight{"))
      .sort();
  send({
    event: {
      $case: "snapshot",
      value: {
        instances: [listed("calc-1", 1, "4"), listed("calc-2", 2, "5")],
        revision: "5",
        reset: false,
        hasMore: false,
        observedAtUnixMs: "0",
      },
    },
  });
  await watcher.ready();
  t.deepEqual(await weights(), [
    'leasehold_client_instance_weight{service="calculator",instance_id="calc-1"} 1',
    'leasehold_client_instance_weight{service="calculator",instance_id="calc-2"} 2',
  ]);
  send({
    event: {
      $case: "delta",
      value: {
        upserted: [
          listed("calc-2", 2, "6", InstanceStatus.INSTANCE_STATUS_DRAINING),
          listed("calc-3", 3, "6"),
        ],
        removed: [{ service: "calculator", instanceId: "calc-1" }],
        revision: "6",
        observedAtUnixMs: "0",
      },
    },
  });
  t.deepEqual(await weights(), [
    'leasehold_client_instance_weight{service="calculator",instance_id="calc-2"} 0',
    'leasehold_client_instance_weight{service="calculator",instance_id="calc-3"} 3',
  ]);
  send({
    event: {
      $case: "snapshot",
      value: {
        instances: [listed("calc-3", 3, "9")],
        revision: "9",
        reset: true,
        observedAtUnixMs: "0",
        hasMore: false,
      },
    },
  });
  t.deepEqual(await weights(), [
    'leasehold_client_instance_weight{service="calculator",instance_id="calc-3"} 3',
  ]);
});

test("a split snapshot is applied once its last part arrives, as one snapshot of every part's instances", async (t) => {
  const { registry, send } = fakeRegistry();
  const watcher = new MembershipWatcher({ registry, service: "calculator" });
  t.teardown(async () => await watcher.close());
  const changes: MembershipChange[] = [];
  watcher.subscribe((_, applied) => changes.push(...applied));
  watcher.start();
  const part = (ids: string[], hasMore: boolean): WatchResponse => ({
    event: {
      $case: "snapshot",
      value: {
        instances: ids.map((id) => ({
          ...instance(id, 1),
          revision: "4",
          registeredAt: "",
          ttlSeconds: "10",
        })),
        revision: "7",
        reset: false,
        observedAtUnixMs: "0",
        hasMore,
      },
    },
  });
  send(part(["calc-1", "calc-2"], true));
  send(part(["calc-3"], true));
  t.false(watcher.hasSnapshot, "no partial membership is applied");
  t.deepEqual(changes, []);
  send(part(["calc-4"], false));
  await watcher.ready();
  t.deepEqual(
    watcher.current().instances.map((i) => i.instanceId),
    ["calc-1", "calc-2", "calc-3", "calc-4"],
  );
  t.is(watcher.current().revision, "7");
  t.deepEqual(
    changes.map((change) => change.type),
    ["snapshot"],
  );
});
