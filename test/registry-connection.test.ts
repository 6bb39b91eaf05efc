import { Metadata, type ServiceError } from "@grpc/grpc-js";
import test from "ava";
import { freePort } from "../cli/local-etcd.js";
import { connectRegistry, parseRegistryAddresses } from "../client/registry-connection.js";
import type {
  ListServicesResponse,
  RegistryServiceClient,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import { startRegistry } from "../registry/index.js";
import { startFixtureFor } from "./helpers/registry-fixture.js";

test("one registry address is the target as given; a list of hostnames or IPs is one Leasehold target", (t) => {
  t.is(parseRegistryAddresses("registry.internal:7100"), "registry.internal:7100");
  t.is(parseRegistryAddresses(" 127.0.0.1:7100 , "), "127.0.0.1:7100");
  t.is(parseRegistryAddresses("unix:/run/leasehold.sock"), "unix:/run/leasehold.sock", "any grpc-js target");
  t.is(
    parseRegistryAddresses("localhost:7100,localhost:7101"),
    "leasehold-registries:///localhost:7100,localhost:7101",
  );
  t.is(parseRegistryAddresses("10.0.0.1:1,[::1]:2"), "leasehold-registries:///10.0.0.1:1,[::1]:2");
});

test("a registry list with an entry that is not host:port is refused, naming it", (t) => {
  t.throws(() => parseRegistryAddresses(" , "), { instanceOf: RangeError, message: /required/ });
  t.throws(() => parseRegistryAddresses("a:1,b"), { instanceOf: RangeError, message: /"b"/ });
  t.throws(() => parseRegistryAddresses("a:1,b:99999"), { instanceOf: RangeError, message: /"b:99999"/ });
  t.throws(() => parseRegistryAddresses("a:1,http://b:2"), { instanceOf: RangeError });
});

async function listServices(client: RegistryServiceClient): Promise<ListServicesResponse> {
  return await new Promise((resolve, reject) =>
    client.listServices({}, new Metadata(), { deadline: Date.now() + 5000 }, (error, response) =>
      error === null ? resolve(response) : reject(error),
    ),
  );
}

test("hostnames in a registry list are resolved: localhost:A,localhost:B reaches both replicas, and a name that does not resolve is skipped", async (t) => {
  const { etcd, registry } = await startFixtureFor(t);
  const other = await startRegistry({ listen: "127.0.0.1:0", etcdEndpoints: [etcd.endpoint] });
  t.teardown(async () => await other.close());
  const [portA, portB] = [registry.address, other.address].map((address) => address.split(":").at(-1));

  const both = connectRegistry(`localhost:${portA},localhost:${portB}`);
  t.teardown(() => both.close());
  t.truthy((await listServices(both)).revision);

  const withBadName = connectRegistry(`no-such-registry.invalid:${portA},localhost:${portB}`);
  t.teardown(() => withBadName.close());
  t.truthy((await listServices(withBadName)).revision);
});

test("a list where no name resolves fails calls UNAVAILABLE, naming the list", async (t) => {
  const port = await freePort();
  const client = connectRegistry(`no-such-registry.invalid:${port},also-not.invalid:${port}`);
  t.teardown(() => client.close());
  const error = await t.throwsAsync<ServiceError>(listServices(client));
  t.is(error?.code, 14);
  t.regex(error?.details ?? "", /no-such-registry\.invalid/);
});
