import { pino, type Logger } from "pino";
import { Registry } from "prom-client";
import { RegistryError } from "./registry-error.js";
import { splitHostPort, type HostPort } from "../client/server/http-endpoints.js";

/** Options of {@link startRegistry}. */
export interface RegistryOptions {
  /** gRPC listen address host:port; port 0 picks a free one. */
  listen: string;
  /** Admin HTTP host:port (/metrics, /healthz, /readyz, /sd/prometheus); undefined = no admin server. */
  adminListen?: string | undefined;
  /** etcd client URLs, e.g. ["http://127.0.0.1:2379"]. */
  etcdEndpoints: readonly string[];
  /** Key prefix; default "/leasehold/". Keys are `${prefix}v1/services/{service}/{instance_id}`. */
  prefix?: string | undefined;
  /** Interval of Watch `progress` messages, in milliseconds; default 5000. */
  progressIntervalMs?: number | undefined;
  /** Logger; default silent. */
  logger?: Logger | undefined;
  /** prom-client registry to register metrics in; default a new one (never the global). */
  metricsRegistry?: Registry | undefined;
}

/** {@link RegistryOptions} validated, defaults applied, frozen. */
export interface ResolvedRegistryOptions {
  readonly listen: HostPort;
  readonly adminListen: HostPort | undefined;
  readonly etcdEndpoints: readonly string[];
  readonly prefix: string;
  readonly progressIntervalMs: number;
  readonly logger: Logger;
  readonly metricsRegistry: Registry;
  /** Deadline of unary etcd requests: 5000 ms. */
  readonly etcdRequestTimeoutMs: number;
  /** How often etcd is probed for health/readiness: every 1000 ms, each probe allowed 1000 ms. */
  readonly probeIntervalMs: number;
  readonly probeTimeoutMs: number;
  /** Deltas kept in memory for resumes: 4096. */
  readonly historyMaxDeltas: number;
  /** Messages a slow Watch stream may have waiting before RESOURCE_EXHAUSTED: 1024. */
  readonly maxQueuedWatchMessages: number;
  /** Time in-flight calls get at close() before they are cut: 5000 ms. */
  readonly shutdownGraceMs: number;
}

/**
 * Validates options once and applies defaults.
 * @throws RegistryError `invalid_argument` naming the bad option.
 */
export function resolveRegistryOptions(options: RegistryOptions): ResolvedRegistryOptions {
  const prefix = options.prefix ?? "/leasehold/";
  if (!/^\/([^/\s]+\/)*$/.test(prefix)) {
    throw invalid(`prefix must start and end with "/" (e.g. "/leasehold/"), got ${JSON.stringify(prefix)}`);
  }
  if (options.etcdEndpoints.length === 0) throw invalid("etcdEndpoints: at least one URL is required");
  for (const endpoint of options.etcdEndpoints) {
    if (!/^https?:\/\/[^/\s]+\/?$/.test(endpoint)) {
      throw invalid(`etcdEndpoints: expected http(s)://host:port, got ${JSON.stringify(endpoint)}`);
    }
  }
  const progressIntervalMs = options.progressIntervalMs ?? 5000;
  if (!Number.isInteger(progressIntervalMs) || progressIntervalMs < 10) {
    throw invalid(`progressIntervalMs must be an integer >= 10, got ${progressIntervalMs}`);
  }
  return Object.freeze({
    listen: parseListen(options.listen, "listen"),
    adminListen:
      options.adminListen === undefined ? undefined : parseListen(options.adminListen, "adminListen"),
    etcdEndpoints: Object.freeze([...options.etcdEndpoints]),
    prefix,
    progressIntervalMs,
    logger: options.logger ?? pino({ level: "silent" }),
    metricsRegistry: options.metricsRegistry ?? new Registry(),
    etcdRequestTimeoutMs: 5000,
    probeIntervalMs: 1000,
    probeTimeoutMs: 1000,
    historyMaxDeltas: 4096,
    maxQueuedWatchMessages: 1024,
    shutdownGraceMs: 5000,
  });
}

function parseListen(value: string, option: string): HostPort {
  try {
    return splitHostPort(value);
  } catch {
    throw invalid(`${option} must be host:port (port 0 picks a free one), got ${JSON.stringify(value)}`);
  }
}

function invalid(message: string): RegistryError {
  return new RegistryError("invalid_argument", `RegistryOptions.${message}`);
}
