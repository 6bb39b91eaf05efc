import { Server } from "@grpc/grpc-js";
import { isIP } from "node:net";
import { isTlsOn, serverCredentials } from "../client/tls/tls-files.js";
import { RegistryAuth } from "./auth/registry-auth.js";
import { loadSync } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation, protoPath as healthProtoPath } from "grpc-health-check";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { instrumentService } from "../client/server/grpc-server-metrics.js";
import type { HttpEndpoints } from "../client/server/http-endpoints.js";
import { shutdownGrpcServer } from "../client/server/shutdown-grpc-server.js";
import { startAdminServer } from "./admin/admin-server.js";
import { guardUndecodable, registryServiceDefinition } from "./api/request-decoding.js";
import { watchWriteInterceptor } from "./api/watch-writer.js";
import { createRegistryService } from "./api/registry-service.js";
import { EventLoopDelay } from "./api/overload-guard.js";
import { ConsoleFeed } from "./console/console-feed.js";
import { createHttpApi } from "./http-api/http-api.js";
import { fetchMetricsOverHttps } from "./console/metrics-fetch.js";
import { consoleRoutes } from "./console/console-routes.js";
import { EtcdReadiness } from "./readiness.js";
import { RegistryLimiter } from "./registry-limits.js";
import { RegistryMetrics } from "./registry-metrics.js";
import { resolveRegistryOptions, type RegistryOptions } from "./registry-options.js";
import { EtcdStore } from "./store/etcd-store.js";
import type { ServicesWatch } from "./store/services-watch.js";
import { WatchHub } from "./watch/watch-hub.js";

export type { RegistryOptions } from "./registry-options.js";
export type { TlsFiles } from "../client/tls/tls-files.js";
export {
  DEFAULT_REGISTRY_LIMITS,
  type RegistryLimitOptions,
  type RegistryLimits,
} from "./registry-limits.js";
export { RegistryError, type RegistryErrorCode } from "./registry-error.js";
export {
  DEFAULT_OVERLOAD_OPTIONS,
  type OverloadOptions,
  type ResolvedOverloadOptions,
} from "./api/overload-guard.js";

/** A running registry; see {@link startRegistry}. */
export interface RunningRegistry {
  /** host:port the gRPC server is bound to (real port). */
  readonly address: string;
  /** host:port of the admin HTTP server, or undefined. */
  readonly adminAddress: string | undefined;
  /** Graceful, idempotent: ends Watch streams with UNAVAILABLE, shuts the gRPC and admin servers, closes the etcd client, clears timers. */
  close(): Promise<void>;
}

const registryServiceName = "leasehold.registry.v1.RegistryService";

/**
 * gRPC server options: keepalive toward callers, and a ping policy that lets callers ping every 5 s.
 * No channelz (nothing here serves it): its per-call and per-message bookkeeping showed in the
 * Register and Watch fan-out profiles (issue 10).
 */
const serverOptions = {
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.http2.min_ping_interval_without_data_ms": 5_000,
  "grpc.enable_channelz": 0,
};

/**
 * Starts the registry facade (DESIGN §3): `leasehold.registry.v1.RegistryService`,
 * `grpc.health.v1.Health` (SERVING while etcd answers; probed every second, NOT_SERVING after 2 failed probes in a row) and server
 * reflection on `listen`, plus the admin HTTP server on `adminListen` (with the HTTP/JSON API
 * unless `httpApi` is false). It first lists every
 * instance from etcd and starts the one etcd watch that feeds GetService, ListServices and Watch.
 *
 * @throws RegistryError `invalid_argument` for bad options; the etcd error when etcd cannot be
 * read at start (nothing is left running); the bind error when an address is taken.
 */
