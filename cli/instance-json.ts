import { InstanceStatus, type Instance } from "../proto/gen/leasehold/registry/v1/registry.js";

/** `SERVING` / `DRAINING`, as in etcd's JSON values. */
export function statusName(status: InstanceStatus): string {
  return status === InstanceStatus.INSTANCE_STATUS_DRAINING ? "DRAINING" : "SERVING";
}

/** An instance as the CLI prints it in JSON: the field names of the etcd value (DESIGN §2). */
export interface InstanceJson {
  service: string;
  instance_id: string;
  address: string;
  weight: number;
  zone: string;
  status: string;
  metadata: Record<string, string>;
  registered_at: string;
  metrics_address: string;
}

export function instanceJson(instance: Instance): InstanceJson {
  return {
    service: instance.service,
    instance_id: instance.instanceId,
    address: instance.address,
    weight: instance.weight,
    zone: instance.zone,
    status: statusName(instance.status),
    metadata: { ...instance.metadata },
    registered_at: instance.registeredAt,
    metrics_address: instance.metricsAddress,
  };
}
