import { Writable } from "node:stream";
import { status, type ServiceError } from "@grpc/grpc-js";
import test from "ava";
import { pino } from "pino";
import { Registry } from "prom-client";
import { Registrar } from "../client/registration/registrar.js";
import type { KeepAliveResponse } from "../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./helpers/eventually.js";
import { failure, registration, rpc, startFixtureFor } from "./helpers/registry-fixture.js";

/** Blocks this process's event loop (the in-process registry's too) for `ms`: a real stall. */
function stallEventLoop(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // busy: no timer or I/O runs
  }
}

/** The `grpc-retry-pushback-ms` trailer of a failed call, as a number (NaN if absent). */
const pushbackOf = (error: ServiceError) => Number(error.metadata.get("grpc-retry-pushback-ms")[0]);

test("an overloaded registry sheds a new Register with RESOURCE_EXHAUSTED and a pushback while an existing lease keeps renewing, and a Registrar registers only after the pushback", async (t) => {
  t.timeout(120_000);
  const metrics = new Registry();
  // A 150 ms event-loop delay trips it; a 400 ms stall forces it. Shedding holds ≥ 3 s after a trip.
  const fixture = await startFixtureFor(t, {
    metricsRegistry: metrics,
    overload: { maxEventLoopDelayMs: 150, pushbackMs: 3000 },
  });
  const api = rpc(fixture.client);
  // The existing instance registers before the stall (again if this loaded box tripped the guard).
  const held = await eventually(
    () => api.register(registration({ service: "overload", instanceId: "existing", ttlSeconds: "10" })),
    { timeoutMs: 60_000, intervalMs: 500, what: "the existing instance registered" },
  );
  const keepAlive = fixture.client.keepAlive();
  t.teardown(() => keepAlive.cancel());
  keepAlive.on("error", () => undefined);
  const events: string[] = [];
  const renewed = () =>
    new Promise<KeepAliveResponse>((resolve) =>
      keepAlive.once("data", (response: KeepAliveResponse) => resolve(response)),
    );

  stallEventLoop(400);
  const refused = await failure(api.register(registration({ service: "overload", instanceId: "new-1" })));
  events.push(`register ${status[refused.code]}`);
  const answer = renewed();
  keepAlive.write({ leaseId: held.leaseId, registrationToken: held.registrationToken });
  events.push(`keepalive ttl>0 ${Number((await answer).ttlSeconds) > 0}`);
  const stillRefused = await failure(
    api.register(registration({ service: "overload", instanceId: "new-2" })),
  );
  events.push(`register ${status[stillRefused.code]}`);

  // Register shed, the existing lease renewed in between, Register still shed: KeepAlives go on.
  t.deepEqual(events, ["register RESOURCE_EXHAUSTED", "keepalive ttl>0 true", "register RESOURCE_EXHAUSTED"]);
  t.regex(
    refused.details,
    /registry overloaded \(event-loop delay p99 \d+ ms, over maxEventLoopDelayMs 150\)/,
  );
  t.true(pushbackOf(refused) >= 3000, `pushback ${pushbackOf(refused)} ms`);
  t.true(pushbackOf(stillRefused) > 0);
  const limited = await metrics.getSingleMetric("leasehold_registry_limited_total")?.get();
  t.true(
    (limited?.values.find((value) => value.labels["limit"] === "overload_event_loop_delay")?.value ?? 0) >= 2,
  );

  // A Registrar told to come back later waits at least the pushback, then registers.
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: "debug" },
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    }),
  );
  const registrar = new Registrar({
    registry: fixture.client,
    instance: { service: "overload", instanceId: "via-registrar", address: "127.0.0.1:9001" },
    logger,
  });
  t.teardown(async () => await registrar.close());
  await registrar.start();
  const steps = lines.filter(
    (line) => line["msg"] === "register failed; retrying" || line["msg"] === "registered",
  );
  t.true(steps.length >= 2, JSON.stringify(steps));
  t.like(steps[0], { msg: "register failed; retrying", code: status.RESOURCE_EXHAUSTED });
  for (const retry of steps.slice(0, -1)) {
    t.is(retry["code"], status.RESOURCE_EXHAUSTED);
    t.true(Number(retry["retryInMs"]) >= Number(retry["pushbackMs"]), JSON.stringify(retry));
  }
  t.like(steps.at(-1), { msg: "registered" });
  t.is(registrar.state, "registered");
});
