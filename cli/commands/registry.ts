import type { Command } from "commander";
import { addSecurityOptions } from "../security-options.js";
import { DEFAULT_REGISTRY_LIMITS, type RegistryLimitOptions } from "../../registry/registry-limits.js";
import { DEFAULT_OVERLOAD_OPTIONS, type OverloadOptions } from "../../registry/api/overload-guard.js";
import { hostPort, integerIn, urlList } from "../options.js";
import type { RegistryFlags } from "../registry/run-registry.js";

/** `leasehold registry`; the implementation (etcd3, the facade) is loaded when the command runs. */
export function registryCommand(program: Command): void {
  const command = addSecurityOptions(program.command("registry"), { token: false })
    .description("run the registry facade in front of etcd (gRPC, plus an admin HTTP port)")
    .option(
      "--listen <host:port>",
      "gRPC listen address",
      hostPort,
      process.env["LEASEHOLD_LISTEN"] ?? "127.0.0.1:7100",
    )
    .option(
      "--etcd <url[,url]>",
      "etcd client URLs (env LEASEHOLD_ETCD)",
      urlList,
      urlList(process.env["LEASEHOLD_ETCD"] ?? "http://127.0.0.1:2379"),
    )
    .option(
      "--admin-listen <host:port>",
      "admin HTTP address: /metrics, /healthz, /readyz, /sd/prometheus, /ui (web console), the HTTP API",
      hostPort,
      process.env["LEASEHOLD_ADMIN_LISTEN"] ?? "127.0.0.1:7101",
    )
    .option(
      "--no-http-api",
      "do not serve the HTTP/JSON API (/leasehold.registry.v1.RegistryService/...) on the admin port",
    )
    .option("--prefix <prefix>", "etcd key prefix", process.env["LEASEHOLD_PREFIX"] ?? "/leasehold/")
    .option(
      "--watch-debounce-ms <ms>",
      "least time between two deltas on Watch streams: faster changes share one delta, delayed up to ms (less fan-out CPU under churn, more latency)",
      integerIn(0, 1000),
      0,
    )
    .option(
      "--allow-foreign-metrics-address",
      "accept a metrics_address on another host than the instance's address (listed for Prometheus)",
    )
    .option(
      "--etcd-ca <file>",
      "PEM CA that verifies etcd (env LEASEHOLD_ETCD_CA)",
      process.env["LEASEHOLD_ETCD_CA"],
    )
    .option(
      "--etcd-cert <file>",
      "PEM client certificate for etcd (env LEASEHOLD_ETCD_CERT); etcd user/password come only from env " +
        "LEASEHOLD_ETCD_USER and LEASEHOLD_ETCD_PASSWORD or LEASEHOLD_ETCD_PASSWORD_FILE",
      process.env["LEASEHOLD_ETCD_CERT"],
    )
    .option(
      "--etcd-key <file>",
      "PEM key of --etcd-cert (env LEASEHOLD_ETCD_KEY)",
      process.env["LEASEHOLD_ETCD_KEY"],
    )
    .option(
      "--auth-policy <file>",
      "JSON policy that turns on authenticated writes: principals -> services, read (env LEASEHOLD_AUTH_POLICY)",
      process.env["LEASEHOLD_AUTH_POLICY"],
    )
    .option(
      "--auth-tokens <file>",
      "bearer tokens, one 'NAME SHA256HEX' per line (env LEASEHOLD_AUTH_TOKENS)",
      process.env["LEASEHOLD_AUTH_TOKENS"],
    );
  // Quotas: each refusal is RESOURCE_EXHAUSTED, counted in leasehold_registry_limited_total{limit}.
  for (const [flag, option, description] of limitFlags) {
    command.option(
      `${flag} <n>`,
      `${description} (default ${DEFAULT_REGISTRY_LIMITS[option]})`,
      integerIn(1, Number.MAX_SAFE_INTEGER),
    );
  }
  // Overload protection: new Registers are shed (RESOURCE_EXHAUSTED + grpc-retry-pushback-ms),
  // KeepAlives never; counted in leasehold_registry_limited_total{limit="overload_..." or
  // "renewals_per_second"}.
  for (const [flag, option, description] of overloadFlags) {
    command.option(
      `${flag} <n>`,
      `${description} (default ${DEFAULT_OVERLOAD_OPTIONS[option]})`,
      integerIn(1, Number.MAX_SAFE_INTEGER),
    );
  }
  command.action(async (flags: RegistryFlags) => {
    const { runRegistry } = await import("../registry/run-registry.js");
    await runRegistry(flags);
  });
}

/** `--max-...` flags of `leasehold registry`: flag, RegistryLimitOptions key, help. */
const limitFlags: readonly (readonly [string, keyof RegistryLimitOptions, string])[] = [
  ["--max-instances-per-service", "maxInstancesPerService", "instances one service may hold"],
  [
    "--max-watch-streams-per-connection",
    "maxWatchStreamsPerConnection",
    "open Watch streams per client connection",
  ],
  [
    "--max-concurrent-streams",
    "maxConcurrentStreamsPerConnection",
    "concurrent HTTP/2 streams per connection (grpc.max_concurrent_streams; clients queue beyond it)",
  ],
  ["--max-keepalives-per-second", "maxKeepAlivesPerSecond", "KeepAlive messages per second on one stream"],
  [
    "--max-resumes-per-second",
    "maxEtcdResumesPerSecond",
    "Watch resumes per second that read etcd (resumes of one service at one revision share a read)",
  ],
  ["--max-receive-message-bytes", "maxReceiveMessageBytes", "largest request message, in bytes"],
  ["--max-send-message-bytes", "maxSendMessageBytes", "largest response message, in bytes"],
  [
    "--max-service-labels",
    "maxServiceLabels",
    'distinct service labels of leasehold_registry_instances; later services count as service="other"',
  ],
];

/** `--overload-...` flags of `leasehold registry`: flag, OverloadOptions key, help. */
const overloadFlags: readonly (readonly [string, keyof OverloadOptions, string])[] = [
  [
    "--overload-event-loop-delay-ms",
    "maxEventLoopDelayMs",
    "shed new Registers while the event loop's p99 delay is above this, in ms",
  ],
  [
    "--overload-keepalive-lag-ms",
    "maxKeepAliveLagMs",
    "shed new Registers while a keepalive renewal has waited for etcd longer than this, in ms",
  ],
  [
    "--overload-registers-in-flight",
    "maxRegistersInFlight",
    "shed new Registers while this many wait for etcd",
  ],
  [
    "--max-renewals-per-second",
    "maxRenewalsPerSecond",
    "refuse new Registers whose lease would take this replica's projected renewals/s (3/TTL per lease) over this",
  ],
  [
    "--overload-pushback-ms",
    "pushbackMs",
    "grpc-retry-pushback-ms of a shed Register (drawn from [n, 2n); 10x that at capacity), in ms",
  ],
];
