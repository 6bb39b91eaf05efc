import { hash } from "node:crypto";
import { Etcd3, Range, type IKeyValue, type IRangeRequest, type IRangeResponse } from "etcd3";
import { noop } from "cockatiel";
import type { Logger } from "pino";
import { rootCertificates } from "node:tls";
import { isTlsOn, readTlsMaterial, type TlsFiles } from "../../client/tls/tls-files.js";
import type { Instance, InstanceKey } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import { fromEtcdError, isCompactedError, isFutureRevisionError } from "./etcd-errors.js";
import { isTokenHashMatch } from "../registration-token.js";
import {
  InstanceKeys,
  decodeInstance,
  encodeInstance,
  instanceBytes,
  ownerOf,
  type InstanceOwner,
} from "./instance-codec.js";
import { KeyCreates } from "./key-creates.js";
import { RENEWAL_TIMEOUT_MS, SharedLeaseKeepAlive, type LeaseKeepAlive } from "./lease-keep-alive.js";
import { rangeInPages } from "./paged-range.js";
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

/** What a write to an instance must bring: the lease that holds it and its token's hash. */
export interface InstanceFence {
  /** etcd lease id, decimal. */
  readonly leaseId: string;
  /** Hex SHA-256 of the registration token the caller sent. */
  readonly tokenHash: string;
}

/** The caller of one request: when it stops waiting. */
export interface RequestScope {
  /** Aborts when the caller has gone (cancelled, or its deadline passed). */
  readonly signal?: AbortSignal | undefined;
  /** True once the caller has gone: a cheaper alternative to `signal` (no AbortController per call). */
  readonly isCancelled?: (() => boolean) | undefined;
  /** The caller's deadline, Unix ms; etcd requests never outlive it. */
  readonly deadlineMs?: number | undefined;
  /**
   * [auth] The caller's principal when auth is on (issue 7): stored as the instance's `owner` on
   * Register; Update, Deregister and adoption need the stored owner to equal it, read under the
   * same mod-revision fence as the write (a different owner → `permission_denied`).
   */
  readonly owner?: string | undefined;
}

/** Fenced updates and deletes retry this many times when the key changes between read and write. */
const UPDATE_ATTEMPTS = 3;

/**
 * Largest message the registry's etcd client accepts, in bytes (64 MiB; grpc-js defaults to
 * 4 MiB). Reads of the prefix are paged ({@link ETCD_PAGE_KEYS}), so this bounds one page and
 * one watch response, not the membership.
 */
export const ETCD_MAX_RECEIVE_BYTES = 64 << 20;

/**
 * Keys of the first etcd Range page when the registry lists the prefix, and of every page of a
 * GetService read. Leasehold values are at most ~6 KiB (4 KiB of metadata plus the other fields),
 * so such a page stays under ~3 MiB; 64 MiB leaves room for foreign values of up to ~128 KiB each.
 */
export const ETCD_PAGE_KEYS = 500;

/**
 * Later pages of a prefix listing are sized to about this many bytes (8 MiB) from the previous
 * page's average key and value size, at most 10,000 keys: fewer round trips for a large
 * membership (about 28 pages for 50,000 instances with 4 KiB of metadata), still far under
 * {@link ETCD_MAX_RECEIVE_BYTES}.
 */
const ETCD_LIST_PAGE_BYTES = 8 << 20;

/** One page of a service's instances read from etcd: see {@link EtcdStore.readServicePage}. */
export interface ServicePage {
  readonly instances: readonly Instance[];
  /** Instance id of the last key examined (well-formed or not); resume after it. */
  readonly lastInstanceId: string | undefined;
  /** True when keys after `lastInstanceId` remain at that revision. */
  readonly hasMore: boolean;
}

/** Register's read–write loop retries this many times when the key changes in between. */
const REGISTER_ATTEMPTS = 3;

