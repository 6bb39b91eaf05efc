import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { Server, status, type handleUnaryCall, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation } from "grpc-health-check";
import type { Logger } from "pino";
import { Registry } from "prom-client";
import { collectProcessMetrics } from "../client/metrics/process-metrics.js";
import { sleep } from "../client/backoff.js";
import { connectRegistry } from "../client/registry-connection.js";
import {
  channelCredentials,
  serverCredentials,
  type ClientSecurity,
  type TlsFiles,
} from "../client/tls/tls-files.js";
import { Registrar } from "../client/registration/registrar.js";
import { instrumentService } from "../client/server/grpc-server-metrics.js";
import { LoadReporter, type SimulatedCpu } from "../client/server/load-reporter.js";
import { isSameHost, isWildcardHost, splitHostPort } from "../client/server/host-port.js";
import { metricsRoute, startHttpEndpoints } from "../client/server/http-endpoints.js";
import { routableHost } from "../client/server/routable-host.js";
import { shutdownGrpcServer } from "../client/server/shutdown-grpc-server.js";
import type { DemoService } from "./demo-service.js";

/** Options of {@link startServiceInstance}. */
export interface ServiceInstanceOptions {
  /** Registry address(es), `host:port[,host:port]`. */
  readonly registry: string;
  /** Default `<service>-<6 hex digits>`. */
  readonly instanceId?: string | undefined;
  /** 0..10000; default 1. */
  readonly weight?: number | undefined;
  readonly zone?: string | undefined;
  /** Instance metadata (DESIGN §2: ≤ 32 keys, ≤ 4 KiB), e.g. `{ version: "v2" }` for subset routing. */
  readonly metadata?: Readonly<Record<string, string>> | undefined;
  /** Lease TTL in seconds; default 10. */
  readonly ttlSeconds?: number | undefined;
  /** gRPC bind address; default `0.0.0.0:0` (any free port). */
  readonly listen?: string | undefined;
  /** Address registered for callers; default the bound port on the first non-internal IPv4 (or the listen host). */
  readonly advertise?: string | undefined;
  /**
   * /metrics bind address; default `127.0.0.1:0` (loopback, free port). It is registered as the
   * instance's `metrics_address` (for Prometheus HTTP SD) only when on the host of `address`: a
   * wildcard bind (`0.0.0.0:9464`) is registered at the advertised host.
   */
  readonly metricsListen?: string | undefined;
  /** Share of calls answered UNAVAILABLE, 0..1; default 0. */
  readonly failRate?: number | undefined;
  /** Added latency per call in ms; default 0. */
  readonly latencyMs?: number | undefined;
  /**
   * Report this CPU utilization (0..1, or a range a new value is drawn from every second) in the
   * ORCA load reports instead of the process's measured CPU use; default measured.
   */
  readonly simulateCpu?: SimulatedCpu | undefined;
  /** Time between DRAINING and Deregister on shutdown, for in-flight calls and watchers; default 300 ms. */
  readonly drainMs?: number | undefined;
  /**
   * TLS of the instance's gRPC server and /metrics (HTTPS): cert and key; a CA requires client
   * certificates (mTLS). Default plaintext.
   */
  readonly tls?: TlsFiles | undefined;
  /** TLS files and bearer token toward the registry; default plaintext, anonymous. */
  readonly registrySecurity?: ClientSecurity | undefined;
  readonly logger?: Logger | undefined;
}

/** A running demo service instance, registered with the registry. */
export interface ServiceInstance {
  readonly instanceId: string;
  /** Advertised gRPC address. */
  readonly address: string;
  /** Where /metrics answers: the advertised host when bound on a wildcard, else the bound address. */
  readonly metricsAddress: string;
  /** True when {@link metricsAddress} is registered (listed on `/sd/prometheus`). */
  readonly isMetricsListed: boolean;
  /**
   * Its ORCA load reports (the `endpoint-load-metrics-bin` trailer of every call): set an
   * application utilization or named utilizations here.
   */
  readonly load: LoadReporter;
  /** While true every call answers UNAVAILABLE (fault injection; the `f` key). */
  isFailing: boolean;
  /** Registers again after {@link unregister} (the `r` key). */
  register(): Promise<void>;
  /** Deregisters but keeps serving (the `u` key). */
  unregister(): Promise<void>;
  /** Changes weight, zone or metadata live (`Registrar.update`; the `w N` line sets the weight). */
  update(change: {
    weight?: number;
    zone?: string;
    metadata?: Readonly<Record<string, string>>;
  }): Promise<void>;
  /**
   * Graceful shutdown (SIGTERM, the `q` key): health NOT_SERVING, mark DRAINING, wait `drainMs`,
   * Deregister, then stop the gRPC server once in-flight calls finish. Idempotent.
   */
  shutdown(): Promise<void>;
}

/**
 * Serves `service` on a gRPC server with health, per-call metrics and fault injection, and
 * registers it through a {@link Registrar}.
 * @throws the registry's ServiceError when the registration is refused (INVALID_ARGUMENT ...).
 */
