import { credentials, type ChannelOptions } from "@grpc/grpc-js";
import { RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";

/**
 * gRPC keepalive toward the registry: a ping every 10 s on a connection with open streams, dead
 * after 5 s without an answer. Without it a stalled registry (SIGSTOP, a dropped network) stays
 * invisible to a Watch or KeepAlive stream until the kernel gives up, minutes later.
 */
export const REGISTRY_CHANNEL_OPTIONS: ChannelOptions = Object.freeze({
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
});

/**
 * Opens a client of the registry. `addresses` is one `host:port`, or several separated by commas
 * (replicas of the stateless registry); several IP addresses are dialled as one channel that fails
 * over between them (grpc-js `ipv4:`/`ipv6:` targets with `pick_first`).
 *
 * @throws RangeError for an empty address, or several addresses that are not all IP literals.
 */
export function connectRegistry(addresses: string, options: ChannelOptions = {}): RegistryServiceClient {
  return new RegistryServiceClient(parseRegistryAddresses(addresses), credentials.createInsecure(), {
    ...REGISTRY_CHANNEL_OPTIONS,
    ...options,
  });
}

/**
 * The grpc-js target of registry address(es): one `host:port`, or several IP literals as an
 * `ipv4:`/`ipv6:` target.
 *
 * @throws RangeError for an empty address, or several addresses that are not all IP literals.
 */
export function parseRegistryAddresses(addresses: string): string {
  const list = addresses
    .split(",")
    .map((address) => address.trim())
    .filter((address) => address !== "");
  if (list.length === 0) throw new RangeError("a registry address (host:port) is required");
  if (list.length === 1) return list[0] as string;
  if (list.every((address) => /^\d+\.\d+\.\d+\.\d+:\d+$/.test(address))) return `ipv4:${list.join(",")}`;
  if (list.every((address) => /^\[[0-9a-fA-F:]+\]:\d+$/.test(address))) return `ipv6:${list.join(",")}`;
  throw new RangeError(`several registry addresses must all be IP:port literals, got "${addresses}"`);
}
