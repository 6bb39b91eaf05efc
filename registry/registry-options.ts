import { pino, type Logger } from "pino";
import { Registry } from "prom-client";
import { RegistryError } from "./registry-error.js";
import { splitHostPort, type HostPort } from "../client/server/host-port.js";
import type { TlsFiles } from "../client/tls/tls-files.js";
import { resolveRegistryLimits, type RegistryLimitOptions, type RegistryLimits } from "./registry-limits.js";
import {
  resolveOverloadOptions,
  type OverloadOptions,
  type ResolvedOverloadOptions,
} from "./api/overload-guard.js";

/** Options of {@link startRegistry}. */
export interface RegistryOptions {
  /** gRPC listen address host:port; port 0 picks a free one. */
  listen: string;
  /** Admin HTTP host:port (/metrics, /healthz, /readyz, /sd/prometheus, /ui); undefined = no admin server. */
  adminListen?: string | undefined;
  /**
   * Serve the HTTP/JSON API (`/leasehold.registry.v1.RegistryService/...`, see README "HTTP API")
   * on the admin server; default true. It has the gRPC API's powers: keep the admin port private.
   */
  httpApi?: boolean | undefined;
  /** etcd client URLs, e.g. ["http://127.0.0.1:2379"]. */
  etcdEndpoints: readonly string[];
  /** Key prefix; default "/leasehold/". Keys are `${prefix}v1/services/{service}/{instance_id}`. */
  prefix?: string | undefined;
  /** Interval of Watch `progress` messages, in milliseconds; default 5000. */
  progressIntervalMs?: number | undefined;
  /**
   * Approximate bytes of coalesced changes a Watch stream that is behind may have waiting before
   * it is ended with RESOURCE_EXHAUSTED; default 8 MiB (8388608).
   */
  maxQueuedWatchBytes?: number | undefined;
  /**
   * How long a Watch stream may stay behind without draining before it is ended with
   * RESOURCE_EXHAUSTED, in milliseconds; default 30000.
   */
  maxWatchBehindMs?: number | undefined;
  /**
   * Least time between two deltas sent to Watch streams, in milliseconds; default 0 (each etcd
   * watch response's changes at once while the registry is idle, each event-loop turn's while it
   * keeps sending). With N > 0 a change after a quieter spell goes out at
   * once and faster ones share a delta: under churn that cuts the registry's per-message CPU
   * (issue 10: fan-out 2.05× → 1.43× raw etcd at 20 ms), but it delays every change of a stream
   * that changes about once per N ms or faster by up to N ms (push p99 at 50 changes/s: 5.4 → 21 ms).
   */
  watchDebounceMs?: number | undefined;
  /** Quotas (instances per service, Watch streams per connection, rates, message sizes); see {@link RegistryLimitOptions} for each default. */
  limits?: RegistryLimitOptions | undefined;
  /**
   * Overload protection: while the event loop lags, keepalive renewals wait on etcd, or too many
   * Registers are in flight, new Registers answer RESOURCE_EXHAUSTED with a `grpc-retry-pushback-ms`
   * trailer and KeepAlives go on; see {@link OverloadOptions} for each threshold and default.
   */
  overload?: OverloadOptions | undefined;
  /**
   * Accept a Register whose `metrics_address` is on another host than its `address`; default
   * false (INVALID_ARGUMENT), since Prometheus scrapes every `metrics_address` on `/sd/prometheus`.
   */
  allowForeignMetricsAddress?: boolean | undefined;
  /**
   * TLS of the gRPC server and the admin HTTP server (HTTPS): cert and key; a CA too turns on mTLS
   * (client certificates required). Default plaintext. Files are re-read every 60 s.
   */
  tls?: TlsFiles | undefined;
  /** TLS toward etcd: `caFile` verifies etcd (default system roots), cert and key are the client certificate. */
  etcdTls?: TlsFiles | undefined;
  /** etcd user and password (etcd auth); the CLI reads them only from env or a file, never a flag. */
  etcdAuth?: { readonly username: string; readonly password: string } | undefined;
  /**
   * Policy file that turns on authenticated, authorised writes (issue 7): see
   * `registry/auth/registry-auth.ts` for its shape. Default: auth off.
   */
  authPolicyFile?: string | undefined;
  /** Token file: `NAME SHA256HEX` per line (tokens stored hashed). Only with `authPolicyFile`. */
  authTokensFile?: string | undefined;
  /** Logger; default silent. */
  logger?: Logger | undefined;
  /** prom-client registry to register metrics in; default a new one (never the global). */
  metricsRegistry?: Registry | undefined;
}

