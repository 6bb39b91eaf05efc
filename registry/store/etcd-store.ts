import { createHash } from "node:crypto";
import { Etcd3, Range, type IKeyValue } from "etcd3";
import { noop } from "cockatiel";
import type { Logger } from "pino";
import { rootCertificates } from "node:tls";
import { isTlsOn, readTlsMaterial, type TlsFiles } from "../../client/tls/tls-files.js";
import type { Instance, InstanceKey } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import { fromEtcdError, isCompactedError, isFutureRevisionError } from "./etcd-errors.js";
import {
  InstanceKeys,
  decodeInstance,
  encodeInstance,
  ownerOf,
  registrationHashOf,
} from "./instance-codec.js";
import { LeaseKeepAlive } from "./lease-keep-alive.js";
import {
  ServicesWatch,
  type InstanceList,
  type ServicesWatchListener,
  type WatchedRangeState,
} from "./services-watch.js";
import { UnavailableEpisodes } from "./unavailable-episodes.js";

/** Resolved options of {@link EtcdStore}. */
export interface EtcdStoreOptions {
  readonly endpoints: readonly string[];
  /** TLS toward etcd (CA; client cert and key); undefined = as the endpoint URLs say. */
  readonly tls?: TlsFiles | undefined;
  /** etcd user and password (etcd auth). */
  readonly auth?: { readonly username: string; readonly password: string } | undefined;
  /** Key prefix, e.g. `/leasehold/`. */
  readonly prefix: string;
  /** Deadline of every unary etcd request, in milliseconds (a caller's earlier deadline wins). */
  readonly requestTimeoutMs: number;
  /** Currency reads of the watch ({@link ServicesWatch}): pause between reads, in milliseconds. */
  readonly watchCheckIntervalMs: number;
  /** Deadline of one currency read, in milliseconds. */
  readonly watchCheckTimeoutMs: number;
  /** The watch is stale once no currency read confirmed it for this long, in milliseconds. */
  readonly watchStaleAfterMs: number;
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
  /** True when an earlier attempt of the same registration (same registration id) was adopted. */
  readonly isAdopted: boolean;
}

/** The caller of one request: when it stops waiting. */
export interface RequestScope {
  /** Aborts when the caller has gone (cancelled, or its deadline passed). */
  readonly signal?: AbortSignal | undefined;
  /** The caller's deadline, Unix ms; etcd requests never outlive it. */
  readonly deadlineMs?: number | undefined;
  /**
   * [auth] The caller's principal when auth is on (issue 7): stored as the instance's `owner` on
   * Register; Update, Deregister and adoption need the stored owner to equal it, read under the
   * same mod-revision fence as the write (a different owner → `permission_denied`).
   */
  readonly owner?: string | undefined;
}

/** Fenced updates retry this many times when the key changes between read and write. */
const UPDATE_ATTEMPTS = 3;

/** Register's read–write loop retries this many times when the key changes in between. */
const REGISTER_ATTEMPTS = 3;

/** Hex SHA-256 of a registration id: what the etcd value stores instead of the id. */
export function hashRegistrationId(registrationId: string): string {
  return createHash("sha256").update(registrationId).digest("hex");
}

/**
 * The only code that talks to etcd (etcd3 client): leases, fenced writes, reads and the watch of
 * every instance key. Every failure is a {@link RegistryError}.
 */
export class EtcdStore {
  readonly keys: InstanceKeys;
  readonly #client: Etcd3;
  readonly #options: EtcdStoreOptions;
  readonly #unavailable: UnavailableEpisodes;