export async function startRegistry(options: RegistryOptions): Promise<RunningRegistry> {
  const resolved = resolveRegistryOptions(options);
  const { logger, metricsRegistry } = resolved;
  // Files are read first: a bad policy, token or certificate file fails the start before anything runs.
  const auth =
    resolved.authPolicyFile === undefined
      ? undefined
      : RegistryAuth.fromFiles(resolved.authPolicyFile, resolved.authTokensFile);
  const credentials = serverCredentials(resolved.tls);
  const metrics = new RegistryMetrics(metricsRegistry, resolved.limits.maxServiceLabels);
  const store = new EtcdStore({
    endpoints: resolved.etcdEndpoints,
    tls: resolved.etcdTls,
    auth: resolved.etcdAuth,
    prefix: resolved.prefix,
    requestTimeoutMs: resolved.etcdRequestTimeoutMs,
    watchCheckIntervalMs: resolved.watchCheckIntervalMs,
    watchCheckTimeoutMs: resolved.watchCheckTimeoutMs,
    watchStaleAfterMs: resolved.watchStaleAfterMs,
    metrics,
    logger,
  });
  const limiter = new RegistryLimiter({
    limits: resolved.limits,
    metrics,
    cache: { instanceCount: (service, instanceId) => hub.instanceCount(service, instanceId) },
  });
  const resumes = limiter.coalesceResumes((revision, service) => store.listAt(revision, service));
  const hub: WatchHub = new WatchHub({
    historyMaxDeltas: resolved.historyMaxDeltas,
    streamLimits: { maxQueuedBytes: resolved.maxQueuedWatchBytes, maxBehindMs: resolved.maxWatchBehindMs },
    progressIntervalMs: resolved.progressIntervalMs,
    minSendIntervalMs: resolved.watchDebounceMs,
    // Resumes that read etcd share one read per service and revision, and are capped per second.
    listAt: (revision, service) => resumes(revision, service),
    metrics,
    logger,
  });

  const health = new HealthImplementation({ "": "NOT_SERVING", [registryServiceName]: "NOT_SERVING" });
  const readiness = new EtcdReadiness({
    probe: () => store.probe(resolved.probeTimeoutMs),
    intervalMs: resolved.probeIntervalMs,
    changed: (isReady) => {
      const status = isReady ? "SERVING" : "NOT_SERVING";
      health.setStatus("", status);
      health.setStatus(registryServiceName, status);
      logger.info({ etcd: status }, "etcd readiness changed");
    },
  });
  const eventLoopDelay = new EventLoopDelay();
  const api = createRegistryService({
    overload: resolved.overload,
    eventLoopDelayMs: () => eventLoopDelay.readMs(),
    store,
    hub,
    limiter,
    metrics,
    logger,
    validation: { allowForeignMetricsAddress: resolved.allowForeignMetricsAddress },
    auth,
  });
  const server = new Server({
    ...serverOptions,
    ...limiter.serverOptions(),
    interceptors: [watchWriteInterceptor(registryServiceDefinition.watch.path)],
  });
  const consoleFeed = new ConsoleFeed({
    hub,
    isReady: () => readiness.isReady,
    leaseTimeToLive: (key) => store.leaseTimeToLive(key),
    fetchMetrics: isTlsOn(resolved.tls) ? fetchMetricsOverHttps(resolved.tls) : undefined,
    logger,
  });
  let admin: HttpEndpoints | undefined;
  let watch: ServicesWatch | undefined;
  let isStarted = false;

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      readiness.close();
      eventLoopDelay.close();
      consoleFeed.close();
      hub.close();
      api.endStreams();
      if (isStarted) await shutdownGrpcServer(server, resolved.shutdownGraceMs);
      else server.forceShutdown();
      await admin?.close();
      await watch?.close();
      store.close();
      // A registry that never started (etcd unreachable, port taken) says so through its caller, once.
      if (isStarted) logger.info("registry closed");
    })());

  try {
    watch = await store.watchServices(hub);
    hub.start();
    await readiness.start();
    server.addService(
      registryServiceDefinition,
      instrumentService(registryServiceDefinition, guardUndecodable(api.implementation), metricsRegistry),
    );
    health.addToServer(server);
    new ReflectionService(loadReflectedProtos()).addToServer(server);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${resolved.listen.host}:${resolved.listen.port}`, credentials, (error, bound) =>
        error === null ? resolve(bound) : reject(error),
      ),
    );
    isStarted = true;
    const address = `${resolved.listen.host}:${port}`;
    if (resolved.adminListen !== undefined) {
      admin = await startAdminServer(resolved.adminListen, {
        metricsRegistry,
        isReady: () => readiness.isReady,
        instances: () => hub.instances(),
        routes: consoleRoutes(consoleFeed),
        ...(resolved.httpApi && { handler: createHttpApi(api.operations, logger) }),
        tls: resolved.tls,
      });
    }
    logger.info(
      {
        address,
        adminAddress: admin?.address,
        revision: String(hub.revision),
        tls: isTlsOn(resolved.tls) ? (resolved.tls.caFile === undefined ? "tls" : "mtls") : "off",
        auth: auth === undefined ? "off" : "on",
      },
      "registry started",
    );
    if (!isLoopback(resolved.listen.host) && (!isTlsOn(resolved.tls) || auth === undefined)) {
      logger.warn(
        { address, tls: isTlsOn(resolved.tls), auth: auth !== undefined },
        "registry listens beyond loopback without TLS and auth: anyone who reaches it can read and " +
          "change membership (set --tls-cert/--tls-key/--tls-ca and --auth-policy)",
      );
    }
    return { address, adminAddress: admin?.address, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/** True for `localhost`, 127.0.0.0/8 and ::1 (brackets allowed). */
function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, "$1");
  if (bare === "localhost" || bare === "::1") return true;
  return isIP(bare) === 4 && bare.startsWith("127.");
}

/** The protos served by reflection (registry and health), resolved next to this module (works from any cwd). */
function loadReflectedProtos(): ReturnType<typeof loadSync> {
  const registryRoot = fileURLToPath(new URL("../proto/", import.meta.url));
  const healthRoot = dirname(dirname(dirname(healthProtoPath))); // .../proto of health/v1/health.proto
  return loadSync(["leasehold/registry/v1/registry.proto", "health/v1/health.proto"], {
    includeDirs: [registryRoot, healthRoot],
  });
}
