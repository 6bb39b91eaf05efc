import { randomUUID } from "node:crypto";
import { credentials, Metadata, type ChannelCredentials, type ServiceError } from "@grpc/grpc-js";
import { registerLoadBalancers } from "../../client/balancing/leasehold-load-balancer.js";
import { registerResolver } from "../../client/discovery/leasehold-resolver.js";
import { followRedirect } from "../../client/redirect/follow-redirect.js";
import {
  Consistency,
  KvServiceClient,
  type DeleteResponse,
  type GetResponse,
  type IncrementResponse,
  type PutResponse,
} from "../../proto/gen/leasehold/demo/v1/kv.js";

/** Options of {@link connectKv}. */
export interface KvClientOptions {
  /** Registry address(es), `host:port[,host:port]`. */
  readonly registry: string;
  /**
   * `host:port` of one instance to send every call to (e.g. a backup, to see a redirect), instead
   * of balancing over the service's SERVING instances. Default none.
   */
  readonly instance?: string | undefined;
  /** Registry name of the kv service; default "kv". */
  readonly service?: string | undefined;
  /** Deadline of each call, ms; default 5000. */
  readonly deadlineMs?: number | undefined;
  readonly credentials?: ChannelCredentials | undefined;
  /** Called with the target of every redirect followed. */
  readonly onRedirect?: ((target: string, path: string) => void) | undefined;
}

/** Per-call options of {@link KvClient}'s writes. */
export interface KvWriteOptions {
  /**
   * Idempotency key: a write retried with the same id is applied once. Default a random UUID per
   * call, so the channel's own retries (UNAVAILABLE) never apply a write twice; give your own to
   * retry across calls.
   */
  readonly requestId?: string | undefined;
}

/** Promise methods over `KvService`, balanced over SERVING instances, following redirects to the primary. */
export interface KvClient {
  put(key: string, value: string, options?: KvWriteOptions): Promise<PutResponse>;
  /** `stale`: any SERVING instance (balanced); `linearizable` (default): the primary. */
  get(key: string, consistency?: "linearizable" | "stale"): Promise<GetResponse>;
  delete(key: string, options?: KvWriteOptions): Promise<DeleteResponse>;
  /** `delta` default 1. */
  increment(key: string, delta?: bigint, options?: KvWriteOptions): Promise<IncrementResponse>;
  close(): void;
}

/**
 * A kv client on a `leasehold://REGISTRY/kv` channel (registers Leasehold's resolver and
 * balancers if needed; the process-wide defaults of `registerLeasehold()` are left unchanged)
 * with the {@link followRedirect} interceptor: a write or linearizable read that reaches a backup
 * is sent once more, to the primary the backup names.
 * @throws ServiceError of the call (UNAVAILABLE while no primary is known, INVALID_ARGUMENT, ...).
 */
export function connectKv(options: KvClientOptions): KvClient {
  // The registry goes in the target, so the application's registerLeasehold() defaults stay as they are.
  registerResolver();
  registerLoadBalancers();
  const redirects = followRedirect({ credentials: options.credentials, onRedirect: options.onRedirect });
  const client = new KvServiceClient(
    options.instance ?? `leasehold://${options.registry}/${options.service ?? "kv"}`,
    options.credentials ?? credentials.createInsecure(),
    { interceptors: [redirects] },
  );
  const deadlineMs = options.deadlineMs ?? 5000;
  const call = <Res>(
    invoke: (
      metadata: Metadata,
      callOptions: { deadline: number },
      callback: (error: ServiceError | null, response: Res) => void,
    ) => unknown,
  ): Promise<Res> =>
    new Promise<Res>((resolve, reject) =>
      invoke(new Metadata(), { deadline: Date.now() + deadlineMs }, (error, response) =>
        error === null ? resolve(response) : reject(error),
      ),
    );
  return {
    put: (key, value, write = {}) =>
      call((metadata, callOptions, callback) =>
        client.put(
          { key, value, requestId: write.requestId ?? randomUUID() },
          metadata,
          callOptions,
          callback,
        ),
      ),
    get: (key, consistency = "linearizable") =>
      call((metadata, callOptions, callback) =>
        client.get(
          {
            key,
            consistency:
              consistency === "stale" ? Consistency.CONSISTENCY_STALE : Consistency.CONSISTENCY_LINEARIZABLE,
          },
          metadata,
          callOptions,
          callback,
        ),
      ),
    delete: (key, write = {}) =>
      call((metadata, callOptions, callback) =>
        client.delete({ key, requestId: write.requestId ?? randomUUID() }, metadata, callOptions, callback),
      ),
    increment: (key, delta = 1n, write = {}) =>
      call((metadata, callOptions, callback) =>
        client.increment(
          { key, delta: String(delta), requestId: write.requestId ?? randomUUID() },
          metadata,
          callOptions,
          callback,
        ),
      ),
    close: () => {
      client.close();
      redirects.close();
    },
  };
}