  /** Creates the client; etcd3 connects lazily on the first request. */
  constructor(options: EtcdStoreOptions) {
    this.#options = options;
    this.keys = new InstanceKeys(options.prefix);
    this.#unavailable = new UnavailableEpisodes(options.logger);
    const tls = isTlsOn(options.tls) ? readTlsMaterial(options.tls) : undefined;
    this.#client = new Etcd3({
      hosts: [...options.endpoints],
      ...(tls && {
        credentials: {
          rootCertificate: tls.ca ?? Buffer.from(rootCertificates.join("\n")),
          privateKey: tls.key,
          certChain: tls.cert,
        },
      }),
      ...(options.auth && { auth: { ...options.auth } }),
      // Without pings a stalled etcd is invisible to watchers and keepalive streams. etcd refuses
      // pings more often than every 5 s (--grpc-keepalive-min-time), so 6 s leaves a margin; a
      // connection that misses a ping answer for 3 s is dropped and redialled.
      grpcOptions: { "grpc.keepalive_time_ms": 6_000, "grpc.keepalive_timeout_ms": 3_000 },
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
   *
   * With a `registrationHash` (the SHA-256 of the caller's registration id), a key that already
   * holds the same hash is the same holder's earlier attempt (abandoned at its deadline, or a
   * re-registration after a lost keepalive): it is adopted — its lease id and TTL are returned,
   * and changed fields are written under that lease (compare on the key's mod revision and lease).
   * The same holder never gets `already_exists`.
   *
   * The caller (`scope`) is checked before the transaction and after the lease grant; once it has
   * gone, a lease granted for it is revoked (never a lease and key nobody holds), and every etcd
   * request carries the caller's deadline.
   * @throws RegistryError `already_exists` when another holder's live lease holds the key,
   * `deadline_exceeded`/`cancelled` when the caller has gone, `unavailable` when etcd does not
   * answer.
   */
  async register(
    instance: Instance,
    ttlSeconds: number,
    registrationHash: string | undefined,
    scope: RequestScope = {},
  ): Promise<Registration> {
    const key = this.keys.key(instance.service, instance.instanceId);
    try {
      // Create first (lease grant + one transaction, as without a registration id); only when
      // the key is already held does the transaction's else-branch read decide: adopt or refuse.
      for (let attempt = 0; attempt < REGISTER_ATTEMPTS; attempt += 1) {
        const created = await this.#create(key, instance, ttlSeconds, registrationHash, scope);
        this.#unavailable.recovered();
        if (!("held" in created)) return created;
        const adopted = await this.#adopt(key, created.held, instance, registrationHash, scope);
        if (adopted !== "changed") return adopted;
      }
    } catch (error) {
      throw this.#fromEtcdError(error);
    }
    throw new RegistryError(
      "aborted",
      `instance ${instance.service}/${instance.instanceId} kept changing; try again`,
    );
  }

  /**
   * Adopts the key `kv` when it carries `registrationHash`.
   * @returns the registration, or `"changed"` when the key changed under us (read again).
   * @throws RegistryError `already_exists` when another holder has it.
   */
  async #adopt(
    key: string,
    kv: IKeyValue,
    instance: Instance,
    registrationHash: string | undefined,
    scope: RequestScope,
  ): Promise<Registration | "changed"> {
    const value = kv.value.toString();
    if (
      registrationHash === undefined ||
      registrationHashOf(value) !== registrationHash ||
      kv.lease === "0" ||
      (scope.owner !== undefined && ownerOf(value) !== scope.owner) // [auth] only the same principal adopts
    ) {
      throw alreadyExists(instance);
    }
    const current = decodeInstance(instance, value, kv.mod_revision);
    let ttlSeconds = Number(current?.ttlSeconds ?? "0");
    if (!(ttlSeconds > 0)) {
      // A value written before ttl_seconds was stored: ask etcd what it granted.
      const lease = await this.#time("lease_time_to_live", () =>
        this.#client.leaseClient.leaseTimeToLive({ ID: kv.lease }, this.#callOptions(scope)),
      );
      ttlSeconds = Number(lease.grantedTTL);
    }
    // The holder's own registration: keep its lease, registered_at and TTL; take the new fields.
    const next: Instance = {
      ...instance,
      registeredAt: current?.registeredAt || instance.registeredAt,
      ttlSeconds: String(ttlSeconds),
    };
    const encoded = encodeInstance(next, registrationHash, scope.owner);
    if (current !== undefined && encoded === encodeInstance(current, registrationHash, scope.owner)) {
      const revision = kv.mod_revision;
      return { leaseId: kv.lease, ttlSeconds, revision, instance: { ...next, revision }, isAdopted: true };
    }
    checkCaller(scope);
    const txn = await this.#time("txn", () =>
      this.#client
        .if(key, "Mod", "==", kv.mod_revision)
        .and(key, "Lease", "==", kv.lease)
        .then(this.#client.put(key).value(encoded).lease(kv.lease))
        .options(this.#callOptions(scope))
        .commit(),
    );
    if (!txn.succeeded) return "changed";
    const revision = txn.header.revision;
    return { leaseId: kv.lease, ttlSeconds, revision, instance: { ...next, revision }, isAdopted: true };
  }

  /**
   * Grants a lease and creates the key with it.
   * @returns the registration, or the key as it is held already (the granted lease is revoked).
   */
  async #create(
    key: string,
    instance: Instance,
    ttlSeconds: number,
    registrationHash: string | undefined,
    scope: RequestScope,
  ): Promise<Registration | { held: IKeyValue }> {
    checkCaller(scope);
    const lease = await this.#time("lease_grant", () =>
      this.#client.leaseClient.leaseGrant({ TTL: ttlSeconds }, this.#callOptions(scope)),
    );
    const grantedTtlSeconds = Number(lease.TTL);
    const stored: Instance = { ...instance, ttlSeconds: String(grantedTtlSeconds) };
    try {
      checkCaller(scope);
      const txn = await this.#time("txn", () =>
        this.#client
          .if(key, "Create", "==", 0)
          .then(
            this.#client
              .put(key)
              .value(encodeInstance(stored, registrationHash, scope.owner))
              .lease(lease.ID),
          )
          .else(this.#client.get(key))
          .options(this.#callOptions(scope))
          .commit(),
      );
      if (!txn.succeeded) {
        await this.#revoke(lease.ID);
        const held = txn.responses[0]?.response_range.kvs[0];
        if (held === undefined) throw alreadyExists(instance); // deleted meanwhile: the caller retries
        return { held };
      }
      // The caller left while the key was written: nobody will keep the lease alive, so the key
      // would block the instance until the TTL runs out. Revoke it now.
      checkCaller(scope);
      const revision = txn.header.revision;
      return {
        leaseId: lease.ID,
        ttlSeconds: grantedTtlSeconds,
        revision,
        instance: { ...stored, revision },
        isAdopted: false,
      };
    } catch (error) {
      if (!(error instanceof RegistryError && error.code === "already_exists")) {
        // Never leave a lease (and maybe a key) nobody holds; retried in the background while
        // etcd is away, else it would expire only after its TTL.
        this.#revokeEventually(lease.ID, grantedTtlSeconds);
      }
      throw error;
    }
  }
  /**
   * Rewrites an instance with `change(current)`, only while `leaseId` holds its key (compare on the
   * key's lease and mod revision in one transaction).
   * @throws RegistryError `not_found` (key gone), `permission_denied` (another lease holds it),
   * `aborted` (the key kept changing concurrently), `unavailable`; `deadline_exceeded`/`cancelled`
   * when the caller has gone before the write (etcd requests carry its deadline).
   */
  async update(
    key: InstanceKey,
    leaseId: string,
    change: (current: Instance) => Instance,
    scope: RequestScope = {},
  ): Promise<{ instance: Instance; revision: string }> {
    const etcdKey = this.keys.key(key.service, key.instanceId);
    try {
      for (let attempt = 0; attempt < UPDATE_ATTEMPTS; attempt += 1) {
        const range = await this.#time("range", () =>
          this.#client.get(etcdKey).options(this.#callOptions(scope)).exec(),
        );
        const kv = this.#checkHolder(key, range.kvs[0], leaseId);
        checkOwner(key, kv, scope); // [auth] fenced by the Mod compare below
        const current = decodeInstance(key, kv.value.toString(), kv.mod_revision);
        if (current === undefined) throw new RegistryError("internal", `malformed value under ${etcdKey}`);
        const next = change(current);
        // The holder's registration hash stays: a later Register of the same holder still adopts.
        const registrationHash = registrationHashOf(kv.value.toString());
        checkCaller(scope);
        const txn = await this.#time("txn", () =>
          this.#client
            .if(etcdKey, "Mod", "==", kv.mod_revision)
            .and(etcdKey, "Lease", "==", leaseId)
            .then(
              this.#client
                .put(etcdKey)
                .value(encodeInstance(next, registrationHash, ownerOf(kv.value.toString())))
                .lease(leaseId),
            )
            .options(this.#callOptions(scope))
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
   * @throws RegistryError `not_found`, `permission_denied`, `unavailable`. The delete carries the
   * caller's deadline but still runs for a caller that has gone (removing is what it asked for).
   */
  async deregister(key: InstanceKey, leaseId: string, scope: RequestScope = {}): Promise<string> {
    const etcdKey = this.keys.key(key.service, key.instanceId);
    try {
      // [auth] With an owner, the key is read first and the delete fenced on its mod revision.
      const owned = scope.owner === undefined ? undefined : await this.#ownedKv(key, leaseId, scope);
      const txn = await this.#time("txn", () =>
        this.#client
          .if(etcdKey, "Lease", "==", leaseId)
          .and(etcdKey, "Mod", owned === undefined ? ">" : "==", owned?.mod_revision ?? 0)
          .then(this.#client.delete().key(etcdKey))
          .else(this.#client.get(etcdKey))
          .options(this.#callOptions({ deadlineMs: scope.deadlineMs }))
          .commit(),
      );
      if (!txn.succeeded) {
        const kv = this.#checkHolder(key, txn.responses[0]?.response_range.kvs[0], leaseId);
        checkOwner(key, kv, scope);
        throw new RegistryError("aborted", `instance ${key.service}/${key.instanceId} changed; try again`);
      }
      await this.#revoke(leaseId);
      return txn.header.revision;
    } catch (error) {
      throw fromEtcdError(error);
    }
  }

  /**
   * The lease holding an instance key, as etcd sees it now (for the web console's lease age):
   * granted and remaining TTL in seconds, or `undefined` when the key or its lease is gone. Two
   * etcd reads (the key, then LeaseTimeToLive), each with the request timeout.
   * @throws RegistryError `unavailable` when etcd does not answer.
   */
  async leaseTimeToLive(
    key: InstanceKey,
  ): Promise<{ grantedTtlSeconds: number; remainingTtlSeconds: number } | undefined> {
    try {
      const range = await this.#time("range", () =>
        this.#client.get(this.keys.key(key.service, key.instanceId)).exec(),
      );
      const leaseId = range.kvs[0]?.lease ?? "0";
      if (leaseId === "0") return undefined;
      const lease = await this.#time("lease_time_to_live", () =>
        this.#client.leaseClient.leaseTimeToLive({ ID: leaseId }),
      );
      const remainingTtlSeconds = Number(lease.TTL);
      // etcd answers TTL -1 for a lease that expired or was revoked.
      if (remainingTtlSeconds < 0) return undefined;
      return { grantedTtlSeconds: Number(lease.grantedTTL), remainingTtlSeconds };
    } catch (error) {
      throw fromEtcdError(error);
    }
  }

  /**
   * [auth] The owner of the Leasehold instance a lease holds, for KeepAlive (issue 7): etcd's
   * LeaseTimeToLive with its keys, then the instance key under this prefix.
   * @returns `{ owner }` (owner undefined for a value without one), or `undefined` when the lease
   * is gone or holds no instance key of this registry.
   * @throws RegistryError `unavailable` when etcd does not answer.
   */
  async leaseOwner(leaseId: string): Promise<{ owner: string | undefined } | undefined> {
    try {
      const lease = await this.#time("lease_time_to_live", () =>
        this.#client.leaseClient.leaseTimeToLive({ ID: leaseId, keys: true }, this.#callOptions({})),
      );
      if (Number(lease.TTL) < 0) return undefined;
      for (const raw of lease.keys) {
        const key = this.keys.parse(raw.toString());
        if (key === undefined) continue;
        const range = await this.#time("range", () =>
          this.#client.get(raw.toString()).options(this.#callOptions({})).exec(),
        );
        const kv = range.kvs[0];
        if (kv !== undefined && kv.lease === leaseId) return { owner: ownerOf(kv.value.toString()) };
      }
      return undefined;
    } catch (error) {
      throw fromEtcdError(error);
    }
  }

  /** [auth] The key held by `leaseId` and owned by `scope.owner`. @throws like {@link update}. */
  async #ownedKv(key: InstanceKey, leaseId: string, scope: RequestScope): Promise<IKeyValue> {
    const range = await this.#time("range", () =>
      this.#client
        .get(this.keys.key(key.service, key.instanceId))
        .options(this.#callOptions({ deadlineMs: scope.deadlineMs }))
        .exec(),
    );
    const kv = this.#checkHolder(key, range.kvs[0], leaseId);
    checkOwner(key, kv, scope);
    return kv;
  }

