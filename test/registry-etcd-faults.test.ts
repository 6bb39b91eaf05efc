import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import test, { type ExecutionContext } from "ava";
import { Registry } from "prom-client";
import { MembershipWatcher } from "../client/discovery/membership-watcher.js";
import { ClientMetrics } from "../client/metrics/client-metrics.js";
import type { KeepAliveResponse, RegisterResponse } from "../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./helpers/eventually.js";
import {
  WatchRecorder,
  registration,
  startFixtureFor,
  type RegistryFixture,
} from "./helpers/registry-fixture.js";

// Fault tests: etcd is frozen with SIGSTOP and thawed with SIGCONT. They assert what happened and
// in which order, never how fast; waits are generous so a loaded CI machine does not matter.

/** Freezes etcd; the teardown thaws it so the fixture can stop it. */
function freeze(t: ExecutionContext, fixture: RegistryFixture): () => void {
  const thaw = () => fixture.etcd.process.kill("SIGCONT");
  t.teardown(thaw);
  fixture.etcd.process.kill("SIGSTOP");
  return thaw;
}

const stalenessOf = (recorder: WatchRecorder) =>
  recorder.messages.map((message) =>
    message.event?.$case === "progress"
      ? message.event.value.stale
        ? "stale"
        : "fresh"
      : message.event?.$case,
  );

test("while etcd is frozen every Watch stream is told it is stale, after its last fresh progress and with nothing else in between; after SIGCONT it is fresh again", async (t) => {
  const fixture = await startFixtureFor(t);
  const streams = [
    new WatchRecorder(fixture.client, { service: "" }),
    new WatchRecorder(fixture.client, { service: "echo" }),
    new WatchRecorder(fixture.client, { service: "calculator" }),
  ];
  t.teardown(() => streams.forEach((stream) => stream.cancel()));
  const metricsRegistry = new Registry();
  const watcher = new MembershipWatcher({
    registry: fixture.client,
    service: "echo",
    metrics: new ClientMetrics(metricsRegistry),
  });
  t.teardown(async () => await watcher.close());
  const flips: boolean[] = [];
  watcher.onStaleChange((isStale) => flips.push(isStale));
  watcher.start();
  await watcher.ready();
  // Three fresh progresses each (~1 s at the fixture's 300 ms): a live etcd is never called stale.
  for (const stream of streams) {
    await stream.until(
      (s) => stalenessOf(s).filter((kind) => kind === "fresh").length >= 3,
      "fresh progress",
    );
  }
  t.false(watcher.isStale);

  const thaw = freeze(t, fixture);
  for (const stream of streams) {
    await stream.until((s) => stalenessOf(s).includes("stale"), "a stale progress", 20_000);
    const kinds = stalenessOf(stream);
    t.is(kinds[0], "snapshot");
    t.deepEqual(
      [...new Set(kinds.slice(1, kinds.indexOf("stale")))],
      ["fresh"],
      "only fresh progress before the first stale one",
    );
  }
  t.log(`echo stream: ${stalenessOf(streams[1] as WatchRecorder).join(" ")}`);
  await eventually(() => watcher.isStale, { what: "the client watcher stale", timeoutMs: 20_000 });
  const staleSeconds = async () =>
    (await metricsRegistry.getSingleMetric("leasehold_client_membership_stale_seconds")?.get())?.values[0]
      ?.value ?? 0;
  await eventually(async () => (await staleSeconds()) > 0, { what: "stale seconds rising", timeoutMs: 5000 });
  t.false(
    streams.some((stream) => stream.ended !== undefined),
    "streams stay open while stale",
  );

  thaw();
  for (const stream of streams) {
    await stream.until(
      (s) => stalenessOf(s).lastIndexOf("fresh") > stalenessOf(s).indexOf("stale"),
      "fresh again",
      30_000,
    );
  }
  await eventually(() => !watcher.isStale, { what: "the client watcher fresh", timeoutMs: 30_000 });
  t.deepEqual(flips.slice(-2), [true, false], "listeners saw the flip to stale and back");
  t.is(await staleSeconds(), 0);
});

test("KeepAlive answers UNAVAILABLE, not INTERNAL, while etcd is frozen, and works again after SIGCONT", async (t) => {
  const fixture = await startFixtureFor(t);
  const registered = await new Promise<RegisterResponse>((resolve, reject) =>
    fixture.client.register(
      registration({ service: "echo", instanceId: "ka-1", ttlSeconds: "10" }),
      (error, response) => (error ? reject(error) : resolve(response)),
    ),
  );
  const thaw = freeze(t, fixture);
  const stream = fixture.client.keepAlive();
  const ended = new Promise<ServiceError>((resolve) => stream.on("error", resolve));
  stream.on("data", () => undefined);
  stream.write({ leaseId: registered.leaseId, registrationToken: registered.registrationToken });
  const error = await ended;
  t.is(error.code, status.UNAVAILABLE, error.message);

  thaw();
  const answer = await eventually(
    async () => {
      const retry = fixture.client.keepAlive();
      try {
        return await new Promise<KeepAliveResponse>((resolve, reject) => {
          retry.once("data", resolve);
          retry.once("error", reject);
          retry.write({ leaseId: registered.leaseId, registrationToken: registered.registrationToken });
        });
      } finally {
        retry.on("error", () => undefined);
        retry.cancel();
      }
    },
    { what: "a keepalive answer after SIGCONT", timeoutMs: 30_000 },
  );
  t.is(answer.leaseId, registered.leaseId);
});

test("a Register abandoned at its deadline while etcd is frozen leaves no key, and its retry with the same registration id succeeds; every lease left is held by the key", async (t) => {
  const fixture = await startFixtureFor(t);
  const request = registration({
    service: "echo",
    instanceId: "abandoned-1",
    registrationId: "a".repeat(32),
  });
  const register = (deadlineMs: number) =>
    new Promise<RegisterResponse>((resolve, reject) =>
      fixture.client.register(
        request,
        new Metadata(),
        { deadline: Date.now() + deadlineMs },
        (error, response) => (error ? reject(error) : resolve(response)),
      ),
    );
  const thaw = freeze(t, fixture);
  const abandoned = await register(1000).then(
    () => undefined,
    (error: ServiceError) => error,
  );
  t.is(abandoned?.code, status.DEADLINE_EXCEEDED);
  thaw();

  const retried = await eventually(() => register(3000).catch(() => undefined), {
    what: "the retry",
    timeoutMs: 30_000,
  });
  // The holder keeps its lease alive, as a registrar does (every TTL/3), so only orphans expire.
  const keepAlive = fixture.client.keepAlive();
  keepAlive.on("data", () => undefined);
  keepAlive.on("error", () => undefined);
  const renew = () =>
    keepAlive.write({ leaseId: retried.leaseId, registrationToken: retried.registrationToken });
  renew();
  const renewal = setInterval(renew, 1000);
  t.teardown(() => {
    clearInterval(renewal);
    keepAlive.cancel();
  });
  const kv = await fixture.etcd3.get("/leasehold/v1/services/echo/abandoned-1").exec();
  t.is(kv.kvs[0]?.lease, retried.leaseId, "the key is held by the lease the retry returned");
  // A grant etcd received before the freeze may still be applied after it; nobody holds that
  // lease, so it either was revoked or expires by its TTL. Either way only the held one remains.
  await eventually(
    async () => {
      const { leases } = await fixture.etcd3.leaseClient.leaseLeases();
      return leases.length === 1 && String(leases[0]?.ID) === retried.leaseId;
    },
    { what: "only the held lease left", timeoutMs: 20_000 },
  );
  t.pass();
});
