import { networkInterfaces } from "node:os";

/**
 * The host others can dial for a server listening on `listenHost`: `listenHost` itself unless it
 * is a wildcard (`0.0.0.0`, `[::]`), then the first external IPv4 address, else `127.0.0.1`.
 */
export function routableHost(listenHost: string): string {
  if (listenHost !== "0.0.0.0" && listenHost !== "[::]") return listenHost;
  for (const addresses of Object.values(networkInterfaces())) {
    const external = addresses?.find((address) => address.family === "IPv4" && !address.internal);
    if (external !== undefined) return external.address;
  }
  return "127.0.0.1";
}
