import type { ServerDuplexStream, ServerUnaryCall, handleUnaryCall, sendUnaryData } from "@grpc/grpc-js";
import type { RegistryAuth } from "../auth/registry-auth.js";
import type { Logger } from "pino";
import type {
  KeepAliveRequest,
  KeepAliveResponse,
  RegistryServiceServer,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import { ANONYMOUS_PRINCIPAL, type RegistryLimiter } from "../registry-limits.js";
import { issueRegistrationToken } from "../registration-token.js";
import { hashRegistrationId, type EtcdStore, type RequestScope } from "../store/etcd-store.js";
import type { WatchHub } from "../watch/watch-hub.js";
import type { WatchSink } from "../watch/watch-subscription.js";
import { toServiceError } from "./grpc-status.js";
import { getServicePage, type ServicePageSources } from "./service-pages.js";
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
}

/** The RegistryService handlers plus a way to end their long streams. */
export interface RegistryServiceHandlers {
  readonly implementation: RegistryServiceServer;
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
  const requireWriter = (call: ServerUnaryCall<unknown, unknown>) => auth?.requirePrincipal(call);
  const owned = (scope: RequestScope, call: ServerUnaryCall<unknown, unknown>, service: string) =>
    auth === undefined ? scope : { ...scope, owner: auth.authorizeWrite(call, service) };
  // [auth] Quotas per principal key on the authenticated principal; without auth every caller is one.
  const quotaPrincipal = (scope: RequestScope) => scope.owner ?? ANONYMOUS_PRINCIPAL;
  const now = deps.now ?? (() => new Date());
  const keepAliveStreams = new Set<(error: RegistryError) => void>();
  const pageSources: ServicePageSources = {
    revision: () => hub.revision,
    cached: (service) => hub.sortedInstances(service),
    readPage: (...args) => store.readServicePage(...args),
  };

  const fail = (method: string, error: unknown) => {
    const normalised = RegistryError.from(error);
    if (normalised.code === "internal") logger.error({ err: error, method }, "internal error");
    else logger.debug({ method, code: normalised.code, reason: normalised.message }, "request failed");
    return toServiceError(normalised);
  };

  const unary =
    <Request, Response>(
      method: string,
      run: (
        request: Request,
        scope: RequestScope,
        call: ServerUnaryCall<Request, Response>,
      ) => Promise<Response>,
    ): handleUnaryCall<Request, Response> =>
    (call, callback: sendUnaryData<Response>) => {
      const scope = callerScope(call);
      // A handler that throws before its first await (validation) fails the call like a rejection.
      new Promise<Response>((resolve) => resolve(run(call.request, scope, call))).then(
        (response) => callback(null, response),
        (error: unknown) => callback(fail(method, error)),
      );
    };