  /** Opens a keepalive channel for one caller stream; see {@link LeaseKeepAlive}. */
  openKeepAlive(): LeaseKeepAlive {
    return new LeaseKeepAlive(this.#client.leaseClient, this.#options.metrics, this.#unavailable);
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
      currency: {
        read: () => this.#readWatchedRange(),
        intervalMs: this.#options.watchCheckIntervalMs,
        staleAfterMs: this.#options.watchStaleAfterMs,
      },
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
    return {
      instances: this.#decodeAll(range.kvs),
      revision: BigInt(range.header.revision),
      keyCount: Number(range.count),
    };
  }

  /**
   * One linearizable read of the watched prefix, returning only its newest key (sorted by mod
   * revision), the key count and etcd's revision: a few bytes whatever the membership size.
   */
  async #readWatchedRange(): Promise<WatchedRangeState> {
    const range = Range.prefix(this.keys.servicesPrefix);
    const response = await this.#time("watch_check", () =>
      this.#client.kv.range(
        {
          key: range.start,
          range_end: range.end,
          limit: 1,
          keys_only: true,
          sort_target: "Mod",
          sort_order: "Descend",
        },
        { deadline: Date.now() + this.#options.watchCheckTimeoutMs },
      ),
    );
    return {
      revision: BigInt(response.header.revision),
      keyCount: Number(response.count),
      maxModRevision: BigInt(response.kvs[0]?.mod_revision ?? "0"),
    };
  }

  /** Deadline options of one etcd request: the caller's deadline or the request timeout, earlier first. */
  #callOptions(scope: RequestScope): { deadline: number } {
    const timeoutAt = Date.now() + this.#options.requestTimeoutMs;
    return { deadline: Math.min(timeoutAt, scope.deadlineMs ?? timeoutAt) };
  }

  #fromEtcdError(error: unknown): RegistryError {
    const normalised = fromEtcdError(error);
    if (normalised.code === "unavailable") this.#unavailable.failed("register", error);
    return normalised;
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

  async #revoke(leaseId: string): Promise<boolean> {
    try {
      await this.#time("lease_revoke", () => this.#client.leaseClient.leaseRevoke({ ID: leaseId }));
      return true;
    } catch (error) {
      const normalised = fromEtcdError(error);
      if (normalised.code === "not_found") return true; // already gone
      if (normalised.code === "unavailable") this.#unavailable.failed("lease revoke", error);
      else this.#options.logger.warn({ err: error, leaseId }, "lease revoke failed");
      return false;
    }
  }

  /**
   * Revokes a lease nobody holds, retrying (capped backoff, 100 ms to 1 s) while etcd is away,
   * for as long as the lease could live (its TTL plus one request timeout); past that it has
   * expired anyway. Not awaited: the caller's answer does not wait for etcd to come back.
   */
  #revokeEventually(leaseId: string, ttlSeconds: number): void {
    const giveUpAt = Date.now() + ttlSeconds * 1000 + this.#options.requestTimeoutMs;
    const attempt = async (delayMs: number): Promise<void> => {
      if (await this.#revoke(leaseId)) return;
      if (Date.now() + delayMs > giveUpAt) return;
      await new Promise((resolve) => setTimeout(resolve, delayMs).unref());
      await attempt(Math.min(1000, delayMs * 2));
    };
    void attempt(100).catch(() => undefined); // #revoke never rejects; belt and braces
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

/** Throws when the caller of a request has gone: nothing more is done on its behalf. */
function checkCaller(scope: RequestScope): void {
  if (scope.signal?.aborted === true || (scope.deadlineMs !== undefined && Date.now() >= scope.deadlineMs)) {
    const isDeadline = scope.deadlineMs !== undefined && Date.now() >= scope.deadlineMs;
    throw new RegistryError(
      isDeadline ? "deadline_exceeded" : "cancelled",
      isDeadline ? "the caller's deadline passed" : "the caller cancelled",
    );
  }
}

/** [auth] Throws `permission_denied` when auth is on and `kv` is not the caller's. */
function checkOwner(key: InstanceKey, kv: IKeyValue, scope: RequestScope): void {
  if (scope.owner === undefined || ownerOf(kv.value.toString()) === scope.owner) return;
  throw new RegistryError(
    "permission_denied",
    `instance ${key.service}/${key.instanceId} was registered by another principal`,
  );
}

function alreadyExists(instance: InstanceKey): RegistryError {
  return new RegistryError(
    "already_exists",
    `instance ${instance.service}/${instance.instanceId} is held by another live lease`,
  );
}
