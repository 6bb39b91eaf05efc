import {
  InstanceStatus,
  type Instance,
  type InstanceKey,
} from "../../proto/gen/leasehold/registry/v1/registry.js";

/** Keys of one registry namespace: `${prefix}v1/services/{service}/{instance_id}` (DESIGN §2). */
export class InstanceKeys {
  /** Every instance key starts with this, e.g. `/leasehold/v1/services/`. */
  readonly servicesPrefix: string;

  constructor(prefix: string) {
    this.servicesPrefix = `${prefix}v1/services/`;
  }

  /** Prefix of the keys of one service, e.g. `/leasehold/v1/services/echo/`. */
  servicePrefix(service: string): string {
    return `${this.servicesPrefix}${service}/`;
  }

  key(service: string, instanceId: string): string {
    return `${this.servicesPrefix}${service}/${instanceId}`;
  }

  /** The instance a key names, or `undefined` for a key that is not an instance key. */
  parse(key: string): InstanceKey | undefined {
    if (!key.startsWith(this.servicesPrefix)) return undefined;
    const parts = key.slice(this.servicesPrefix.length).split("/");
    const [service, instanceId] = parts;
    if (parts.length !== 2 || !service || !instanceId) return undefined;
    return { service, instanceId };
  }
}

/** The JSON value stored under an instance key, as `etcdctl get` shows it (DESIGN §2). */
interface StoredInstance {
  service: string;
  instance_id: string;
  address: string;
  weight: number;
  zone: string;
  metadata: Record<string, string>;
  status: "SERVING" | "DRAINING";
  registered_at: string;
  metrics_address: string;
  /** Granted lease TTL in seconds (absent in values written before this field). */
  ttl_seconds: number;
  /**
   * Hex SHA-256 of the holder's registration id (RegisterRequest.registration_id), absent for a
   * legacy registration. Lets a retry of the same registration adopt the key; the id itself is
   * never stored.
   */
  registration_hash?: string;
  /** [auth] The principal that registered the instance (issue 7), absent when auth is off. */
  owner?: string;
  /**
   * Hex SHA-256 of the registration token Register returned (registry/registration-token.ts): the
   * proof UpdateInstance, Deregister and KeepAlive must bring. Absent in values written before
   * tokens (nothing matches them: their holder registers again).
   */
  token_hash?: string;
}

/** Who owns an instance value: hashes only, never the secrets themselves. */
export interface InstanceOwner {
  /** Hex SHA-256 of the holder's registration id, or `undefined` for a legacy registration. */
  readonly registrationHash?: string | undefined;
  /** Hex SHA-256 of the registration token, or `undefined` in values written before tokens. */
  readonly tokenHash?: string | undefined;
  /** [auth] The principal that registered the instance (issue 7), or `undefined` with auth off. */
  readonly principal?: string | undefined;
}

/**
 * Encodes an instance as its etcd value; `revision` is not stored (it is the key's mod revision).
 * @param owner the hashes that prove ownership, stored beside the instance.
 */
export function encodeInstance(instance: Instance, owner: InstanceOwner = {}): string {
  const { registrationHash, tokenHash, principal } = owner;
  const stored: StoredInstance = {
    service: instance.service,
    instance_id: instance.instanceId,
    address: instance.address,
    weight: instance.weight,
    zone: instance.zone,
    metadata: instance.metadata,
    status: instance.status === InstanceStatus.INSTANCE_STATUS_DRAINING ? "DRAINING" : "SERVING",
    registered_at: instance.registeredAt,
    metrics_address: instance.metricsAddress,
    ttl_seconds: Number(instance.ttlSeconds),
  };
  if (registrationHash !== undefined) stored.registration_hash = registrationHash;
  if (tokenHash !== undefined) stored.token_hash = tokenHash;
  if (principal !== undefined) stored.owner = principal;
  return JSON.stringify(stored);
}

/**
 * Decodes an etcd value written by {@link encodeInstance}. Returns `undefined` for a value that is
 * not a well-formed instance of the key it is stored under (someone else wrote it).
 */
export function decodeInstance(
  key: InstanceKey,
  value: string,
  revisions: { readonly mod_revision: string; readonly create_revision: string },
): Instance | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null) return undefined;
  const stored = parsed as Partial<Record<keyof StoredInstance, unknown>>;
  if (stored.service !== key.service || stored.instance_id !== key.instanceId) return undefined;
  if (typeof stored.address !== "string" || !Number.isInteger(stored.weight)) return undefined;
  if (stored.status !== "SERVING" && stored.status !== "DRAINING") return undefined;
  const metadata = isStringRecord(stored.metadata) ? stored.metadata : {};
  return {
    service: key.service,
    instanceId: key.instanceId,
    address: stored.address,
    weight: stored.weight as number,
    zone: typeof stored.zone === "string" ? stored.zone : "",
    metadata,
    status:
      stored.status === "DRAINING"
        ? InstanceStatus.INSTANCE_STATUS_DRAINING
        : InstanceStatus.INSTANCE_STATUS_SERVING,
    registeredAt: typeof stored.registered_at === "string" ? stored.registered_at : "",
    metricsAddress: typeof stored.metrics_address === "string" ? stored.metrics_address : "",
    revision: revisions.mod_revision,
    ttlSeconds:
      Number.isSafeInteger(stored.ttl_seconds) && (stored.ttl_seconds as number) > 0
        ? String(stored.ttl_seconds)
        : "0",
    createRevision: revisions.create_revision,
  };
}

/** The owner hashes of an etcd value written by {@link encodeInstance} (empty for anything else). */
export function ownerOf(value: string): InstanceOwner {
  try {
    const parsed: unknown = JSON.parse(value);
    if (typeof parsed !== "object" || parsed === null) return {};
    const {
      registration_hash: registrationHash,
      token_hash: tokenHash,
      owner: principal,
    } = parsed as Record<string, unknown>;
    return {
      registrationHash: typeof registrationHash === "string" ? registrationHash : undefined,
      tokenHash: typeof tokenHash === "string" ? tokenHash : undefined,
      principal: typeof principal === "string" ? principal : undefined,
    };
  } catch {
    return {};
  }
}

function isStringRecord(value: unknown): value is Record<string, string> {
  return (
    typeof value === "object" &&
    value !== null &&
    !Array.isArray(value) &&
    Object.values(value).every((entry) => typeof entry === "string")
  );
}

const instanceSizes = new WeakMap<Instance, number>();

/**
 * An upper bound of an instance's protobuf encoding in bytes (UTF-8 lengths of its strings plus
 * generous per-field and per-metadata-entry overhead), computed once per instance object: cheaper
 * than encoding, and never below the real size, so budgets built on it hold.
 */
export function instanceBytes(instance: Instance): number {
  let bytes = instanceSizes.get(instance);
  if (bytes === undefined) {
    bytes =
      96 +
      Buffer.byteLength(instance.service) +
      Buffer.byteLength(instance.instanceId) +
      Buffer.byteLength(instance.address) +
      Buffer.byteLength(instance.zone) +
      Buffer.byteLength(instance.registeredAt) +
      Buffer.byteLength(instance.metricsAddress);
    for (const [key, value] of Object.entries(instance.metadata)) {
      bytes += 12 + Buffer.byteLength(key) + Buffer.byteLength(value);
    }
    instanceSizes.set(instance, bytes);
  }
  return bytes;
}