  const implementation: RegistryServiceServer = {
    register: unary("Register", async (request, callerScope, call) => {
      try {
        requireWriter(call);
        const { instance, ttlSeconds, registrationId } = valueOf(
          validateRegister(request, now().toISOString(), deps.validation),
        );
        const scope = owned(callerScope, call, instance.service);
        const registrationHash =
          registrationId === undefined ? undefined : hashRegistrationId(registrationId);
        // Issued here, returned once, stored only as its hash, never logged.
        const token = issueRegistrationToken();
        const registration = await limiter.admitInstance(
          instance,
          () => store.register(instance, ttlSeconds, { registrationHash, tokenHash: token.hash }, scope),
          quotaPrincipal(scope),
        );
        metrics.registrations.inc({ result: registration.isAdopted ? "adopted" : "ok" });
        const fields = { service: instance.service, instanceId: instance.instanceId };
        logger.info({ ...fields, adopted: registration.isAdopted }, "registered");
        // A lease id is not a credential any more, but it is still not for info-level logs.
        logger.debug({ ...fields, leaseId: registration.leaseId }, "registered lease");
        return {
          leaseId: registration.leaseId,
          ttlSeconds: String(registration.ttlSeconds),
          revision: registration.revision,
          instance: registration.instance,
          registrationToken: token.token,
        };
      } catch (error) {
        metrics.registrations.inc({ result: RegistryError.from(error).code });
        throw error;
      }
    }),

    keepAlive: (call: ServerDuplexStream<KeepAliveRequest, KeepAliveResponse>) => {
      const keepAlive = store.openKeepAlive();
      // [auth] The stream's principal, and the leases it has been shown to own (checked once each).
      let streamPrincipal: string | undefined;
      const ownedLeases = new Set<string>();
      // Leases this stream proved it owns (lease id → token hash); a lease is renewed only once
      // etcd confirmed the pair, then without asking again (a deregistered lease is revoked, so
      // its renewal answers NOT_FOUND anyway).
      const provenLeases = new Map<string, string>();
      const checkRate = limiter.keepAliveRate();
      let isEnded = false;
      let replies = Promise.resolve();
      const end = (error?: RegistryError) => {
        if (isEnded) return;
        isEnded = true;
        keepAliveStreams.delete(end);
        keepAlive.close();
        if (error === undefined) call.end();
        else call.emit("error", fail("KeepAlive", error));
      };
      keepAliveStreams.add(end);
      try {
        streamPrincipal = auth?.requirePrincipal(call);
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
            const fence = valueOf(validateKeepAlive(request));
            const { leaseId } = fence;
            if (provenLeases.get(leaseId) !== fence.tokenHash) {
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
              if (provenLeases.size >= MAX_PROVEN_LEASES_PER_STREAM) provenLeases.clear();
              provenLeases.set(leaseId, fence.tokenHash);
            }
            if (streamPrincipal !== undefined && !ownedLeases.has(leaseId)) {
              await checkLeaseOwner(leaseId, streamPrincipal);
              ownedLeases.add(leaseId);
            }
            if (isEnded) return;
            const ttlSeconds = await keepAlive.renew(leaseId);
            if (isEnded) return;
            if (ttlSeconds <= 0) {
              end(
                new RegistryError(
                  "not_found",
                  `lease ${leaseId} not found (expired or revoked); register again`,
                ),
              );
            } else {
              call.write({ leaseId, ttlSeconds: String(ttlSeconds) });
            }
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

    updateInstance: unary("UpdateInstance", async (request, callerScope, call) => {
      requireWriter(call);
      const { key, change, ...fence } = valueOf(validateUpdate(request));
      const scope = owned(callerScope, call, key.service);
      const updated = await store.update(key, fence, (current) => applyChange(current, change), scope);
      return { instance: updated.instance, revision: updated.revision };
    }),

    deregister: unary("Deregister", async (request, callerScope, call) => {
      requireWriter(call);
      const { key, ...fence } = valueOf(validateDeregister(request));
      const scope = owned(callerScope, call, key.service);
      const revision = await store.deregister(key, fence, scope);
      logger.info({ service: key.service, instanceId: key.instanceId }, "deregistered");
      return { revision };
    }),

    getService: unary("GetService", async (request, scope, call) => {
      auth?.authorizeRead(call);
      const service = valueOf(validateServiceName(request.service));
      return await getServicePage(service, request, pageSources, scope);
    }),

    listServices: unary("ListServices", (_request, _scope, call) => {
      auth?.authorizeRead(call);
      return Promise.resolve({ services: hub.summaries(), revision: String(hub.revision) });
    }),

    watch: (call) => {
      let isEnded = false;
      const abort = new AbortController();
      let release = () => {};
      const sink: WatchSink = {
        write: (message) => call.write(message),
        once: (event, listener) => call.once(event, listener),
        end: (error) => {
          if (isEnded) return;
          isEnded = true;
          release();
          if (error === undefined) call.end();
          else call.emit("error", fail("Watch", error));
        },
      };
      call.on("cancelled", () => {
        release();
        abort.abort();
      });
      try {
        // One HTTP/2 session per peer address and port: the connection.
        release = limiter.acquireWatchStream(
          call.getPeer(),
          auth?.principalOf(call) ?? ANONYMOUS_PRINCIPAL, // [auth]
        );
      } catch (error) {
        sink.end(RegistryError.from(error));
        return;
      }
      call.on("error", (error) => logger.debug({ err: error }, "watch stream error"));
      try {
        auth?.authorizeRead(call);
      } catch (error) {
        sink.end(RegistryError.from(error));
        return;
      }
      const request = validateWatch(call.request);
      if (!request.ok) {
        sink.end(request.error);
        return;
      }
      hub
        .subscribe(
          sink,
          { ...request.value, splitSnapshots: call.request.splitSnapshots === true },
          abort.signal,
        )
        .catch((error: unknown) => sink.end(RegistryError.from(error)));
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

  return {
    implementation,
    endStreams: () => {
      for (const end of [...keepAliveStreams]) {
        end(new RegistryError("unavailable", "registry is shutting down; reconnect"));
      }
    },
  };
}

/** Leases one KeepAlive stream remembers as proven; a registrar's stream renews one. */
const MAX_PROVEN_LEASES_PER_STREAM = 64;

/**
 * When the caller of a unary call stops waiting: its signal aborts on cancel (grpc-js emits
 * `cancelled` for a client cancel, a broken connection and a passed deadline), and the deadline
 * is passed on to etcd requests.
 */
function callerScope(call: ServerUnaryCall<unknown, unknown>): RequestScope {
  const abort = new AbortController();
  call.once("cancelled", () => abort.abort());
  if (call.cancelled) abort.abort();
  const deadline = call.getDeadline();
  const deadlineMs =
    deadline instanceof Date ? deadline.getTime() : Number.isFinite(deadline) ? deadline : undefined;
  return { signal: abort.signal, deadlineMs };
}

function valueOf<T>(result: Validated<T>): T {
  if (!result.ok) throw result.error;
  return result.value;
}
