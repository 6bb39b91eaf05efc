import test from "ava";
import { splitHostPort } from "../client/server/host-port.js";
import { DEMO_SERVICES } from "../services/index.js";
import { startServiceInstance, type ServiceInstance } from "../services/service-host.js";
import { eventually } from "./helpers/eventually.js";
import { rpc, startFixtureFor } from "./helpers/registry-fixture.js";

const calculator = DEMO_SERVICES["calculator"];

async function metricsAddressInRegistry(
  client: Parameters<typeof rpc>[0],
  instance: ServiceInstance,
): Promise<string> {
  const listed = await eventually(
    async () =>
      (await rpc(client).getService({ service: "calculator" })).instances.find(
        (candidate) => candidate.instanceId === instance.instanceId,
      ),
    { what: `${instance.instanceId} listed` },
  );
  return listed.metricsAddress;
}

test("serve binds /metrics on loopback by default and lists it only on the host of its address", async (t) => {
  if (calculator === undefined) throw new Error("no calculator demo service");
  const { registry, client } = await startFixtureFor(t);
  // The default gRPC listen is 0.0.0.0: the address is the machine's first external IPv4 if any.
  const instance = await startServiceInstance(calculator, {
    registry: registry.address,
    instanceId: "calc-d",
  });
  t.teardown(() => instance.shutdown());
  t.is(splitHostPort(instance.metricsAddress).host, "127.0.0.1");
  t.is(instance.isMetricsListed, splitHostPort(instance.address).host === "127.0.0.1");
  t.is((await fetch(`http://${instance.metricsAddress}/metrics`)).status, 200);
  t.is(
    await metricsAddressInRegistry(client, instance),
    instance.isMetricsListed ? instance.metricsAddress : "",
  );
});

test("serve with --metrics-listen on a wildcard lists /metrics at the advertised host", async (t) => {
  if (calculator === undefined) throw new Error("no calculator demo service");
  const { registry, client } = await startFixtureFor(t);
  const instance = await startServiceInstance(calculator, {
    registry: registry.address,
    instanceId: "calc-w",
    listen: "127.0.0.1:0",
    advertise: "calc-w.example:7200",
    metricsListen: "0.0.0.0:0",
  });
  t.teardown(() => instance.shutdown());
  const { host, port } = splitHostPort(instance.metricsAddress);
  t.is(host, "calc-w.example");
  t.true(instance.isMetricsListed);
  t.is(await metricsAddressInRegistry(client, instance), `calc-w.example:${port}`);
  t.is((await fetch(`http://127.0.0.1:${port}/metrics`)).status, 200, "bound on every interface");
});
