import { TokenBucket } from "limiter";
import type { Instance, InstanceKey } from "../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "./registry-error.js";
import type { RegistryMetrics } from "./registry-metrics.js";
import type { OverloadSignal } from "./api/overload-guard.js";

/**
 * Quotas of one registry replica (issue 7). Every refusal is `RESOURCE_EXHAUSTED` with a message
 * naming the limit and its option, counted in `leasehold_registry_limited_total{limit}`.
 * All optional; the defaults are in {@link DEFAULT_REGISTRY_LIMITS}.
 */
export interface RegistryLimitOptions {
  /** Instances one service may hold (as this replica sees them); default 10,000. */
  maxInstancesPerService?: number | undefined;
  /** Open Watch streams per client connection (HTTP/2 session); default 100. */
  maxWatchStreamsPerConnection?: number | undefined;
  /**
   * Concurrent HTTP/2 streams per connection (`grpc.max_concurrent_streams`, announced in
   * SETTINGS: clients queue beyond it, nothing reaches the registry); default 1000.
   */
  maxConcurrentStreamsPerConnection?: number | undefined;
  /** KeepAlive messages per second on one stream (token bucket, burst the same); default 50. */
  maxKeepAlivesPerSecond?: number | undefined;
  /**
   * Watch resumes per second that read etcd (token bucket, burst the same); resumes of the same
   * service at the same revision share one read and count once. Default 50.
   */
  maxEtcdResumesPerSecond?: number | undefined;
  /** Largest request message, in bytes (`grpc.max_receive_message_length`); default 64 KiB. */
  maxReceiveMessageBytes?: number | undefined;
  /** Largest response message, in bytes (`grpc.max_send_message_length`); default 4 MiB. */
  maxSendMessageBytes?: number | undefined;
  /**
   * Distinct `service` label values of `leasehold_registry_instances`; the instances of services
   * beyond it are summed under `service="other"`. Default 1000.
   */
  maxServiceLabels?: number | undefined;
}

/** {@link RegistryLimitOptions} resolved: every limit set. */
export type RegistryLimits = { readonly [K in keyof RegistryLimitOptions]-?: number };

/** The defaults of {@link RegistryLimitOptions}. */
export const DEFAULT_REGISTRY_LIMITS: RegistryLimits = Object.freeze({
  maxInstancesPerService: 10_000,
  maxWatchStreamsPerConnection: 100,
  maxConcurrentStreamsPerConnection: 1000,
  maxKeepAlivesPerSecond: 50,
  maxEtcdResumesPerSecond: 50,
  maxReceiveMessageBytes: 64 * 1024,
  maxSendMessageBytes: 4 * 1024 * 1024,
  maxServiceLabels: 1000,
});

/** Values of the `limit` label of `leasehold_registry_limited_total`. */
export type LimitName =
  | "instances_per_service"
  | "watch_streams_per_connection"
  | "keepalive_rate"
  | "resume_rate"
  | OverloadSignal;

/** The principal of a caller until authentication names one (issue 7, item 3). */
export const ANONYMOUS_PRINCIPAL = "anonymous";

/**
 * Validates limit options (each a positive integer) and applies the defaults.
 * @throws RegistryError `invalid_argument` naming the option.
 */
export function resolveRegistryLimits(options: RegistryLimitOptions = {}): RegistryLimits {
  const resolved: Record<string, number> = {};
  for (const [name, fallback] of Object.entries(DEFAULT_REGISTRY_LIMITS)) {
    const value = options[name as keyof RegistryLimitOptions] ?? fallback;
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new RegistryError(
        "invalid_argument",
        `RegistryOptions.limits.${name} must be a positive integer, got ${value}`,
      );
    }
    resolved[name] = value;
  }
  return Object.freeze(resolved) as RegistryLimits;
}

/** What the limiter reads from the watch-fed cache. */
export interface InstanceCounts {
  instanceCount(service: string, instanceId?: string): { count: number; isListed: boolean };
}

