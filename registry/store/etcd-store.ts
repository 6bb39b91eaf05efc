import { Etcd3, type IKeyValue } from "etcd3";
import { noop } from "cockatiel";
import type { Logger } from "pino";
import type { Instance, InstanceKey } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import { fromEtcdError, isCompactedError, isFutureRevisionError } from "./etcd-errors.js";
import { InstanceKeys, decodeInstance, encodeInstance } from "./instance-codec.js";
import { LeaseKeepAlive } from "./lease-keep-alive.js";
import { ServicesWatch, type InstanceList, type ServicesWatchListener } from "./services-watch.js";

/** Resolved options of {@link EtcdStore}. */
export interface EtcdStoreOptions {
  readonly endpoints: readonly string[];
  /** Key prefix, e.g. `/leasehold/`. */
  readonly prefix: string;
  /** Deadline of every unary etcd request, in milliseconds. */
  readonly requestTimeoutMs: number;
  readonly metrics: RegistryMetrics;
  readonly logger: Logger;
}

/** The outcome of a registration. */
export interface Registration {
  /** etcd lease id, decimal (exceeds 2^53: never a JS number). */
  readonly leaseId: string;
  /** TTL etcd granted, in seconds (etcd raises TTLs below its minimum). */
  readonly ttlSeconds: number;
  /** etcd revision of the put. */
  readonly revision: string;
  /** The stored instance, `revision` set. */
  readonly instance: Instance;
}

/** Fenced updates retry this many times when the key changes between read and write. */
const UPDATE_ATTEMPTS = 3;

/**
 * The only code that talks to etcd (etcd3 client): leases, fenced writes, reads and the watch of
 * every instance key. Every failure is a {@link RegistryError}.
 */
export class EtcdStore {
  readonly keys: InstanceKeys;
  readonly #client: Etcd3;
  readonly #options: EtcdStoreOptions;

