import type { ExecutionContext } from "ava";
import { startLocalEtcd, type LocalEtcd } from "../../cli/local-etcd.js";
import { connectRegistry } from "../../client/registry-connection.js";
import type { RegistryServiceClient } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { startRegistry, type RegistryOptions, type RunningRegistry } from "../../registry/index.js";

/** A real etcd plus an in-process registry on free loopback ports, closed by the test's teardown. */
export interface TestCluster {
  readonly etcd: LocalEtcd;
  readonly registry: RunningRegistry;
  /** A registry client (closed at teardown). */
  readonly client: RegistryServiceClient;
}

export async function startCluster(
  t: ExecutionContext,
  options: Partial<RegistryOptions> = {},
): Promise<TestCluster> {
  const etcd = await startLocalEtcd();
  t.teardown(async () => await etcd.stop());
  const registry = await startRegistry({
    listen: "127.0.0.1:0",
    etcdEndpoints: [etcd.endpoint],
    progressIntervalMs: 500,
    ...options,
  });
  t.teardown(async () => await registry.close());
  const client = connectRegistry(registry.address);
  t.teardown(() => client.close());
  return { etcd, registry, client };
}
