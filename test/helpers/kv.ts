/** Helpers of the kv demo's tests (test/kv-*.test.ts). */
import { credentials, Metadata } from "@grpc/grpc-js";
import { Consistency, KvServiceClient, type GetResponse } from "../../proto/gen/leasehold/demo/v1/kv.js";
import {
  InstanceStatus,
  type Instance,
  type RegistryServiceClient,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { rpc } from "./registry-fixture.js";

/** A stale Get of `key` sent to the kv instance at `address` itself (5 s deadline). */
export async function staleGet(address: string, key: string): Promise<GetResponse> {
  const client = new KvServiceClient(address, credentials.createInsecure());
  try {
    return await new Promise<GetResponse>((resolve, reject) =>
      client.get(
        { key, consistency: Consistency.CONSISTENCY_STALE },
        new Metadata(),
        { deadline: Date.now() + 5000 },
        (error, response) => (error === null ? resolve(response) : reject(error)),
      ),
    );
  } finally {
    client.close();
  }
}

/** The registry's SERVING instances of service `kv` when there are exactly `count`, else undefined. */
export async function servingKv(
  registry: RegistryServiceClient,
  count: number,
): Promise<Instance[] | undefined> {
  const instances = (await rpc(registry).getService({ service: "kv" })).instances.filter(
    (i) => i.status === InstanceStatus.INSTANCE_STATUS_SERVING,
  );
  return instances.length === count ? instances : undefined;
}