/** A registration this replica made that its cache may not show yet, kept at most this long. */
const UNSEEN_REGISTRATION_MS = 30_000;

/**
 * Enforces {@link RegistryLimits} for one replica. Per-connection and per-service counts are this
 * replica's view (several replicas each allow the limit). Calls take a `principal` (default
 * {@link ANONYMOUS_PRINCIPAL}) so that per-principal caps can key on it once authentication
 * names callers; today's caps are per connection and per service.
 */
export class RegistryLimiter {
  readonly limits: RegistryLimits;
  readonly #metrics: RegistryMetrics;
  readonly #cache: InstanceCounts;
  readonly #now: () => number;
  /** connection (peer address) → open Watch streams */
  readonly #watchStreams = new Map<string, number>();
  /** service → Registers in flight for ids the cache does not list */
  readonly #pending = new Map<string, number>();
  /** service → instance id → when this replica registered it, until its cache lists it */
  readonly #unseen = new Map<string, Map<string, number>>();
  readonly #resumeBucket: TokenBucket;
  /** `${service}@${revision}` → the etcd read every resume of it shares */
  readonly #resumes = new Map<string, Promise<readonly Instance[] | undefined>>();

  constructor(options: {
    limits: RegistryLimits;
    metrics: RegistryMetrics;
    cache: InstanceCounts;
    /** Clock in ms, for unseen registrations; default `Date.now`. */
    now?: () => number;
  }) {
    this.limits = options.limits;
    this.#metrics = options.metrics;
    this.#cache = options.cache;
    this.#now = options.now ?? Date.now;
    this.#resumeBucket = fullBucket(this.limits.maxEtcdResumesPerSecond);
  }

  /** gRPC server options that carry limits: concurrent streams and message sizes. */
  serverOptions(): Record<string, number> {
    return {
      "grpc.max_concurrent_streams": this.limits.maxConcurrentStreamsPerConnection,
      "grpc.max_receive_message_length": this.limits.maxReceiveMessageBytes,
      "grpc.max_send_message_length": this.limits.maxSendMessageBytes,
    };
  }

