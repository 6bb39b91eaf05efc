import { InstanceStatus, type Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";

/**
 * The kv primary of a membership: the SERVING instance with the oldest registration, i.e. the
 * lowest `createRevision` of its instance key (etcd's leader-election recipe: the oldest key wins;
 * no second consensus). Ties cannot happen in etcd (one key per revision); `instanceId` breaks them
 * anyway so every caller agrees. Instances without a create revision ("0": a registry older than
 * the field) are never chosen.
 * @returns `undefined` when no instance qualifies.
 */
export function selectPrimary(instances: readonly Instance[]): Instance | undefined {
  let primary: Instance | undefined;
  for (const instance of instances) {
    if (instance.status !== InstanceStatus.INSTANCE_STATUS_SERVING || instance.createRevision === "0")
      continue;
    if (primary === undefined || isOlder(instance, primary)) primary = instance;
  }
  return primary;
}

/** True when `a` was registered before `b` (lower create revision; then lower instance id). */
export function isOlder(a: Instance, b: Instance): boolean {
  const ra = BigInt(a.createRevision);
  const rb = BigInt(b.createRevision);
  return ra !== rb ? ra < rb : a.instanceId < b.instanceId;
}

/**
 * True when `self` may start a fresh (empty) store as primary: nobody is SERVING and `self` is the
 * oldest listed instance, so among instances that start together exactly one does.
 */
export function mayStartFresh(instances: readonly Instance[], selfId: string): boolean {
  const self = instances.find((instance) => instance.instanceId === selfId);
  if (self === undefined || self.createRevision === "0") return false;
  return instances.every(
    (other) =>
      other.instanceId === selfId ||
      (other.status !== InstanceStatus.INSTANCE_STATUS_SERVING && isOlder(self, other)),
  );
}

/**
 * The instances other than the primary `selfId` that are SERVING in `instances` but not in the
 * primary's sync set: a write is acknowledged only when there are none, so every SERVING instance
 * (each a possible next primary) holds every acknowledged write. One dropped from the sync set
 * blocks acknowledgements until it shows DRAINING or leaves; after a takeover, the old primary's
 * other backups block them until they turn DRAINING to catch up from the new one.
 */
export function uncoveredBackups(
  instances: readonly Instance[],
  selfId: string,
  syncSet: { has(instanceId: string): boolean },
): Instance[] {
  return instances.filter(
    (instance) =>
      instance.instanceId !== selfId &&
      instance.status === InstanceStatus.INSTANCE_STATUS_SERVING &&
      !syncSet.has(instance.instanceId),
  );
}