  /** Creates the client; etcd3 connects lazily on the first request. */
  constructor(options: EtcdStoreOptions) {
    this.#options = options;
    this.keys = new InstanceKeys(options.prefix);
    this.#client = new Etcd3({
      hosts: [...options.endpoints],
      // Without pings a stalled etcd is invisible to watchers; etcd refuses pings under 5 s.
      grpcOptions: { "grpc.keepalive_time_ms": 10_000, "grpc.keepalive_timeout_ms": 5_000 },
      defaultCallOptions: (context) =>
        context.isStream ? {} : { deadline: Date.now() + options.requestTimeoutMs },
      faultHandling: {
        // The default per-host breaker keeps failing calls for 5 s after etcd is back.
        host: () => noop,
        // etcd3 calls the backoff factory with no argument; cockatiel's class type does not say so.
        watchBackoff: cappedBackoff(100, 1000),
      },
    });
  }

  /**
   * Grants a lease of `ttlSeconds` and puts the instance key with it in one transaction, if the key
   * is absent.
   * @throws RegistryError `already_exists` when another lease holds the key (the new lease is
   * revoked), `unavailable` when etcd does not answer.
   */
  async register(instance: Instance, ttlSeconds: number): Promise<Registration> {
    const key = this.keys.key(instance.service, instance.instanceId);
    try {
      const lease = await this.#time("lease_grant", () =>
        this.#client.leaseClient.leaseGrant({ TTL: ttlSeconds }),
      );
      const txn = await this.#time("txn", () =>
        this.#client
          .if(key, "Create", "==", 0)
          .then(this.#client.put(key).value(encodeInstance(instance)).lease(lease.ID))
          .commit(),
      ).catch(async (error: unknown) => {
        await this.#revoke(lease.ID); // best effort: else it expires by its TTL
        throw error;
      });
      if (!txn.succeeded) {
        await this.#revoke(lease.ID);
        throw new RegistryError(
          "already_exists",
          `instance ${instance.service}/${instance.instanceId} is held by another live lease`,
        );
      }
      const revision = txn.header.revision;
      return {
        leaseId: lease.ID,
        ttlSeconds: Number(lease.TTL),
        revision,
        instance: { ...instance, revision },
      };
    } catch (error) {
      throw fromEtcdError(error);
    }
  }

  /**
   * Rewrites an instance with `change(current)`, only while `leaseId` holds its key (compare on the
   * key's lease and mod revision in one transaction).
   * @throws RegistryError `not_found` (key gone), `permission_denied` (another lease holds it),
   * `aborted` (the key kept changing concurrently), `unavailable`.
   */
  async update(
    key: InstanceKey,
    leaseId: string,
    change: (current: Instance) => Instance,
  ): Promise<{ instance: Instance; revision: string }> {
    const etcdKey = this.keys.key(key.service, key.instanceId);
    try {
      for (let attempt = 0; attempt < UPDATE_ATTEMPTS; attempt += 1) {
        const range = await this.#time("range", () => this.#client.get(etcdKey).exec());
        const kv = this.#checkHolder(key, range.kvs[0], leaseId);
        const current = decodeInstance(key, kv.value.toString(), kv.mod_revision);
        if (current === undefined) throw new RegistryError("internal", `malformed value under ${etcdKey}`);
        const next = change(current);
        const txn = await this.#time("txn", () =>
          this.#client
            .if(etcdKey, "Mod", "==", kv.mod_revision)
            .and(etcdKey, "Lease", "==", leaseId)
            .then(this.#client.put(etcdKey).value(encodeInstance(next)).lease(leaseId))
            .commit(),
        );
        if (txn.succeeded) {
          const revision = txn.header.revision;
          return { instance: { ...next, revision }, revision };
        }
      }
    } catch (error) {
      throw fromEtcdError(error);
    }
    throw new RegistryError("aborted", `instance ${key.service}/${key.instanceId} kept changing; try again`);
  }

  /**
   * Deletes the instance key only while `leaseId` holds it, then revokes the lease.
   * @returns the etcd revision of the delete.
   * @throws RegistryError `not_found`, `permission_denied`, `unavailable`.
   */
  async deregister(key: InstanceKey, leaseId: string): Promise<string> {
    const etcdKey = this.keys.key(key.service, key.instanceId);
    try {
      const txn = await this.#time("txn", () =>
        this.#client
          .if(etcdKey, "Lease", "==", leaseId)
          .then(this.#client.delete().key(etcdKey))
          .else(this.#client.get(etcdKey))
          .commit(),
      );
      if (!txn.succeeded) {
        this.#checkHolder(key, txn.responses[0]?.response_range.kvs[0], leaseId);
      }
      await this.#revoke(leaseId);
      return txn.header.revision;
    } catch (error) {
      throw fromEtcdError(error);
    }
  }

  /** Opens a keepalive channel for one caller stream; see {@link LeaseKeepAlive}. */
  openKeepAlive(): LeaseKeepAlive {
    return new LeaseKeepAlive(this.#client.leaseClient, this.#options.metrics);
  }

  /**
   * Reads the instances of `service` (or of all services) as they were at `revision`.
   * @returns `undefined` when etcd compacted that revision.
   * @throws RegistryError `out_of_range` for a revision etcd has not reached, `unavailable`.
   */
  async listAt(revision: bigint, service: string | undefined): Promise<readonly Instance[] | undefined> {
    const prefix = service === undefined ? this.keys.servicesPrefix : this.keys.servicePrefix(service);
    try {
      const range = await this.#time("range", () =>
        this.#client.getAll().prefix(prefix).revision(String(revision)).exec(),
      );
      return this.#decodeAll(range.kvs);
    } catch (error) {
      if (isCompactedError(error)) return undefined;
      if (isFutureRevisionError(error)) {
        throw new RegistryError("out_of_range", `revision ${revision} is ahead of etcd`, { cause: error });
      }
      throw fromEtcdError(error);
    }
  }

  /** Starts the one watch of every instance key; resolves after the first `synced`. */
  async watchServices(listener: ServicesWatchListener): Promise<ServicesWatch> {
    const watch = new ServicesWatch({
      client: this.#client,
      keys: this.keys,
      list: () => this.#listAll(),
      listener,
      logger: this.#options.logger,
    });
    await watch.start();
    return watch;
  }

  /**
   * True when etcd answers a linearizable read within `timeoutMs` (so it has a leader and quorum).
   */
  async probe(timeoutMs: number): Promise<boolean> {
    try {
      await this.#time("probe", () =>
        this.#client
          .get(`${this.#options.prefix}probe`)
          .options({ deadline: Date.now() + timeoutMs })
          .exec(),
      );
      return true;
    } catch {
      return false;
    }
  }

  /** Closes the etcd client (watches must be closed first). Idempotent. */
  close(): void {
    this.#client.close();
  }

  async #listAll(): Promise<InstanceList> {
    const range = await this.#time("range", () =>
      this.#client.getAll().prefix(this.keys.servicesPrefix).exec(),
    );
    return { instances: this.#decodeAll(range.kvs), revision: BigInt(range.header.revision) };
  }

  #decodeAll(kvs: readonly IKeyValue[]): Instance[] {
    const instances: Instance[] = [];
    for (const kv of kvs) {
      const key = this.keys.parse(kv.key.toString());
      const instance = key && decodeInstance(key, kv.value.toString(), kv.mod_revision);
      if (instance) instances.push(instance);
    }
    return instances;
  }

  #checkHolder(key: InstanceKey, kv: IKeyValue | undefined, leaseId: string): IKeyValue {
    if (kv === undefined) {
      throw new RegistryError("not_found", `instance ${key.service}/${key.instanceId} is not registered`);
    }
    if (kv.lease !== leaseId) {
      throw new RegistryError(
        "permission_denied",
        `lease ${leaseId} does not hold instance ${key.service}/${key.instanceId}`,
      );
    }
    return kv;
  }

  async #revoke(leaseId: string): Promise<void> {
    try {
      await this.#time("lease_revoke", () => this.#client.leaseClient.leaseRevoke({ ID: leaseId }));
    } catch (error) {
      // Already gone is fine; anything else leaves the lease to expire by its TTL.
      this.#options.logger.warn({ err: error, leaseId }, "lease revoke failed");
    }
  }

  #time<T>(op: Parameters<RegistryMetrics["timeEtcd"]>[0], request: () => Promise<T>): Promise<T> {
    return this.#options.metrics.timeEtcd(op, request);
  }
}

/** Capped exponential backoff with full jitter, in the shape etcd3 calls (`next()`, `duration`). */
function cappedBackoff(initialMs: number, maxMs: number, attempt = 0) {
  return {
    duration: Math.random() * Math.min(maxMs, initialMs * 2 ** attempt),
    next: () => cappedBackoff(initialMs, maxMs, attempt + 1),
  };
}