/** Hex SHA-256 of a registration id: what the etcd value stores instead of the id. */
export function hashRegistrationId(registrationId: string): string {
  return hash("sha256", registrationId, "hex");
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
  readonly #keepAlive: SharedLeaseKeepAlive;
  readonly #creates: KeyCreates;

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
      // A receive limit set on purpose (see ETCD_MAX_RECEIVE_BYTES): grpc-js's 4 MiB default made the
      // registry unable to start or re-list once etcd held more than 4 MiB of instances.
      grpcOptions: {
        "grpc.keepalive_time_ms": 6_000,
        "grpc.keepalive_timeout_ms": 3_000,
        "grpc.max_receive_message_length": ETCD_MAX_RECEIVE_BYTES,
        // Per-call channelz bookkeeping, for nobody (issue 10, Register profile).
        "grpc.enable_channelz": 0,
        // grpc-js's retrying-call layer on every call, for transparent retries only (no retry
        // policy is configured): etcd3 already retries UNAVAILABLE itself, on a fresh connection
        // (its global policy, 3 attempts). Issue 10, Register profile.
        "grpc.enable_retries": 0,
      },
      defaultCallOptions: (context) =>
        context.isStream ? {} : { deadline: Date.now() + options.requestTimeoutMs },
      faultHandling: {
        // The default per-host breaker keeps failing calls for 5 s after etcd is back.
        host: () => noop,
        // etcd3 calls the backoff factory with no argument; cockatiel's class type does not say so.
        watchBackoff: cappedBackoff(100, 1000),
      },
    });
    this.#creates = new KeyCreates(
      (request) => this.#time("txn", request),
      this.#client,
      (scope) => this.#callOptions(scope),
    );
    this.#keepAlive = new SharedLeaseKeepAlive(this.#client.leaseClient, options.metrics, this.#unavailable);
  }

  /**
   * Grants a lease of `ttlSeconds` and puts the instance key with it in one transaction, if the key
   * is absent. The value stores `owner`'s hashes: `tokenHash` (of the fresh registration token) and
   * `registrationHash`.
   *
   * With a `registrationHash` (the SHA-256 of the caller's registration id), a key that already
   * holds the same hash is the same holder's earlier attempt (abandoned at its deadline, or a
   * re-registration after a lost keepalive): it is adopted — its lease id and TTL are returned,
   * and the value is rewritten under that lease with the new fields and the new `tokenHash`
   * (compare on the key's mod revision and lease), so the earlier token stops working. The same
   * holder never gets `already_exists`.
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
    holder: InstanceOwner,
    scope: RequestScope = {},
  ): Promise<Registration> {
    const key = this.keys.key(instance.service, instance.instanceId);
    const owner: InstanceOwner = { ...holder, principal: scope.owner }; // [auth] stored as "owner"
    try {
      // Create first (lease grant + one transaction, as without a registration id); only when
      // the key is already held does the transaction's else-branch read decide: adopt or refuse.
      for (let attempt = 0; attempt < REGISTER_ATTEMPTS; attempt += 1) {
        const created = await this.#create(key, instance, ttlSeconds, owner, scope);
        this.#unavailable.recovered();
        if (!("held" in created)) return created;
        const adopted = await this.#adopt(key, created.held, instance, owner, scope);
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
   * Adopts the key `kv` when it carries `owner.registrationHash`; always writes (the token is new).
   * @returns the registration, or `"changed"` when the key changed under us (read again).
   * @throws RegistryError `already_exists` when another holder has it.
   */
  async #adopt(
    key: string,
    kv: IKeyValue,
    instance: Instance,
    owner: InstanceOwner,
    scope: RequestScope,
  ): Promise<Registration | "changed"> {
    const value = kv.value.toString();
    if (
      owner.registrationHash === undefined ||
      ownerOf(value).registrationHash !== owner.registrationHash ||
      kv.lease === "0" ||
      (scope.owner !== undefined && ownerOf(value).principal !== scope.owner) // [auth] only the same principal adopts
    ) {
      throw alreadyExists(instance);
    }
    const current = decodeInstance(instance, value, kv);
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
    const encoded = encodeInstance(next, owner);
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
    return {
      leaseId: kv.lease,
      ttlSeconds,
      revision,
      instance: { ...next, revision, createRevision: kv.create_revision },
      isAdopted: true,
    };
  }

  /**
   * Grants a lease and creates the key with it.
   * @returns the registration, or the key as it is held already (the granted lease is revoked).
   */
  async #create(
    key: string,
    instance: Instance,
    ttlSeconds: number,
    owner: InstanceOwner,
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
      const created = await this.#creates.create(key, encodeInstance(stored, owner), lease.ID, scope);
      if ("held" in created) {
        await this.#revoke(lease.ID);
        if (created.held === undefined) throw alreadyExists(instance); // deleted meanwhile: the caller retries
        return { held: created.held };
      }
      // The caller left while the key was written: nobody will keep the lease alive, so the key
      // would block the instance until the TTL runs out. Revoke it now.
      checkCaller(scope);
      const { revision } = created;
      return {
        leaseId: lease.ID,
        ttlSeconds: grantedTtlSeconds,
        revision,
        instance: { ...stored, revision, createRevision: revision },
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
   * Rewrites an instance with `change(current)`, only while `fence.leaseId` holds its key and its
   * value carries `fence.tokenHash`: the value is read, its token hash compared (constant time),
   * and the write is a transaction on the key's mod revision and lease as read, so a write that
   * raced in between fails the transaction (and is read again) instead of slipping through.
   * @throws RegistryError `not_found` (key gone), `permission_denied` (another lease or token),
   * `aborted` (the key kept changing concurrently), `unavailable`; `deadline_exceeded`/`cancelled`
   * when the caller has gone before the write (etcd requests carry its deadline).
   */
  async update(
    key: InstanceKey,
    fence: InstanceFence,
    change: (current: Instance) => Instance,
    scope: RequestScope = {},
  ): Promise<{ instance: Instance; revision: string }> {
    const etcdKey = this.keys.key(key.service, key.instanceId);
    const { leaseId } = fence;
    try {
      for (let attempt = 0; attempt < UPDATE_ATTEMPTS; attempt += 1) {
        const range = await this.#time("range", () =>
          this.#client.get(etcdKey).options(this.#callOptions(scope)).exec(),
        );
        const kv = checkHolder(key, range.kvs[0], fence);
        checkOwner(key, kv, scope); // [auth] fenced by the Mod compare below
        const current = decodeInstance(key, kv.value.toString(), kv);
        if (current === undefined) throw new RegistryError("internal", `malformed value under ${etcdKey}`);
        const next = change(current);
        // The owner's hashes stay: the token keeps working, a later Register of the holder adopts.
        const owner = ownerOf(kv.value.toString());
        checkCaller(scope);
        const txn = await this.#time("txn", () =>
          this.#client
            .if(etcdKey, "Mod", "==", kv.mod_revision)
            .and(etcdKey, "Lease", "==", leaseId)
            .then(this.#client.put(etcdKey).value(encodeInstance(next, owner)).lease(leaseId))
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
   * Deletes the instance key only while `fence.leaseId` holds it and its value carries
   * `fence.tokenHash` (read, compare, then a delete fenced on the mod revision and lease as read),
   * then revokes the lease.
   * @returns the etcd revision of the delete.
   * @throws RegistryError `not_found`, `permission_denied` (another lease or token), `aborted`
   * (the key kept changing), `unavailable`. The delete carries the caller's deadline but still
   * runs for a caller that has gone (removing is what it asked for).
   */
  async deregister(key: InstanceKey, fence: InstanceFence, scope: RequestScope = {}): Promise<string> {
    const etcdKey = this.keys.key(key.service, key.instanceId);
    const callOptions = () => this.#callOptions({ deadlineMs: scope.deadlineMs });
    try {
      for (let attempt = 0; attempt < UPDATE_ATTEMPTS; attempt += 1) {
        const range = await this.#time("range", () =>
          this.#client.get(etcdKey).options(callOptions()).exec(),
        );
        const kv = checkHolder(key, range.kvs[0], fence);
        checkOwner(key, kv, scope); // [auth] fenced by the Mod compare below
        const txn = await this.#time("txn", () =>
          this.#client
            .if(etcdKey, "Mod", "==", kv.mod_revision)
            .and(etcdKey, "Lease", "==", fence.leaseId)
            .then(this.#client.delete().key(etcdKey))
            .options(callOptions())
            .commit(),
        );
        if (txn.succeeded) {
          await this.#revoke(fence.leaseId);
          return txn.header.revision;
        }
      }
    } catch (error) {
      throw fromEtcdError(error);
    }
    throw new RegistryError("aborted", `instance ${key.service}/${key.instanceId} kept changing; try again`);
  }

  /**
   * Whether `fence.leaseId` holds a Leasehold instance whose value carries `fence.tokenHash`, as
   * etcd sees it now: LeaseTimeToLive with its keys, then a read of the instance key(s) among them.
   * KeepAlive asks this before it renews a lease it has not seen with that token.
   * @returns `"ok"`; `"not_found"` when the lease is gone or holds no instance key of this
   * registry (another program's lease); `"permission_denied"` when it holds one with another token.
   * @throws RegistryError `unavailable` when etcd does not answer.
   */
  async checkLeaseOwner(fence: InstanceFence): Promise<"ok" | "not_found" | "permission_denied"> {
    // A keepalive's deadline, not a unary request's: a frozen etcd is reported as fast as by a renewal.
    const deadlineMs = Date.now() + RENEWAL_TIMEOUT_MS;
    try {
      const lease = await this.#time("lease_time_to_live", () =>
        this.#client.leaseClient.leaseTimeToLive(
          { ID: fence.leaseId, keys: true },
          this.#callOptions({ deadlineMs }),
        ),
      );
      const keys = (lease.keys ?? [])
        .map((key) => key.toString())
        .filter((key) => this.keys.parse(key) !== undefined);
      if (Number(lease.TTL) < 0 || keys.length === 0) return "not_found";
      let isHeld = false;
      for (const key of keys) {
        const range = await this.#time("range", () =>
          this.#client.get(key).options(this.#callOptions({ deadlineMs })).exec(),
        );
        const kv = range.kvs[0];
        if (kv?.lease !== fence.leaseId) continue;
        isHeld = true;
        if (isTokenHashMatch(fence.tokenHash, ownerOf(kv.value.toString()).tokenHash)) return "ok";
      }
      // No key held by the lease any more: it expired between the two reads (seen as
      // PERMISSION_DENIED on 13 of 10,000 streams after an etcd stall before this).
      return isHeld ? "permission_denied" : "not_found";
    } catch (error) {
      const normalised = fromEtcdError(error);
      if (normalised.code === "not_found") return "not_found";
      throw normalised;
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
        if (kv !== undefined && kv.lease === leaseId)
          return { owner: ownerOf(kv.value.toString()).principal };
      }
      return undefined;
    } catch (error) {
      throw fromEtcdError(error);
    }
  }

  /** How far behind etcd's keepalive renewals are, in ms; see {@link SharedLeaseKeepAlive.lagMs}. */
  keepAliveLagMs(): number {
    return this.#keepAlive.lagMs();
  }

  /**
   * A keepalive channel for one caller stream: its renewals go over the registry's shared etcd
   * keepalive streams ({@link SharedLeaseKeepAlive}); `close()` only stops this caller's use.
   */
  openKeepAlive(): LeaseKeepAlive {
    let isClosed = false;
    return {
      renew: (leaseId) =>
        isClosed
          ? Promise.reject(new RegistryError("unavailable", "keepalive stream closed"))
          : this.#keepAlive.renew(leaseId),
      close: () => {
        isClosed = true;
      },
    };
  }

  /**
   * Reads the instances of `service` (or of all services) as they were at `revision`.
   * @returns `undefined` when etcd compacted that revision.
   * @throws RegistryError `out_of_range` for a revision etcd has not reached, `unavailable`.
   */
  async listAt(revision: bigint, service: string | undefined): Promise<readonly Instance[] | undefined> {
    const prefix = service === undefined ? this.keys.servicesPrefix : this.keys.servicePrefix(service);
    try {
      return (await this.#listPaged(prefix, revision)).instances;
    } catch (error) {
      if (isCompactedError(error)) return undefined;
      if (isFutureRevisionError(error)) {
        throw new RegistryError("out_of_range", `revision ${revision} is ahead of etcd`, { cause: error });
      }
      throw fromEtcdError(error);
    }
  }

  /**
   * Reads the instances of `service` at `revision` after instance id `afterInstanceId`, in key
   * order, until `maxInstances` instances or `maxBytes` (by {@link instanceBytes}; at least one
   * instance) are reached. Paged etcd reads of at most {@link ETCD_PAGE_KEYS} keys each.
   * @throws RegistryError `aborted` when etcd compacted `revision` (the listing must start again),
   * `out_of_range` for a revision etcd has not reached, `unavailable`.
   */
  async readServicePage(
    service: string,
    revision: bigint,
    afterInstanceId: string | undefined,
    maxInstances: number,
    maxBytes: number,
    scope: RequestScope = {},
  ): Promise<ServicePage> {
    const prefix = this.keys.servicePrefix(service);
    const range = Range.prefix(prefix);
    const instances: Instance[] = [];
    let bytes = 0;
    let lastInstanceId = afterInstanceId;
    try {
      const pages = rangeInPages((request) => this.#range(request, scope), {
        start: range.start,
        end: range.end,
        pageKeys: Math.min(ETCD_PAGE_KEYS, maxInstances + 1),
        revision,
        after: afterInstanceId === undefined ? undefined : Buffer.from(prefix + afterInstanceId),
      });
      for await (const page of pages) {
        for (const kv of page.kvs) {
          const key = this.keys.parse(kv.key.toString());
          const instance = key && decodeInstance(key, kv.value.toString(), kv);
          if (instance !== undefined) {
            const size = instanceBytes(instance);
            if (instances.length >= maxInstances || (instances.length > 0 && bytes + size > maxBytes)) {
              return { instances, lastInstanceId, hasMore: true };
            }
            instances.push(instance);
            bytes += size;
          }
          lastInstanceId = kv.key.toString().slice(prefix.length);
        }
      }
      return { instances, lastInstanceId, hasMore: false };
    } catch (error) {
      if (isCompactedError(error)) {
        throw new RegistryError(
          "aborted",
          `revision ${revision} of this listing was compacted by etcd; list again without page_token`,
          { cause: error },
        );
      }
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
    this.#keepAlive.close();
    this.#client.close();
  }

  #listAll(): Promise<InstanceList> {
    return this.#listPaged(this.keys.servicesPrefix, undefined);
  }

  /**
   * Every instance under `prefix` at `revision` (undefined: now), read in pages at one revision
   * ({@link ETCD_PAGE_KEYS} keys first, then about 8 MiB each), decoding each page before reading the next.
   */
  async #listPaged(prefix: string, revision: bigint | undefined): Promise<InstanceList> {
    const range = Range.prefix(prefix);
    const instances: Instance[] = [];
    let listed: { revision: bigint; keyCount: number } | undefined;
    const pages = rangeInPages((request) => this.#range(request, {}), {
      start: range.start,
      end: range.end,
      pageKeys: ETCD_PAGE_KEYS,
      targetPageBytes: ETCD_LIST_PAGE_BYTES,
      revision,
    });
    for await (const page of pages) {
      listed ??= { revision: page.revision, keyCount: page.count };
      for (const instance of this.#decodeAll(page.kvs)) instances.push(instance);
    }
    return { instances, revision: listed?.revision ?? 0n, keyCount: listed?.keyCount ?? 0 };
  }

  /** One etcd Range with the caller's deadline (or the request timeout), timed as `range`. */
  #range(request: IRangeRequest, scope: RequestScope): Promise<IRangeResponse> {
    return this.#time("range", () => this.#client.kv.range(request, this.#callOptions(scope)));
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
      const instance = key && decodeInstance(key, kv.value.toString(), kv);
      if (instance) instances.push(instance);
    }
    return instances;
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
  if (
    scope.signal?.aborted === true ||
    scope.isCancelled?.() === true ||
    (scope.deadlineMs !== undefined && Date.now() >= scope.deadlineMs)
  ) {
    const isDeadline = scope.deadlineMs !== undefined && Date.now() >= scope.deadlineMs;
    throw new RegistryError(
      isDeadline ? "deadline_exceeded" : "cancelled",
      isDeadline ? "the caller's deadline passed" : "the caller cancelled",
    );
  }
}