/** {@link RegistryOptions} validated, defaults applied, frozen. */
export interface ResolvedRegistryOptions {
  readonly listen: HostPort;
  readonly adminListen: HostPort | undefined;
  readonly httpApi: boolean;
  readonly etcdEndpoints: readonly string[];
  readonly prefix: string;
  readonly tls: TlsFiles | undefined;
  readonly etcdTls: TlsFiles | undefined;
  readonly etcdAuth: { readonly username: string; readonly password: string } | undefined;
  readonly authPolicyFile: string | undefined;
  readonly authTokensFile: string | undefined;
  readonly progressIntervalMs: number;
  readonly limits: RegistryLimits;
  readonly overload: ResolvedOverloadOptions;
  /** See {@link RegistryOptions.allowForeignMetricsAddress}: default false. */
  readonly allowForeignMetricsAddress: boolean;
  readonly logger: Logger;
  readonly metricsRegistry: Registry;
  /** Deadline of unary etcd requests: 5000 ms. */
  readonly etcdRequestTimeoutMs: number;
  /** How often etcd is probed for health/readiness: every 1000 ms, each probe allowed 1000 ms. */
  readonly probeIntervalMs: number;
  readonly probeTimeoutMs: number;
  /** Deltas kept in memory for resumes: 4096. */
  readonly historyMaxDeltas: number;
  /** See {@link RegistryOptions.maxQueuedWatchBytes}: default 8 MiB. */
  readonly maxQueuedWatchBytes: number;
  /** See {@link RegistryOptions.maxWatchBehindMs}: default 30000 ms. */
  readonly maxWatchBehindMs: number;
  /** See {@link RegistryOptions.watchDebounceMs}: default 0 ms. */
  readonly watchDebounceMs: number;
  /**
   * The etcd watch's currency check: a linearizable read every 1000 ms, each allowed 1000 ms; the
   * watch (and so every Watch stream's progress) is stale once none confirmed it for 3000 ms, so
   * callers learn of an etcd stall within ~4.5 s (issue 6 asks for 5 s).
   */
  readonly watchCheckIntervalMs: number;
  readonly watchCheckTimeoutMs: number;
  readonly watchStaleAfterMs: number;
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
  const maxQueuedWatchBytes = options.maxQueuedWatchBytes ?? 8 * 1024 * 1024;
  if (!Number.isInteger(maxQueuedWatchBytes) || maxQueuedWatchBytes < 1024) {
    throw invalid(`maxQueuedWatchBytes must be an integer >= 1024, got ${maxQueuedWatchBytes}`);
  }
  const maxWatchBehindMs = options.maxWatchBehindMs ?? 30_000;
  if (!Number.isInteger(maxWatchBehindMs) || maxWatchBehindMs < 30) {
    throw invalid(`maxWatchBehindMs must be an integer >= 30, got ${maxWatchBehindMs}`);
  }
  const watchDebounceMs = options.watchDebounceMs ?? 0;
  if (!Number.isInteger(watchDebounceMs) || watchDebounceMs < 0 || watchDebounceMs > 1000) {
    throw invalid(`watchDebounceMs must be an integer from 0 to 1000, got ${watchDebounceMs}`);
  }
  if (options.authTokensFile !== undefined && options.authPolicyFile === undefined) {
    throw invalid("authTokensFile needs authPolicyFile (the policy says what each token may do)");
  }
  return Object.freeze({
    tls: options.tls,
    etcdTls: options.etcdTls,
    etcdAuth: options.etcdAuth,
    authPolicyFile: options.authPolicyFile,
    authTokensFile: options.authTokensFile,
    listen: parseListen(options.listen, "listen"),
    adminListen:
      options.adminListen === undefined ? undefined : parseListen(options.adminListen, "adminListen"),
    httpApi: options.httpApi ?? true,
    etcdEndpoints: Object.freeze([...options.etcdEndpoints]),
    prefix,
    progressIntervalMs,
    limits: resolveRegistryLimits(options.limits),
    overload: resolveOverloadOptions(options.overload),
    allowForeignMetricsAddress: options.allowForeignMetricsAddress ?? false,
    logger: options.logger ?? pino({ level: "silent" }),
    metricsRegistry: options.metricsRegistry ?? new Registry(),
    etcdRequestTimeoutMs: 5000,
    probeIntervalMs: 1000,
    probeTimeoutMs: 1000,
    historyMaxDeltas: 4096,
    maxQueuedWatchBytes,
    maxWatchBehindMs,
    watchDebounceMs,
    watchCheckIntervalMs: 1000,
    watchCheckTimeoutMs: 1000,
    watchStaleAfterMs: 3000,
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
