import { status } from "@grpc/grpc-js";
import test from "ava";
import { Registry } from "prom-client";
import { eventually } from "./helpers/eventually.js";
import { healthStatus, reflectedServices } from "./helpers/grpc-probes.js";
import { KeepAliveSession } from "./helpers/keep-alive-session.js";
import { WatchRecorder, registration, rpc, startRegistryFixture } from "./helpers/registry-fixture.js";
import { packageVersion } from "../client/package-version.js";

test("health, readiness, metrics and Prometheus SD follow etcd; reflection lists the services", async (t) => {
  const metricsRegistry = new Registry();
  const fixture = await startRegistryFixture({ adminListen: "127.0.0.1:0", metricsRegistry });
  t.teardown(() => fixture.close());
  const { registry, client } = fixture;
  const admin = `http://${registry.adminAddress ?? ""}`;

  t.is(await healthStatus(registry.address), "SERVING");
  t.is(await healthStatus(registry.address, "leasehold.registry.v1.RegistryService"), "SERVING");
  t.is((await fetch(`${admin}/healthz`)).status, 200);
  t.is((await fetch(`${admin}/readyz`)).status, 200);
  t.deepEqual(await reflectedServices(registry.address), [
    "grpc.health.v1.Health",
    "leasehold.registry.v1.RegistryService",
  ]);

  await rpc(client).register(
    registration({
      service: "sd",
      instanceId: "m1",
      metricsAddress: "127.0.0.1:9464",
      zone: "eu-1a",
      ttlSeconds: "30",
    }),
  );
  await rpc(client).register(registration({ service: "sd", instanceId: "m2", ttlSeconds: "30" }));
  const targets = await eventually(async () => {
    const groups = (await (await fetch(`${admin}/sd/prometheus`)).json()) as {
      targets: string[];
      labels: object;
    }[];
    return groups.length === 2 && groups;
  });
  t.deepEqual(targets, [
    { targets: ["127.0.0.1:9464"], labels: { service: "sd", instance_id: "m1", zone: "eu-1a" } },
    { targets: [registry.adminAddress], labels: { service: "leasehold-registry" } },
  ]);

  // Watch responses are written below call.write (registry/api/watch-writer.ts) and still counted.
  const watch = new WatchRecorder(client, { service: "sd" });
  await watch.until((w) => w.snapshots()[0], "snapshot");
  watch.cancel();
  await eventually(() => watch.ended !== undefined, { what: "watch ended" });
  const metrics = await (await fetch(`${admin}/metrics`)).text();
  t.regex(
    metrics,
    /^grpc_server_msg_sent_total\{grpc_type="server_stream",grpc_service="leasehold.registry.v1.RegistryService",grpc_method="Watch"\} [1-9]/m,
  );
  for (const name of [
    'leasehold_registry_instances{service="sd"} 2',
    "leasehold_registry_watch_streams 0",
    'leasehold_registry_registrations_total{result="ok"} 2',
    'leasehold_registry_etcd_request_duration_seconds_bucket{le="0.001",op="lease_grant"}',
    'grpc_server_started_total{grpc_type="unary",grpc_service="leasehold.registry.v1.RegistryService",grpc_method="Register"} 2',
    'grpc_server_handled_total{grpc_type="unary",grpc_service="leasehold.registry.v1.RegistryService",grpc_method="Register",grpc_code="OK"} 2',
    'grpc_server_msg_received_total{grpc_type="unary",grpc_service="leasehold.registry.v1.RegistryService",grpc_method="Register"} 2',
    'grpc_server_msg_sent_total{grpc_type="unary",grpc_service="leasehold.registry.v1.RegistryService",grpc_method="Register"} 2',
    'grpc_server_handling_seconds_bucket{le="0.0001",grpc_type="unary",grpc_service="leasehold.registry.v1.RegistryService",grpc_method="Register"}',
    "process_cpu_user_seconds_total",
    `leasehold_build_info{version="${packageVersion()}",component="registry",node_version="${process.version}"} 1`,
  ]) {
    t.true(metrics.includes(name), `/metrics has ${name}`);
  }

  await fixture.etcd.stop();
  await eventually(async () => (await healthStatus(registry.address)) === "NOT_SERVING", {
    what: "NOT_SERVING",
    timeoutMs: 5000,
  });
  t.is((await fetch(`${admin}/readyz`)).status, 503);
  t.is((await fetch(`${admin}/healthz`)).status, 200, "the process is still up");
});

test("close() ends open Watch and KeepAlive streams with UNAVAILABLE", async (t) => {
  const fixture = await startRegistryFixture();
  t.teardown(() => fixture.close());
  const { client } = fixture;
  const registered = await rpc(client).register(registration({ service: "closing", instanceId: "i1" }));
  const watches = [new WatchRecorder(client, { service: "closing" }), new WatchRecorder(client)];
  await eventually(() => watches.every((watch) => watch.snapshots().length === 1), { what: "snapshots" });
  const keepAlive = new KeepAliveSession(client);
  await keepAlive.renew(registered);

  const closed = fixture.registry.close();
  const keepAliveEnd = keepAlive.renew(registered).catch((error: { code: number }) => error);
  await closed;
  await fixture.registry.close(); // idempotent
  await eventually(() => watches.every((watch) => watch.ended !== undefined), { what: "streams ended" });
  for (const watch of watches) t.is(watch.ended?.code, status.UNAVAILABLE);
  t.like(await keepAliveEnd, { code: status.UNAVAILABLE });
});