/** [auth] Throws `permission_denied` when auth is on and `kv` is not the caller's. */
function checkOwner(key: InstanceKey, kv: IKeyValue, scope: RequestScope): void {
  if (scope.owner === undefined || ownerOf(kv.value.toString()).principal === scope.owner) return;
  throw new RegistryError(
    "permission_denied",
    `instance ${key.service}/${key.instanceId} was registered by another principal`,
  );
}

/**
 * The key's value when `fence` owns it: its lease is `fence.leaseId` and its token hash matches
 * (constant time). Messages never carry the token or its hash.
 * @throws RegistryError `not_found` (no key), `permission_denied` (another lease or token).
 */
function checkHolder(key: InstanceKey, kv: IKeyValue | undefined, fence: InstanceFence): IKeyValue {
  if (kv === undefined) {
    throw new RegistryError("not_found", `instance ${key.service}/${key.instanceId} is not registered`);
  }
  if (kv.lease !== fence.leaseId) {
    throw new RegistryError(
      "permission_denied",
      `lease ${fence.leaseId} does not hold instance ${key.service}/${key.instanceId}`,
    );
  }
  if (!isTokenHashMatch(fence.tokenHash, ownerOf(kv.value.toString()).tokenHash)) {
    throw new RegistryError(
      "permission_denied",
      `registration_token does not match instance ${key.service}/${key.instanceId}`,
    );
  }
  return kv;
}

function alreadyExists(instance: InstanceKey): RegistryError {
  return new RegistryError(
    "already_exists",
    `instance ${instance.service}/${instance.instanceId} is held by another live lease`,
  );
}
