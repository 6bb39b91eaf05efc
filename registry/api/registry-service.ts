import { LRUCache } from "lru-cache";
import type { ServerDuplexStream, ServerUnaryCall, handleUnaryCall, sendUnaryData } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { CallIdentity, RegistryAuth } from "../auth/registry-auth.js";
import type {
  DeregisterRequest,
  DeregisterResponse,
  GetServiceRequest,
  GetServiceResponse,
  KeepAliveRequest,
  KeepAliveResponse,
  ListServicesRequest,
  ListServicesResponse,
  RegisterRequest,
  RegisterResponse,
  RegistryServiceServer,
  UpdateInstanceRequest,
  UpdateInstanceResponse,
  WatchRequest,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import { ANONYMOUS_PRINCIPAL, type RegistryLimiter } from "../registry-limits.js";
import { issueRegistrationToken } from "../registration-token.js";
import { hashRegistrationId, type EtcdStore, type RequestScope } from "../store/etcd-store.js";
import type { LeaseKeepAlive } from "../store/lease-keep-alive.js";
import type { WatchHub } from "../watch/watch-hub.js";
import type { WatchSink } from "../watch/watch-subscription.js";
import { toServiceError } from "./grpc-status.js";
import {
  DEFAULT_OVERLOAD_OPTIONS,
  OverloadGuard,
  type OverloadSignal,
  type ResolvedOverloadOptions,
} from "./overload-guard.js";
import { CAPACITY_PUSHBACK_FACTOR, RenewalLoad, type RenewalReservation } from "./renewal-load.js";
import { getServicePage, type ServicePageSources } from "./service-pages.js";
import { watchSink } from "./watch-writer.js";
import {
  applyChange,
  validateDeregister,
  validateKeepAlive,
  validateRegister,
  validateServiceName,
  validateUpdate,
  validateWatch,
  type Validated,
  type ValidationOptions,
} from "./validation.js";

/** What the handlers need. */
export interface RegistryServiceDeps {
  readonly store: EtcdStore;
  readonly hub: WatchHub;
  readonly limiter: RegistryLimiter;
  readonly metrics: RegistryMetrics;
  readonly logger: Logger;
  /** Operator choices that loosen validation; default none. */
  readonly validation?: ValidationOptions;
  /** [auth] Authentication and authorisation (issue 7); undefined = auth off, anyone may write. */
  readonly auth?: RegistryAuth | undefined;
  /** Clock for `registered_at`; default `() => new Date()`. */
  readonly now?: () => Date;
  /** Register load shedding thresholds; default {@link DEFAULT_OVERLOAD_OPTIONS}. */
  readonly overload?: ResolvedOverloadOptions | undefined;
  /** The process's event-loop delay in ms ({@link EventLoopDelay.readMs}); default none (0). */
  readonly eventLoopDelayMs?: (() => number) | undefined;
}

/** One unary operation: the request, when its caller stops waiting, and who the caller is. */
export type UnaryOperation<Request, Response> = (
  request: Request,
  scope: RequestScope,
  caller: CallIdentity,
) => Promise<Response>;

/**
 * The RegistryService's behaviour without a transport: ts-proto messages in and out, failures
 * thrown as {@link RegistryError} (`internal` for anything unexpected, already logged). The gRPC
 * handlers and the HTTP API (`registry/http-api/`) both call these, so validation, limits,
 * authentication and authorisation live in one place. `caller` is what the call presents
 * (a gRPC call, or the HTTP API's view of its request: `Authorization` header and verified client
 * certificate); with auth on, a write without a principal is `unauthenticated`, a write into a
 * service outside its grant or to another principal's instance `permission_denied`.
 */
export interface RegistryOperations {
  readonly register: UnaryOperation<RegisterRequest, RegisterResponse>;
  /**
   * Renews a lease once, over a keepalive stream of its own: what one message of the KeepAlive
   * stream does (the HTTP API's unary KeepAlive), token and owner checks included. `not_found`
   * when the lease no longer exists, `permission_denied` for another instance's token or another
   * principal's lease.
   */
  readonly keepAliveOnce: UnaryOperation<KeepAliveRequest, KeepAliveResponse>;
  readonly updateInstance: UnaryOperation<UpdateInstanceRequest, UpdateInstanceResponse>;
  readonly deregister: UnaryOperation<DeregisterRequest, DeregisterResponse>;
  readonly getService: UnaryOperation<GetServiceRequest, GetServiceResponse>;
  readonly listServices: UnaryOperation<ListServicesRequest, ListServicesResponse>;
  /**
   * Takes a Watch stream slot of `connection` (the caller's connection, e.g. `ip:port`; limited
   * per connection and per principal), checks that `caller` may read, validates `request` and
   * subscribes `sink` to the watch hub until `signal` aborts or the sink is ended; resolves once
   * the snapshot (or the resumed deltas) are written. Rejects (`resource_exhausted`,
   * `unauthenticated`, `permission_denied`, `invalid_argument`, ...) before anything is written.
   */
  readonly watch: (
    request: WatchRequest,
    sink: WatchSink,
    signal: AbortSignal,
    connection: string,
    caller: CallIdentity,
  ) => Promise<void>;
}

/** The RegistryService handlers, the operations behind them, and a way to end their long streams. */
export interface RegistryServiceHandlers {
  readonly implementation: RegistryServiceServer;
  readonly operations: RegistryOperations;
  /** Ends every open KeepAlive stream with `UNAVAILABLE` (Watch streams end via the hub). */
  endStreams(): void;
}

/**
 * Implements `leasehold.registry.v1.RegistryService` (DESIGN §3): validation before etcd is
 * touched, fenced writes through the store, reads and Watch from the watch-fed hub. Every error
 * leaves through `toServiceError`.
 */
export function createRegistryService(deps: RegistryServiceDeps): RegistryServiceHandlers {
  const { store, hub, limiter, metrics, logger, auth } = deps;
  // [auth] A write's scope carries the caller's principal as the instance owner; anonymous →
  // UNAUTHENTICATED before anything else, a service outside its grant → PERMISSION_DENIED.
  const requireWriter = (caller: CallIdentity) => auth?.requirePrincipal(caller);
  const owned = (scope: RequestScope, caller: CallIdentity, service: string): RequestScope =>
    auth === undefined ? scope : { ...scope, owner: auth.authorizeWrite(caller, service) };
  // [auth] Quotas per principal key on the authenticated principal; without auth every caller is one.
  const quotaPrincipal = (scope: RequestScope) => scope.owner ?? ANONYMOUS_PRINCIPAL;
  const now = deps.now ?? (() => new Date());
  const keepAliveStreams = new Set<(error: RegistryError) => void>();
  const pageSources: ServicePageSources = {
    revision: () => hub.revision,
    cached: (service) => hub.sortedInstances(service),
    readPage: (...args) => store.readServicePage(...args),
  };

  /** Normalises and logs a failure once (internal ones with their cause). */
  const failed = (method: string, error: unknown): RegistryError => {
    const normalised = RegistryError.from(error);
    if (normalised.code === "internal") logger.error({ err: error, method }, "internal error");
    else logger.debug({ method, code: normalised.code, reason: normalised.message }, "request failed");
    return normalised;
  };

  /** One unary operation: a handler that throws before its first await (validation) rejects too. */
  const operation =
    <Request, Response>(
      method: string,
      run: UnaryOperation<Request, Response>,
    ): UnaryOperation<Request, Response> =>
    (request, scope, caller) =>
      new Promise<Response>((resolve) => resolve(run(request, scope, caller))).catch((error: unknown) => {
        throw failed(method, error);
      });

  const overload = deps.overload ?? DEFAULT_OVERLOAD_OPTIONS;
  /** This replica's projected renewals/s, capped by `overload.maxRenewalsPerSecond`. */
  const renewalLoad = new RenewalLoad({ maxRenewalsPerSecond: overload.maxRenewalsPerSecond });
  metrics.projectRenewalsWith(() => renewalLoad.projectedPerSecond());

  /**
   * Leases whose ownership etcd confirmed: lease id → the token hash and principal proven for it.
   * Shared by every KeepAlive stream of this registry, so a registrar that reconnects (after a
   * registry or etcd outage, every stream at once) renews at once instead of re-proving with two
   * etcd reads each: at 10,000 instances those 20,000 reads after an etcd stall delayed renewals
   * past the TTL and lost every lease (README, Benchmarks). A deregistered or expired lease needs
   * no eviction: its renewal answers NOT_FOUND, which evicts it. A proof lasts PROOF_TTL_MS, with
   * jitter so proofs made together (a mass reconnect) are not all renewed together: another
   * replica's adoption of a lease (a new token) reaches this one's cache within that time.
   */
  const provenLeases = new LRUCache<string, string>({ max: MAX_PROVEN_LEASES, ttl: PROOF_TTL_MS.max });

  /** Remembers `leaseId` as proven for `proof` (`tokenHash principal`), for a jittered PROOF_TTL_MS. */
  const remember = (leaseId: string, proof: string) =>
    provenLeases.set(leaseId, proof, {
      ttl: PROOF_TTL_MS.min + Math.random() * (PROOF_TTL_MS.max - PROOF_TTL_MS.min),
    });

  /**
   * Renews `request`'s lease on `keepAlive` once its token is proven and, with auth on, once the
   * instance it holds is `principal`'s (see `provenLeases`).
   */
  const renew = async (
    keepAlive: LeaseKeepAlive,
    request: KeepAliveRequest,
    principal: string | undefined,
  ): Promise<KeepAliveResponse> => {
    const fence = valueOf(validateKeepAlive(request));
    const { leaseId } = fence;
    const proof = `${fence.tokenHash} ${principal ?? ""}`;
    if (provenLeases.get(leaseId) !== proof) {
      const owner = await store.checkLeaseOwner(fence);
      if (owner === "not_found") {
        throw new RegistryError(
          "not_found",
          `lease ${leaseId} holds no Leasehold instance (expired, revoked or not one of ours); register again`,
        );
      }
      if (owner === "permission_denied") {
        throw new RegistryError(
          "permission_denied",
          `registration_token does not match the instance lease ${leaseId} holds`,
        );
      }
      if (principal !== undefined) await checkLeaseOwner(leaseId, principal); // [auth]
      remember(leaseId, proof);
    }
    const ttlSeconds = await keepAlive.renew(leaseId);
    if (ttlSeconds <= 0) {
      provenLeases.delete(leaseId);
      renewalLoad.dropped(leaseId);
      throw new RegistryError("not_found", `lease ${leaseId} not found (expired or revoked); register again`);
    }
    renewalLoad.held(leaseId, ttlSeconds);
    return { leaseId, ttlSeconds: String(ttlSeconds) };
  };

  let registersInFlight = 0;
  const overloadGuard = new OverloadGuard({
    overload,
    signals: {
      eventLoopDelayMs: deps.eventLoopDelayMs ?? (() => 0),
      keepAliveLagMs: () => store.keepAliveLagMs(),
      registersInFlight: () => registersInFlight,
    },
  });
  /** Registers shed in the current episode (overload or capacity); undefined while admitting. */
  let shedInEpisode: number | undefined;
  /**
   * Admits a new Register of a `ttlSeconds` lease, or sheds it while the registry is overloaded or
   * its lease would take the projected renewal rate over the cap (KeepAlives are never shed: they
   * are the leases being protected): RESOURCE_EXHAUSTED with a `grpc-retry-pushback-ms` trailer,
   * counted in `leasehold_registry_limited_total{limit}`, logged once per episode. The admitted
   * Register holds its share of the projection until `release` (after `renewalLoad.held`).
   */
  const admitRegister = (ttlSeconds: number): RenewalReservation => {
    const overloaded = overloadGuard.admitRegister();
    let shed: { signal: OverloadSignal; pushbackMs: number; message: string };
    if (overloaded.isShed) shed = overloaded;
    else {
      const reserved = renewalLoad.reserve(ttlSeconds);
      if (reserved.ok) {
        if (shedInEpisode !== undefined) logger.info({ shed: shedInEpisode }, "admitting Registers again");
        shedInEpisode = undefined;
        return reserved.value;
      }
      shed = {
        signal: "renewals_per_second",
        pushbackMs: Math.round(CAPACITY_PUSHBACK_FACTOR * overload.pushbackMs * (1 + Math.random())),
        message: reserved.error.message,
      };
    }
    if (shedInEpisode === undefined) {
      logger.warn(
        { signal: shed.signal, reason: shed.message },
        "registry overloaded or at capacity; shedding new Registers (logged once per episode)",
      );
    }
    shedInEpisode = (shedInEpisode ?? 0) + 1;
    metrics.limited.inc({ limit: shed.signal });
    throw new RegistryError("resource_exhausted", shed.message, { retryPushbackMs: shed.pushbackMs });
  };

  const operations: RegistryOperations = {
    register: operation("Register", async (request: RegisterRequest, callerScope, caller) => {
      let reservation: RenewalReservation | undefined;
      try {
        requireWriter(caller);
        const { instance, ttlSeconds, registrationId } = valueOf(
          validateRegister(request, now().toISOString(), deps.validation),
        );
        reservation = admitRegister(ttlSeconds);
        registersInFlight += 1;
        const scope = owned(callerScope, caller, instance.service);
        const registrationHash =
          registrationId === undefined ? undefined : hashRegistrationId(registrationId);
        // Issued here, returned once, stored only as its hash, never logged.
        const token = issueRegistrationToken();
        const registration = await limiter.admitInstance(
          instance,
          () => store.register(instance, ttlSeconds, { registrationHash, tokenHash: token.hash }, scope),
          quotaPrincipal(scope),
        );
        // The txn just stored this token's hash (and principal) under this lease: proven, so the
        // first KeepAlive needs no etcd reads (two per instance, 100,000 at 50,000 instances). An
        // adopted lease now carries the new token, which replaces the old one's proof.
        remember(registration.leaseId, `${token.hash} ${scope.owner ?? ""}`);
        renewalLoad.held(registration.leaseId, registration.ttlSeconds);
        metrics.countRegistration(registration.isAdopted ? "adopted" : "ok");
        // Debug, not info: one line per Register cost measurable registry CPU at thousands per
        // second (issue 10); the registrations counter counts them.
        if (logger.isLevelEnabled("debug")) {
          logger.debug(
            {
              service: instance.service,
              instanceId: instance.instanceId,
              adopted: registration.isAdopted,
              leaseId: registration.leaseId,
            },
            "registered",
          );
        }
        return {
          leaseId: registration.leaseId,
          ttlSeconds: String(registration.ttlSeconds),
          revision: registration.revision,
          instance: registration.instance,
          registrationToken: token.token,
        };
      } catch (error) {
        metrics.countRegistration(RegistryError.from(error).code);
        throw error;
      } finally {
        if (reservation !== undefined) {
          registersInFlight -= 1;
          reservation.release();
        }
      }
    }),

    keepAliveOnce: operation("KeepAlive", async (request: KeepAliveRequest, _scope, caller) => {
      const principal = auth?.requirePrincipal(caller);
      const keepAlive = store.openKeepAlive();
      try {
        return await renew(keepAlive, request, principal);
      } finally {
        keepAlive.close();
      }
    }),

    updateInstance: operation(
      "UpdateInstance",
      async (request: UpdateInstanceRequest, callerScope, caller) => {
        requireWriter(caller);
        const { key, change, ...fence } = valueOf(validateUpdate(request));
        const scope = owned(callerScope, caller, key.service);
        const updated = await store.update(key, fence, (current) => applyChange(current, change), scope);
        return { instance: updated.instance, revision: updated.revision };
      },
    ),

    deregister: operation("Deregister", async (request: DeregisterRequest, callerScope, caller) => {
      requireWriter(caller);
      const { key, ...fence } = valueOf(validateDeregister(request));
      const scope = owned(callerScope, caller, key.service);
      const revision = await store.deregister(key, fence, scope);
      renewalLoad.dropped(fence.leaseId);
      logger.info({ service: key.service, instanceId: key.instanceId }, "deregistered");
      return { revision };
    }),

    getService: operation("GetService", async (request: GetServiceRequest, scope, caller) => {
      auth?.authorizeRead(caller);
      const service = valueOf(validateServiceName(request.service));
      return await getServicePage(service, request, pageSources, scope);
    }),

    listServices: operation("ListServices", (_request, _scope, caller) => {
      auth?.authorizeRead(caller);
      return Promise.resolve({ services: hub.summaries(), revision: String(hub.revision) });
    }),

    watch: async (request, sink, signal, connection, caller) => {
      const principal = auth?.principalOf(caller) ?? ANONYMOUS_PRINCIPAL; // [auth]
      const release = once(limiter.acquireWatchStream(connection, principal));
      signal.addEventListener("abort", release, { once: true });
      const released: WatchSink = {
        write: (message) => sink.write(message),
        once: (event, listener) => sink.once(event, listener),
        end: (error) => {
          release();
          sink.end(error);
        },
      };
      try {
        auth?.authorizeRead(caller); // [auth]
        const valid = valueOf(validateWatch(request));
        await hub.subscribe(released, { ...valid, splitSnapshots: request.splitSnapshots === true }, signal);
      } catch (error) {
        release();
        throw error;
      }
    },
  };

  /** [auth] A KeepAlive may renew only a lease holding an instance its principal registered. */
  const checkLeaseOwner = async (leaseId: string, principal: string) => {
    const held = await store.leaseOwner(leaseId);
    if (held === undefined) {
      throw new RegistryError("not_found", `lease ${leaseId} holds no instance; register again`);
    }
    if (held.owner !== principal) {
      throw new RegistryError("permission_denied", `lease ${leaseId} holds an instance of another principal`);
    }
  };

  const unary =
    <Request, Response>(run: UnaryOperation<Request, Response>): handleUnaryCall<Request, Response> =>
    (call, callback: sendUnaryData<Response>) => {
      run(call.request, callerScope(call), call).then(
        (response) => callback(null, response),
        (error: unknown) => callback(toServiceError(error)),
      );
    };

  const implementation: RegistryServiceServer = {
    register: unary(operations.register),

    keepAlive: (call: ServerDuplexStream<KeepAliveRequest, KeepAliveResponse>) => {
      const keepAlive = store.openKeepAlive();
      const checkRate = limiter.keepAliveRate();
      let isEnded = false;
      let replies = Promise.resolve();
      const end = (error?: RegistryError) => {
        if (isEnded) return;
        isEnded = true;
        keepAliveStreams.delete(end);
        keepAlive.close();
        if (error === undefined) call.end();
        else call.emit("error", toServiceError(failed("KeepAlive", error)));
      };
      keepAliveStreams.add(end);
      // [auth] The stream's principal, fixed for its life: each lease's owner is checked once.
      let principal: string | undefined;
      try {
        principal = auth?.requirePrincipal(call);
      } catch (error) {
        end(RegistryError.from(error));
      }
      // Requests are answered one at a time, in order; a failure ends the stream with its status.
      call.on("data", (request: KeepAliveRequest) => {
        // Counted on arrival, not when answered: a flood is cut however fast etcd answers.
        try {
          checkRate();
        } catch (error) {
          end(RegistryError.from(error));
          return;
        }
        replies = replies
          .then(async () => {
            if (isEnded) return;
            const response = await renew(keepAlive, request, principal);
            if (!isEnded) call.write(response);
          })
          .catch((error: unknown) => end(RegistryError.from(error)));
      });
      call.on("end", () => {
        replies = replies.then(() => end());
      });
      call.on("cancelled", () => {
        isEnded = true;
        keepAliveStreams.delete(end);
        keepAlive.close();
      });
      call.on("error", (error) => logger.debug({ err: error }, "keepalive stream error"));
    },

    updateInstance: unary(operations.updateInstance),
    deregister: unary(operations.deregister),
    getService: unary(operations.getService),
    listServices: unary(operations.listServices),

    watch: (call) => {
      let isEnded = false;
      const abort = new AbortController();
      const sink = watchSink(call, (error) => {
        if (isEnded) return;
        isEnded = true;
        if (error === undefined) call.end();
        else call.emit("error", toServiceError(failed("Watch", error)));
      });
      call.on("cancelled", () => abort.abort());
      call.on("error", (error) => logger.debug({ err: error }, "watch stream error"));
      // One HTTP/2 session per peer address and port: the connection.
      operations
        .watch(call.request, sink, abort.signal, call.getPeer(), call)
        .catch((error: unknown) => sink.end(RegistryError.from(error)));
    },
  };

  return {
    implementation,
    operations,
    endStreams: () => {
      for (const end of [...keepAliveStreams]) {
        end(new RegistryError("unavailable", "registry is shutting down; reconnect"));
      }
    },
  };
}

/** `release` callable any number of times, running once. */
function once(release: () => void): () => void {
  let isReleased = false;
  return () => {
    if (isReleased) return;
    isReleased = true;
    release();
  };
}

/**
 * Proven leases a registry remembers (least recently renewed forgotten first): 100,000 at about
 * 200 bytes each, 20 MB at most, covers the 50,000 instances of the capacity benchmark.
 */
const MAX_PROVEN_LEASES = 100_000;

/**
 * How long a proven lease stays proven, ms: 5–10 min, drawn per proof. At 10,000 instances that is
 * about 20 re-proofs (40 etcd reads) a second, spread out.
 */
const PROOF_TTL_MS = Object.freeze({ min: 300_000, max: 600_000 });

/**
 * When the caller of a unary call stops waiting: `call.cancelled` (grpc-js sets it for a client
 * cancel, a broken connection and a passed deadline), and the deadline, passed on to etcd requests.
 */
function callerScope(call: ServerUnaryCall<unknown, unknown>): RequestScope {
  // Read when asked, not an AbortController per call: grpc-js notifies `cancelled` when every
  // call's stream closes, finished ones too, so a listener aborted (and built a DOMException) per
  // call (issue 10, Register profile).
  const isCancelled = () => call.cancelled;
  const deadline = call.getDeadline();
  const deadlineMs =
    deadline instanceof Date ? deadline.getTime() : Number.isFinite(deadline) ? deadline : undefined;
  return { isCancelled, deadlineMs };
}

function valueOf<T>(result: Validated<T>): T {
  if (!result.ok) throw result.error;
  return result.value;
}
