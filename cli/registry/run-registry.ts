import { readFileSync } from "node:fs";
import { startRegistry, type OverloadOptions, type RegistryLimitOptions } from "../../registry/index.js";
import { tlsFilesOf, type SecurityFlags } from "../security-options.js";
import { UsageError } from "../usage-error.js";
import { createLogger } from "../logger.js";
import { describeConnectFailure } from "../registry-check.js";
import { onShutdownSignal } from "../signals.js";

/** Flags of `leasehold registry`; the `--max-...` flags are named after {@link RegistryLimitOptions}. */
export interface RegistryFlags extends SecurityFlags {
  listen: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  authPolicy?: string;
  authTokens?: string;
  etcd: string[];
  adminListen: string;
  httpApi: boolean;
  prefix: string;
  watchDebounceMs?: number;
  allowForeignMetricsAddress?: boolean;
  maxInstancesPerService?: number;
  maxWatchStreamsPerConnection?: number;
  maxConcurrentStreams?: number;
  maxKeepalivesPerSecond?: number;
  maxResumesPerSecond?: number;
  maxReceiveMessageBytes?: number;
  maxSendMessageBytes?: number;
  maxServiceLabels?: number;
  overloadEventLoopDelayMs?: number;
  overloadKeepaliveLagMs?: number;
  overloadRegistersInFlight?: number;
  overloadPushbackMs?: number;
  maxRenewalsPerSecond?: number;
}

/** The overload thresholds the flags set (unset ones keep their defaults). */
function overloadOf(flags: RegistryFlags): OverloadOptions {
  return {
    maxEventLoopDelayMs: flags.overloadEventLoopDelayMs,
    maxKeepAliveLagMs: flags.overloadKeepaliveLagMs,
    maxRegistersInFlight: flags.overloadRegistersInFlight,
    maxRenewalsPerSecond: flags.maxRenewalsPerSecond,
    pushbackMs: flags.overloadPushbackMs,
  };
}

/** The quotas the flags set (unset ones keep their defaults). */
function limitsOf(flags: RegistryFlags): RegistryLimitOptions {
  return {
    maxInstancesPerService: flags.maxInstancesPerService,
    maxWatchStreamsPerConnection: flags.maxWatchStreamsPerConnection,
    maxConcurrentStreamsPerConnection: flags.maxConcurrentStreams,
    maxKeepAlivesPerSecond: flags.maxKeepalivesPerSecond,
    maxEtcdResumesPerSecond: flags.maxResumesPerSecond,
    maxReceiveMessageBytes: flags.maxReceiveMessageBytes,
    maxSendMessageBytes: flags.maxSendMessageBytes,
    maxServiceLabels: flags.maxServiceLabels,
  };
}

/** A registry that cannot start because etcd cannot be read: one line, exit status 1. */
export class EtcdUnreachableError extends Error {
  override readonly name = "EtcdUnreachableError";
}

/**
 * `leasehold registry`: starts the facade (it lists etcd first, so an etcd that is not there fails
 * the start) and serves until SIGINT/SIGTERM.
 *
 * @throws EtcdUnreachableError naming etcd, its URLs and the cause when etcd cannot be read at start.
 */
export async function runRegistry(flags: RegistryFlags): Promise<void> {
  const logger = createLogger("leasehold-registry");
  let registry: Awaited<ReturnType<typeof startRegistry>>;
  try {
    registry = await startRegistry({
      listen: flags.listen,
      adminListen: flags.adminListen,
      httpApi: flags.httpApi,
      etcdEndpoints: flags.etcd,
      prefix: flags.prefix,
      watchDebounceMs: flags.watchDebounceMs,
      allowForeignMetricsAddress: flags.allowForeignMetricsAddress === true,
      limits: limitsOf(flags),
      overload: overloadOf(flags),
      tls: tlsFilesOf(flags),
      etcdTls: { caFile: flags.etcdCa, certFile: flags.etcdCert, keyFile: flags.etcdKey },
      etcdAuth: etcdAuthFromEnv(),
      authPolicyFile: flags.authPolicy,
      authTokensFile: flags.authTokens,
      logger,
    });
  } catch (error) {
    if (isEtcdClientError(error)) {
      throw new EtcdUnreachableError(
        `cannot reach etcd at ${flags.etcd.join(",")}: ${describeConnectFailure(error)} (is etcd running there? set --etcd or LEASEHOLD_ETCD)`,
        { cause: error },
      );
    }
    const taken = /EADDRINUSE[^\]]*?(\S+:\d+)/.exec(error instanceof Error ? error.message : "");
    if (taken !== null) {
      throw new Error(`cannot listen on ${taken[1]}: the address is in use (another registry?)`, {
        cause: error,
      });
    }
    throw error;
  }
  process.stdout.write(
    `registry listening on ${registry.address} (admin ${flags.tlsCert === undefined ? "http" : "https"}://${registry.adminAddress ?? "-"}), etcd ${flags.etcd.join(",")}\n`,
  );
  await onShutdownSignal();
  await registry.close();
}

/**
 * etcd user and password from env, never from a flag (flags show in `ps`): `LEASEHOLD_ETCD_USER`
 * with `LEASEHOLD_ETCD_PASSWORD`, or with `LEASEHOLD_ETCD_PASSWORD_FILE` (first line).
 * @throws UsageError for a user without a password (or the reverse), or an unreadable file.
 */
export function etcdAuthFromEnv(
  env: NodeJS.ProcessEnv = process.env,
): { username: string; password: string } | undefined {
  const username = env["LEASEHOLD_ETCD_USER"] || undefined;
  const passwordFile = env["LEASEHOLD_ETCD_PASSWORD_FILE"] || undefined;
  let password = env["LEASEHOLD_ETCD_PASSWORD"] || undefined;
  if (password === undefined && passwordFile !== undefined) {
    try {
      password = readFileSync(passwordFile, "utf8").split("\n")[0]?.trim();
    } catch (error) {
      throw new UsageError(
        `LEASEHOLD_ETCD_PASSWORD_FILE ${passwordFile}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
      );
    }
  }
  if (username === undefined && password === undefined) return undefined;
  if (username === undefined || password === undefined || password === "") {
    throw new UsageError(
      "etcd auth needs both LEASEHOLD_ETCD_USER and LEASEHOLD_ETCD_PASSWORD (or LEASEHOLD_ETCD_PASSWORD_FILE)",
    );
  }
  return { username, password };
}

/**
 * True for an error of the etcd client (etcd3 throws its `GRPC...Error` classes, whose messages
 * carry the gRPC status, "14 UNAVAILABLE: ..."); bind errors and bad options look different.
 */
function isEtcdClientError(error: unknown): error is Error {
  return (
    error instanceof Error &&
    (/^GRPC\w*Error$/.test(error.constructor.name) || /^\d+ [A-Z_]+: /.test(error.message))
  );
}
