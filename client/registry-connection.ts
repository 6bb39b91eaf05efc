import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { experimental, status, type ChannelOptions } from "@grpc/grpc-js";
import { RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";
import { bearerTokenInterceptor, channelCredentials, type ClientSecurity } from "./tls/tls-files.js";

/**
 * Channel options of every registry channel:
 *
 * - gRPC keepalive: a ping every 10 s on a connection with open streams, dead after 5 s without an
 *   answer. Without it a stalled registry (SIGSTOP, a dropped network) stays invisible to a Watch
 *   or KeepAlive stream until the kernel gives up, minutes later.
 * - Reconnect backoff 100 ms growing to at most 500 ms (grpc-js adds ±20 % jitter, so ≤ 600 ms),
 *   instead of grpc-js's 1 s growing to 120 s: a registrar whose lease was lost re-registers, and a
 *   watcher resumes, within 1 s of the registry answering again (the chaos suite's registry-down
 *   scenario measured 884 ms with an 800 ms cap). A refused connect is cheap.
 */
export const REGISTRY_CHANNEL_OPTIONS: ChannelOptions = Object.freeze({
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 500,
});

/** grpc-js target scheme of a list of registry replicas; see {@link parseRegistryAddresses}. */
export const REGISTRY_LIST_SCHEME = "leasehold-registries";

/**
 * Opens a client of the registry. `addresses` is one `host:port`, or several separated by commas
 * (replicas of the stateless registry, hostnames or IP literals). Several replicas are one channel
 * that keeps a connection to each and spreads calls over the ready ones (grpc-js `round_robin`),
 * so a stream broken by a replica going away is reopened on another at once; see
 * {@link parseRegistryAddresses}. Channel options: {@link REGISTRY_CHANNEL_OPTIONS}, then `options`.
 * `security` gives TLS files (a CA verifies the registry; cert and key answer its mTLS) and a
 * bearer token sent with every call; default plaintext and anonymous.
 *
 * @throws RangeError for an empty list, or a list with an entry that is not `host:port`;
 *   TlsConfigError for unreadable TLS files.
 */
export function connectRegistry(
  addresses: string,
  options: ChannelOptions = {},
  security: ClientSecurity = {},
): RegistryServiceClient {
  return new RegistryServiceClient(parseRegistryAddresses(addresses), channelCredentials(security.tls), {
    ...REGISTRY_CHANNEL_OPTIONS,
    ...options,
    ...(security.token === undefined ? {} : { interceptors: [bearerTokenInterceptor(security.token)] }),
  });
}

/**
 * The grpc-js target of registry address(es). One address is returned as it is: `host:port`
 * (grpc-js's `dns` resolver) or any grpc-js target (`unix:/path`, `dns:///host:port`). Several become `leasehold-registries:///host:port,host:port`, resolved by
 * Leasehold's resolver (registered with grpc-js by this call, once): every hostname is looked up
 * with the system resolver (`dns.lookup`, so `/etc/hosts` and `localhost` work), each entry is one
 * endpoint, and the channel balances `round_robin` over them. Lookups are repeated when grpc-js
 * asks (after a connection fails), at most once a second.
 *
 * @throws RangeError for an empty list, or a list with an entry that is not `host:port` (IPv6 in
 *   brackets).
 */
export function parseRegistryAddresses(addresses: string): string {
  const list = addresses
    .split(",")
    .map((address) => address.trim())
    .filter((address) => address !== "");
  if (list.length === 0) throw new RangeError("a registry address (host:port) is required");
  if (list.length === 1) return list[0] as string; // any grpc-js target, as before
  for (const address of list) splitRegistryAddress(address);
  registerListResolver();
  return `${REGISTRY_LIST_SCHEME}:///${list.join(",")}`;
}

interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** `host:port` or `[v6]:port` → parts; throws RangeError naming the entry. */
function splitRegistryAddress(address: string): HostPort {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s/]+)):(\d{1,5})$/.exec(address);
  const host = match?.[1] ?? match?.[2];
  const port = Number(match?.[3]);
  if (host === undefined || !(port >= 1 && port <= 65_535)) {
    throw new RangeError(`a registry address must be host:port, got "${address}"`);
  }
  return { host, port };
}

let isListResolverRegistered = false;

function registerListResolver(): void {
  if (isListResolverRegistered) return;
  isListResolverRegistered = true;
  experimental.registerResolver(REGISTRY_LIST_SCHEME, RegistryListResolver);
}

/** Least time between two lookups of one channel's list, in ms (grpc-js asks after every failure). */
const MIN_MS_BETWEEN_LOOKUPS = 1000;

/** Every replica in the list is one endpoint; the channel balances `round_robin` over them. */
const LIST_SERVICE_CONFIG = Object.freeze({ loadBalancingConfig: [{ round_robin: {} }], methodConfig: [] });

/**
 * grpc-js resolver of `leasehold-registries:///host:port,...`. A hostname that does not resolve
 * is left out of the result (the others still serve); when none resolves, the channel's calls
 * fail `UNAVAILABLE` naming the list, and grpc-js asks again later.
 */
class RegistryListResolver implements experimental.Resolver {
  readonly #entries: readonly HostPort[];
  readonly #target: string;
  readonly #listener: experimental.ResolverListener;
  #isResolving = false;
  #isDestroyed = false;
  #lastLookupAt = 0;
  #delayed: NodeJS.Timeout | undefined;

  constructor(target: experimental.GrpcUri, listener: experimental.ResolverListener) {
    this.#target = target.path;
    this.#listener = listener;
    this.#entries = target.path.split(",").map(splitRegistryAddress);
  }

  static getDefaultAuthority(target: experimental.GrpcUri): string {
    return target.path.split(",")[0] ?? target.path;
  }

  updateResolution(): void {
    this.#isDestroyed = false;
    if (this.#isResolving || this.#delayed !== undefined) return;
    const waitMs = this.#lastLookupAt + MIN_MS_BETWEEN_LOOKUPS - Date.now();
    if (waitMs > 0) {
      this.#delayed = setTimeout(() => {
        this.#delayed = undefined;
        this.updateResolution();
      }, waitMs);
      return;
    }
    this.#isResolving = true;
    this.#lastLookupAt = Date.now();
    void this.#resolve().finally(() => (this.#isResolving = false));
  }

  destroy(): void {
    this.#isDestroyed = true;
    clearTimeout(this.#delayed);
    this.#delayed = undefined;
  }

  async #resolve(): Promise<void> {
    const failures: string[] = [];
    const endpoints = await Promise.all(
      this.#entries.map(async ({ host, port }): Promise<experimental.Endpoint[]> => {
        if (isIP(host) !== 0) return [{ addresses: [{ host, port }] }];
        try {
          const found = await lookup(host, { all: true });
          return [{ addresses: found.map(({ address }) => ({ host: address, port })) }];
        } catch (error) {
          failures.push(`${host}: ${error instanceof Error ? error.message : String(error)}`);
          return [];
        }
      }),
    );
    if (this.#isDestroyed) return;
    const resolved = endpoints.flat();
    if (resolved.length === 0) {
      this.#listener(
        experimental.statusOrFromError({
          code: status.UNAVAILABLE,
          details: `no registry address of "${this.#target}" resolves (${failures.join("; ")})`,
        }),
        {},
        null,
        "",
      );
      return;
    }
    this.#listener(
      experimental.statusOrFromValue(resolved),
      {},
      experimental.statusOrFromValue(LIST_SERVICE_CONFIG),
      "",
    );
  }
}
