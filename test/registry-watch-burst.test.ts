import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import test from "ava";
import { Registry } from "prom-client";
import { RegistryServiceClient, type WatchResponse } from "../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./helpers/eventually.js";
import { startFixtureFor } from "./helpers/registry-fixture.js";

/** Streams that watch every service: each gets all 10,000 changes... */
const ALL_SERVICE_STREAMS = 20;
/** ...and streams that watch one of the burst's services, as most callers do. */
const ONE_SERVICE_STREAMS = 280;
const READING_STREAMS = ALL_SERVICE_STREAMS + ONE_SERVICE_STREAMS;
const CHANNELS = 4;
const REGISTRATIONS = 10_000;
/** The burst spreads over this many services (200 instances each). */
const SERVICES = 50;
/** Concurrent etcd puts: enough for etcd to batch them. */
const WRITE_CONCURRENCY = 500;

/** A Watch stream that counts what it applied: each burst instance is upserted exactly once. */
class CountingStream {
  upserted = 0;
  lastRevision = 0n;
  ended: ServiceError | null | undefined;
  readonly call;

  constructor(client: RegistryServiceClient, service: string) {
    this.call = client.watch({ service, startRevision: "0" });
    this.call.on("data", (message: WatchResponse) => {
      const event = message.event;
      if (event === undefined) return;
      if (event.$case === "snapshot") this.upserted += event.value.instances.length;
      if (event.$case === "delta") this.upserted += event.value.upserted.length;
      const revision = BigInt(event.value.revision);
      if (revision > this.lastRevision) this.lastRevision = revision;
    });
    this.call.on("error", (error: ServiceError) => (this.ended = error));
    this.call.on("end", () => (this.ended ??= null));
  }
}

test("a burst of 10,000 registrations (one etcd revision each) ends no Watch stream that keeps reading: only the paused one is ended, and the stream gauge follows the live count", async (t) => {
  t.timeout(240_000); // a loaded 2-core machine; the assertions are about outcomes, not speed
  const metricsRegistry = new Registry();
  // maxWatchBehindMs is lowered from 30 s so the paused stream is ended within the test; the
  // reading streams are held to the same bound. With clients, registry and writer in one process
  // on 2 busy cores, a reading stream can wait seconds for its next drain, hence the margin.
  const fixture = await startFixtureFor(t, { metricsRegistry, maxWatchBehindMs: 10_000 });
  const clients = Array.from(
    { length: CHANNELS + 1 },
    (_, index) =>
      new RegistryServiceClient(fixture.registry.address, credentials.createInsecure(), {
        "grpc.use_local_subchannel_pool": 1, // a connection of its own
        "leasehold.test.channel": index,
      }),
  );
  t.teardown(() => clients.forEach((client) => client.close()));
  const reading = Array.from(
    { length: READING_STREAMS },
    (_, index) =>
      new CountingStream(
        clients[index % CHANNELS] as RegistryServiceClient,
        index < ALL_SERVICE_STREAMS ? "" : `burst-${index % SERVICES}`,
      ),
  );
  const paused = new CountingStream(clients[CHANNELS] as RegistryServiceClient, "");
  t.teardown(() => [...reading, paused].forEach((stream) => stream.call.cancel()));
  const gauge = async () =>
    (await metricsRegistry.getSingleMetric("leasehold_registry_watch_streams")?.get())?.values[0]?.value;
  await eventually(async () => (await gauge()) === READING_STREAMS + 1, { what: "every stream open" });
  await eventually(() => paused.lastRevision > 0n, { what: "the paused stream's snapshot" });
  paused.call.pause();

  // Written straight to etcd as Register writes them (one put per instance, each its own
  // revision), under one lease: the subject here is the fan-out, not Register's throughput.
  const lease = fixture.etcd3.lease(300, { autoKeepAlive: false });
  const leaseId = await lease.grant();
  const startedAt = Date.now();
  let next = 0;
  let lastRevision = 0n;
  await Promise.all(
    Array.from({ length: WRITE_CONCURRENCY }, async () => {
      while (next < REGISTRATIONS) {
        const index = next++;
        const service = `burst-${index % SERVICES}`;
        const response = await fixture.etcd3
          .put(`/leasehold/v1/services/${service}/b-${index}`)
          .value(storedInstance(service, `b-${index}`))
          .lease(leaseId)
          .exec();
        if (BigInt(response.header.revision) > lastRevision) lastRevision = BigInt(response.header.revision);
      }
    }),
  );
  const writtenMs = Date.now() - startedAt;

  await eventually(() => reading.every((stream) => stream.lastRevision >= lastRevision), {
    what: "every reading stream at the last write's revision",
    timeoutMs: 120_000,
  });
  t.log(
    `${REGISTRATIONS} registrations written in ${writtenMs} ms; ${READING_STREAMS} streams caught up at ${Date.now() - startedAt} ms`,
  );
  t.deepEqual(
    reading.flatMap((stream) => (stream.ended === undefined ? [] : [stream.ended?.message])),
    [],
    "no reading stream was ended",
  );
  t.deepEqual(
    [
      ...new Set(
        reading.map((stream, index) =>
          index < ALL_SERVICE_STREAMS ? stream.upserted : stream.upserted * SERVICES,
        ),
      ),
    ],
    [REGISTRATIONS],
    "each reading stream received every registration it watches exactly once (coalesced or not)",
  );

  // The registry ends the paused stream: the gauge drops to the live count. A paused grpc-js
  // stream reports its status only once its buffered messages are read, so read them now.
  await eventually(async () => (await gauge()) === READING_STREAMS, {
    what: "the paused stream removed from the gauge",
    timeoutMs: 60_000,
  });
  t.true(
    reading.every((stream) => stream.ended === undefined),
    "the one removed was the paused one",
  );
  paused.call.resume();
  await eventually(() => paused.ended !== undefined, { what: "the paused stream's status" });
  t.is(paused.ended?.code, status.RESOURCE_EXHAUSTED);
  t.regex(paused.ended?.details ?? "", /did not read for \d+ ms; resume with start_revision/);

  for (const stream of reading) stream.call.cancel();
  await eventually(async () => (await gauge()) === 0, { what: "the gauge back to 0 after cancels" });
  await lease.revoke();
});

/** The etcd value Register writes (see registry/store/instance-codec.ts). */
function storedInstance(service: string, instanceId: string): string {
  return JSON.stringify({
    service,
    instance_id: instanceId,
    address: "127.0.0.1:9000",
    weight: 1,
    zone: "z1",
    metadata: {},
    status: "SERVING",
    registered_at: "2026-01-01T00:00:00.000Z",
    metrics_address: "",
    ttl_seconds: 300,
  });
}