export async function startServiceInstance(
  service: DemoService,
  options: ServiceInstanceOptions,
): Promise<ServiceInstance> {
  const instanceId = options.instanceId ?? `${service.name}-${randomBytes(3).toString("hex")}`;
  const listen = splitHostPort(options.listen ?? "0.0.0.0:0");
  const failRate = options.failRate ?? 0;
  const latencyMs = options.latencyMs ?? 0;
  const drainMs = options.drainMs ?? 300;
  const logger = options.logger?.child({ service: service.name, instanceId });

  const metrics = new Registry();
  collectProcessMetrics(metrics, "service");
  const health = new HealthImplementation({ "": "SERVING", [grpcServiceName(service)]: "SERVING" });
  const load = new LoadReporter({ simulateCpu: options.simulateCpu });
  const server = new Server({ interceptors: [load.interceptor] });
  health.addToServer(server);
  const state = { isFailing: false };
  const stateful = service.stateful?.(instanceId, logger, channelCredentials(options.tls));
  const faulty = withFaults(
    stateful?.implementation ?? service.implement(instanceId),
    () => state.isFailing || Math.random() < failRate,
    {
      latencyMs,
      instanceId,
    },
  );
  server.addService(service.definition, instrumentService(service.definition, faulty, metrics));
  // Server reflection, so `leasehold call` (and grpcurl) learn the methods from the instance itself.
  new ReflectionService(demoProtos(), { services: [grpcServiceName(service)] }).addToServer(server);
  // Metrics first: a failed gRPC bind then only has an HTTP server to close, never a bound port.
  const metricsServer = await startHttpEndpoints(
    options.metricsListen ?? "127.0.0.1:0",
    {
      "/metrics": metricsRoute(metrics),
    },
    options.tls,
  );
  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${listen.host}:${listen.port}`, serverCredentials(options.tls), (error, bound) =>
        error === null ? resolve(bound) : reject(error),
      ),
    );
  } catch (error) {
    await metricsServer.close();
    throw error;
  }
  load.start();
  const address = options.advertise ?? `${routableHost(listen.host)}:${port}`;
  const advertisedHost = splitHostPort(address).host;
  const metricsBound = splitHostPort(metricsServer.address);
  const metricsAddress = `${isWildcardHost(metricsBound.host) ? advertisedHost : metricsBound.host}:${metricsBound.port}`;
  // The registry refuses a metrics_address on another host than the address (a target for the
  // Prometheus that scrapes /sd/prometheus); a loopback /metrics of a routable instance stays unlisted.
  const isMetricsListed = isSameHost(metricsAddress, address);

  const registryClient = connectRegistry(options.registry, {}, options.registrySecurity);
  const registrar = new Registrar({
    registry: registryClient,
    instance: {
      service: service.name,
      instanceId,
      address,
      weight: options.weight,
      zone: options.zone,
      metadata: options.metadata,
      metricsAddress: isMetricsListed ? metricsAddress : "",
    },
    ttlSeconds: options.ttlSeconds,
    logger,
    onStateChanged: (state, previous) => stateful?.registrarStateChanged?.(state, previous),
  });
  let shutdown: Promise<void> | undefined;
  const stopEverything = async (): Promise<void> => {
    health.setStatus("", "NOT_SERVING");
    health.setStatus(grpcServiceName(service), "NOT_SERVING");
    await stateful?.close();
    // A stale registrar still holds its lease (the registry or etcd is away): drain it too.
    if (registrar.state === "registered" || registrar.state === "stale") {
      await registrar.drain().catch((error: unknown) => logger?.warn({ err: error }, "drain failed"));
      await sleep(drainMs);
    }
    await registrar.close();
    registryClient.close();
    await shutdownGrpcServer(server, 5000);
    load.close();
    await metricsServer.close();
    logger?.info("stopped");
  };
  try {
    await (stateful?.start({ registry: registryClient, registrar }) ?? registrar.start());
  } catch (error) {
    await stopEverything();
    throw error;
  }
  return {
    instanceId,
    address,
    metricsAddress,
    isMetricsListed,
    load,
    get isFailing() {
      return state.isFailing;
    },
    set isFailing(value: boolean) {
      state.isFailing = value;
    },
    register: async () => await registrar.start(),
    unregister: async () => await registrar.stop(),
    update: async (change) => await registrar.update(change),
    shutdown: async () => await (shutdown ??= stopEverything()),
  };
}

let loadedDemoProtos: PackageDefinition | undefined;

/** The demo services' .proto sources, resolved next to this module (works from any cwd); loaded once. */
function demoProtos(): PackageDefinition {
  return (loadedDemoProtos ??= loadSync(
    ["leasehold/demo/v1/calculator.proto", "leasehold/demo/v1/echo.proto", "leasehold/demo/v1/kv.proto"],
    {
      includeDirs: [fileURLToPath(new URL("../proto/", import.meta.url))],
    },
  ));
}

/** `leasehold.demo.v1.CalculatorService` from a definition's method path. */
function grpcServiceName(service: DemoService): string {
  const first = Object.values(service.definition)[0];
  return first?.path.split("/")[1] ?? service.name;
}

/** Wraps every unary handler: adds `latencyMs`, then answers UNAVAILABLE while `shouldFail()`. */
function withFaults(
  implementation: UntypedServiceImplementation,
  shouldFail: () => boolean,
  { latencyMs, instanceId }: { latencyMs: number; instanceId: string },
): UntypedServiceImplementation {
  const wrapped: UntypedServiceImplementation = {};
  for (const [name, handler] of Object.entries(implementation)) {
    // grpc-js types handlers per call kind; one wrapper serves all four, so it is typed loosely.
    const run = handler as (call: FaultyCall, callback?: FaultyCallback) => void;
    wrapped[name] = ((call: FaultyCall, callback?: FaultyCallback) => {
      const answer = (): void => {
        if (!shouldFail()) return run(call, callback);
        const failure = { code: status.UNAVAILABLE, details: `injected failure on ${instanceId}` };
        if (callback !== undefined) callback(failure);
        else call.emit("error", failure); // streaming responses: ends the call with that status
      };
      if (latencyMs > 0) setTimeout(answer, latencyMs);
      else answer();
    }) as handleUnaryCall<unknown, unknown>;
  }
  return wrapped;
}

/** What the fault wrapper needs of a call of any kind. */
interface FaultyCall {
  emit(event: "error", error: object): boolean;
}
type FaultyCallback = (error: object | null, ...rest: unknown[]) => void;