  /**
   * Runs `register` unless it would add an instance to a service that holds
   * `maxInstancesPerService` already (cache, plus Registers in flight, plus this replica's recent
   * registrations the cache does not show yet). A key that is listed already (a re-registration,
   * an adoption) is never refused.
   * @throws RegistryError `resource_exhausted` (counted as `instances_per_service`).
   */
  async admitInstance<T>(
    key: InstanceKey,
    register: () => Promise<T>,
    principal = ANONYMOUS_PRINCIPAL,
  ): Promise<T> {
    void principal; // the hook for per-principal instance caps (auth)
    const { service, instanceId } = key;
    const cached = this.#cache.instanceCount(service, instanceId);
    if (!cached.isListed) {
      const count = cached.count + (this.#pending.get(service) ?? 0) + this.#countUnseen(service);
      if (count >= this.limits.maxInstancesPerService) {
        throw this.#limited(
          "instances_per_service",
          `service ${service} holds ${this.limits.maxInstancesPerService} instances, the most this registry allows ` +
            `(maxInstancesPerService, --max-instances-per-service); deregister some first`,
        );
      }
    }
    this.#pending.set(service, (this.#pending.get(service) ?? 0) + 1);
    try {
      const result = await register();
      if (!cached.isListed) {
        let unseen = this.#unseen.get(service);
        if (unseen === undefined) this.#unseen.set(service, (unseen = new Map<string, number>()));
        unseen.set(instanceId, this.#now());
      }
      return result;
    } finally {
      const left = (this.#pending.get(service) ?? 1) - 1;
      if (left > 0) this.#pending.set(service, left);
      else this.#pending.delete(service);
    }
  }

  /**
   * Takes a Watch stream slot of `connection` (the peer address: one HTTP/2 session).
   * @returns an idempotent release, to call however the stream ends.
   * @throws RegistryError `resource_exhausted` (counted as `watch_streams_per_connection`).
   */
  acquireWatchStream(connection: string, principal = ANONYMOUS_PRINCIPAL): () => void {
    void principal; // the hook for per-principal Watch caps (auth)
    const open = this.#watchStreams.get(connection) ?? 0;
    if (open >= this.limits.maxWatchStreamsPerConnection) {
      throw this.#limited(
        "watch_streams_per_connection",
        `this connection has ${open} Watch streams open, the most this registry allows ` +
          `(maxWatchStreamsPerConnection, --max-watch-streams-per-connection); one stream with an empty service watches them all`,
      );
    }
    this.#watchStreams.set(connection, open + 1);
    let isReleased = false;
    return () => {
      if (isReleased) return;
      isReleased = true;
      const left = (this.#watchStreams.get(connection) ?? 1) - 1;
      if (left > 0) this.#watchStreams.set(connection, left);
      else this.#watchStreams.delete(connection);
    };
  }

  /**
   * A per-stream KeepAlive rate check: `maxKeepAlivesPerSecond` tokens a second, as many in a burst.
   * @returns a function that throws RegistryError `resource_exhausted` (counted as
   * `keepalive_rate`) once the stream sends faster.
   */
  keepAliveRate(): () => void {
    const bucket = fullBucket(this.limits.maxKeepAlivesPerSecond);
    return () => {
      if (bucket.tryRemoveTokens(1)) return;
      throw this.#limited(
        "keepalive_rate",
        `more than ${this.limits.maxKeepAlivesPerSecond} KeepAlive messages a second on one stream ` +
          `(maxKeepAlivesPerSecond, --max-keepalives-per-second); a registrar sends one per TTL/3`,
      );
    };
  }

  /**
   * Wraps the etcd read of Watch resumes: concurrent resumes of the same service at the same
   * revision share one read, and new reads are capped at `maxEtcdResumesPerSecond`.
   * @returns a `listAt` with the same contract, which also throws RegistryError
   * `resource_exhausted` (counted as `resume_rate`) past the cap.
   */
  coalesceResumes(
    listAt: (revision: bigint, service: string | undefined) => Promise<readonly Instance[] | undefined>,
  ): (revision: bigint, service: string | undefined) => Promise<readonly Instance[] | undefined> {
    return (revision, service) => {
      const key = `${service ?? ""}@${revision}`;
      const shared = this.#resumes.get(key);
      if (shared !== undefined) return shared;
      if (!this.#resumeBucket.tryRemoveTokens(1)) {
        return Promise.reject(
          this.#limited(
            "resume_rate",
            `more than ${this.limits.maxEtcdResumesPerSecond} Watch resumes a second read etcd ` +
              `(maxEtcdResumesPerSecond, --max-resumes-per-second); resume again after a backoff`,
          ),
        );
      }
      const read = listAt(revision, service).finally(() => this.#resumes.delete(key));
      this.#resumes.set(key, read);
      return read;
    };
  }

  #countUnseen(service: string): number {
    const unseen = this.#unseen.get(service);
    if (unseen === undefined) return 0;
    const oldest = this.#now() - UNSEEN_REGISTRATION_MS;
    for (const [instanceId, registeredAt] of unseen) {
      if (registeredAt < oldest || this.#cache.instanceCount(service, instanceId).isListed) {
        unseen.delete(instanceId);
      }
    }
    if (unseen.size === 0) this.#unseen.delete(service);
    return unseen.size;
  }

  #limited(limit: LimitName, message: string): RegistryError {
    this.#metrics.limited.inc({ limit });
    return new RegistryError("resource_exhausted", message);
  }
}

/** A token bucket of `perSecond` tokens a second, holding as many, full from the start. */
function fullBucket(perSecond: number): TokenBucket {
  const bucket = new TokenBucket({ bucketSize: perSecond, tokensPerInterval: perSecond, interval: "second" });
  bucket.content = perSecond; // limiter's buckets start empty
  return bucket;
}
