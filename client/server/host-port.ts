/**
 * `host:port` parsing and comparison, with no dependencies, so the CLI's option parsers load it
 * without grpc-js or the HTTP servers (issue 10, CLI start).
 */

/** A host and port, e.g. from `127.0.0.1:0` or `[::]:7100`. */
export interface HostPort {
  /** As written, brackets kept for IPv6 (`[::]`). */
  readonly host: string;
  readonly port: number;
}

/**
 * Splits `host:port` (IPv6 as `[::1]:port`; port 0 picks a free one).
 * @throws RangeError naming the bad value.
 */
export function splitHostPort(value: string): HostPort {
  const match = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]\s]+):(\d{1,5})$/.exec(value);
  const port = Number(match?.[2]);
  if (match === null || match[1] === undefined || port > 65_535) {
    throw new RangeError(`"${value}" is not host:port`);
  }
  return { host: match[1], port };
}

/** True for the any-address hosts `0.0.0.0` and `[::]` (also `::`). */
export function isWildcardHost(host: string): boolean {
  return host === "0.0.0.0" || host === "[::]" || host === "::";
}

/**
 * True when two `host:port` addresses name the same host: hosts compared without IPv6 brackets
 * and case-insensitively (DNS names); ports are ignored. False if either is not `host:port`.
 */
export function isSameHost(a: string, b: string): boolean {
  const hostOf = (address: string): string | undefined =>
    /^(?:\[([^\]]+)\]|([^:[\]]+)):\d+$/
      .exec(address)
      ?.slice(1)
      .find((part) => part !== undefined)
      ?.toLowerCase();
  const host = hostOf(a);
  return host !== undefined && host === hostOf(b);
}
