import type { Etcd3 } from "etcd3";
import { InstanceStatus, type Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { InstanceKeys, encodeInstance } from "../../registry/store/instance-codec.js";

/** etcd's default `--max-txn-ops`. */
const DEFAULT_TXN_OPS = 128;

/** Instance id number `index` as a fixed-width id, so ids sort as numbers do: `i-000042`. */
export function bulkId(index: number): string {
  return `i-${String(index).padStart(6, "0")}`;
}

/**
 * An instance of `service` with `metadataBytes` of metadata (16 keys of equal-length values;
 * 4096 is DESIGN §2's maximum).
 */
export function bulkInstance(service: string, index: number, metadataBytes: number): Instance {
  const metadata: Record<string, string> = {};
  const keys = 16;
  const keyLength = 4; // "k-00"
  const valueLength = Math.max(0, Math.floor(metadataBytes / keys) - keyLength);
  for (let key = 0; key < keys; key += 1) {
    metadata[`k-${String(key).padStart(2, "0")}`] = String.fromCharCode(97 + ((index + key) % 26)).repeat(
      valueLength,
    );
  }
  return {
    service,
    instanceId: bulkId(index),
    address: `10.${(index >> 16) & 255}.${(index >> 8) & 255}.${index & 255}:9000`,
    weight: 1,
    zone: "z1",
    metadata,
    status: InstanceStatus.INSTANCE_STATUS_SERVING,
    registeredAt: "2026-12-07T00:00:00.000Z",
    metricsAddress: "",
    revision: "0",
    ttlSeconds: "10",
    createRevision: "0",
  };
}

/**
 * Writes `count` instances of `service` straight into etcd with the registry's own key and value
 * encoding (no leases: they stay until deleted), in transactions of `opsPerTxn` puts (default 128,
 * etcd's default `--max-txn-ops`), `parallel` (default 4) at a time.
 * Much faster than registering them; for tests of large memberships only.
 */
export async function putBulkInstances(
  etcd3: Etcd3,
  options: {
    service: string;
    count: number;
    metadataBytes: number;
    prefix?: string;
    parallel?: number;
    opsPerTxn?: number;
  },
): Promise<void> {
  const keys = new InstanceKeys(options.prefix ?? "/leasehold/");
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < options.count) {
      const first = next;
      next = Math.min(options.count, next + (options.opsPerTxn ?? DEFAULT_TXN_OPS));
      const success = [];
      for (let index = first; index < next; index += 1) {
        const instance = bulkInstance(options.service, index, options.metadataBytes);
        success.push({
          request_put: {
            key: Buffer.from(keys.key(instance.service, instance.instanceId)),
            value: Buffer.from(encodeInstance(instance)),
          },
        });
      }
      await etcd3.kv.txn({ compare: [], success, failure: [] });
    }
  };
  await Promise.all(Array.from({ length: options.parallel ?? 4 }, worker));
}
