import { status, type ServiceError } from "@grpc/grpc-js";
import test from "ava";
import { Registry } from "prom-client";
import type { KeepAliveResponse, RegisterResponse } from "../proto/gen/leasehold/registry/v1/registry.js";
import { failure, registration, rpc, startFixtureFor } from "./helpers/registry-fixture.js";

/** The `grpc-retry-pushback-ms` trailer of a failed call, as a number (NaN if absent). */
const pushbackOf = (error: ServiceError) => Number(error.metadata.get("grpc-retry-pushback-ms")[0]);

test("a Register beyond the projected renewal cap gets RESOURCE_EXHAUSTED with a pushback, held leases keep renewing, and one deregistering makes room", async (t) => {
  t.timeout(120_000);
  const metrics = new Registry();
  // TTL 15 s: 3/15 = 0.2 renewals/s per lease, so a cap of 1/s holds five leases. The other
  // shedding readings are set out of reach: only the cap may refuse here, even on a loaded box.
  const fixture = await startFixtureFor(t, {
    adminListen: "127.0.0.1:0",
    metricsRegistry: metrics,
    overload: {
      maxRenewalsPerSecond: 1,
      pushbackMs: 200,
      maxEventLoopDelayMs: 60_000,
      maxKeepAliveLagMs: 60_000,
    },
  });
  const api = rpc(fixture.client);
  const asked = (instanceId: string) => registration({ service: "capped", instanceId, ttlSeconds: "15" });
  const events: string[] = [];
  const held: RegisterResponse[] = [];
  for (const instanceId of ["a", "b", "c", "d", "e"]) {
    held.push(await api.register(asked(instanceId)));
    events.push(`register ${instanceId} OK`);
  }
  const refused = await failure(api.register(asked("f")));
  events.push(`register f ${status[refused.code]}`);

  const keepAlive = fixture.client.keepAlive();
  t.teardown(() => keepAlive.cancel());
  keepAlive.on("error", () => undefined);
  for (const lease of held) {
    const answer = new Promise<KeepAliveResponse>((resolve) =>
      keepAlive.once("data", (response: KeepAliveResponse) => resolve(response)),
    );
    keepAlive.write({ leaseId: lease.leaseId, registrationToken: lease.registrationToken });
    events.push(`keepalive ${lease.instance?.instanceId} ttl>0 ${Number((await answer).ttlSeconds) > 0}`);
  }
  const stillRefused = await failure(api.register(asked("f")));
  events.push(`register f ${status[stillRefused.code]}`);
  // The HTTP API refuses it too, its pushback as Retry-After (seconds).
  const overHttp = await fetch(
    `http://${fixture.registry.adminAddress}/leasehold.registry.v1.RegistryService/Register`,
    {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ service: "capped", instanceId: "g", address: "127.0.0.1:9002", ttlSeconds: 15 }),
    },
  );
  events.push(`register g over HTTP ${overHttp.status}`);

  const [first] = held;
  if (first === undefined) throw new Error("no lease held");
  await api.deregister({
    service: "capped",
    instanceId: "a",
    leaseId: first.leaseId,
    registrationToken: first.registrationToken,
  });
  events.push("deregister a");
  await api.register(asked("f"));
  events.push("register f OK");

  t.deepEqual(events, [
    "register a OK",
    "register b OK",
    "register c OK",
    "register d OK",
    "register e OK",
    "register f RESOURCE_EXHAUSTED",
    "keepalive a ttl>0 true",
    "keepalive b ttl>0 true",
    "keepalive c ttl>0 true",
    "keepalive d ttl>0 true",
    "keepalive e ttl>0 true",
    "register f RESOURCE_EXHAUSTED",
    "register g over HTTP 429",
    "deregister a",
    "register f OK",
  ]);
  t.is(
    refused.details,
    "registry at capacity (1 renewals/s projected, limit 1); add a replica or raise --max-renewals-per-second",
  );
  // Ten times the overload pushback: capacity frees only as leases leave.
  t.true(pushbackOf(refused) >= 2000, `pushback ${pushbackOf(refused)} ms`);
  t.true(
    Number(overHttp.headers.get("retry-after")) >= 2,
    `Retry-After ${overHttp.headers.get("retry-after")}`,
  );
  const limited = await metrics.getSingleMetric("leasehold_registry_limited_total")?.get();
  t.is(limited?.values.find((value) => value.labels["limit"] === "renewals_per_second")?.value, 3);
  const projected = await metrics.getSingleMetric("leasehold_registry_projected_renewals_per_second")?.get();
  t.is(Math.round((projected?.values[0]?.value ?? NaN) * 10) / 10, 1); // b, c, d, e and f: 5 × 0.2
});
