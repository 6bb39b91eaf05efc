import { hostname } from "node:os";
import { InvalidArgumentError } from "commander";
import { splitHostPort } from "../client/server/host-port.js";

/** Commander parser for an integer in [min, max]; bad input is one clear line and exit status 2. */
export function integerIn(min: number, max: number) {
  return (value: string): number => {
    const number = Number(value);
    if (!/^-?\d+$/.test(value.trim()) || number < min || number > max) {
      throw new InvalidArgumentError(`must be an integer from ${min} to ${max}.`);
    }
    return number;
  };
}

/** Commander parser for a number in [min, max]. */
export function numberIn(min: number, max: number) {
  return (value: string): number => {
    const number = Number(value);
    if (value.trim() === "" || !Number.isFinite(number) || number < min || number > max) {
      throw new InvalidArgumentError(`must be a number from ${min} to ${max}.`);
    }
    return number;
  };
}

/**
 * Commander parser for `--simulate-cpu`: a fraction `0.5`, a percentage `50%`, or a range
 * `0.2-0.9` / `20%-90%` (a new value is drawn from it every second).
 */
export function simulatedCpu(value: string): number | [number, number] {
  const one = (part: string): number => {
    const match = /^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$/.exec(part);
    const fraction = match === null ? Number.NaN : Number(match[1]) / (match[2] === "%" ? 100 : 1);
    if (!(fraction >= 0 && fraction <= 1))
      throw new InvalidArgumentError(
        "must be a fraction 0..1 (0.5), a percentage (50%) or a range (0.2-0.9).",
      );
    return fraction;
  };
  const parts = value.split("-");
  if (parts.length === 1) return one(value);
  const [min, max] = parts.length === 2 ? [one(parts[0] ?? ""), one(parts[1] ?? "")] : [1, 0];
  if (min > max) throw new InvalidArgumentError("must be a range MIN-MAX with MIN ≤ MAX, e.g. 0.2-0.9.");
  return [min, max];
}

/** Commander parser for `host:port`. */
export function hostPort(value: string): string {
  try {
    splitHostPort(value);
  } catch {
    throw new InvalidArgumentError("must be host:port, e.g. 127.0.0.1:7100.");
  }
  return value;
}

/**
 * Commander parser for `--advertise`: `host:port`, or `auto` (the default: the bound port on the
 * first non-internal IPv4, as `routableHost` picks it), kept as the word `auto` (commander stores a
 * parser's `undefined` as ""). See {@link advertisedAddress}.
 */
export function advertiseAddress(value: string): string {
  return value === "auto" ? value : hostPort(value);
}

/** The `--advertise` value for the service host: `undefined` (detect) for `auto` or no flag. */
export function advertisedAddress(flag: string | undefined): string | undefined {
  return flag === "auto" ? undefined : flag;
}

/**
 * Commander parser for `--id`: `{hostname}` is replaced by `os.hostname()` (a container's own
 * name, so `docker compose --scale` gives each replica its own id). The result must be an
 * instance id (DESIGN §2: 1-128 of `[A-Za-z0-9._-]`).
 */
export function instanceIdTemplate(value: string): string {
  const id = value.replaceAll("{hostname}", hostname());
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(id)) {
    throw new InvalidArgumentError(
      `"${id}" is not an instance id: 1-128 of A-Z a-z 0-9 . _ - ({hostname} is replaced by the host name).`,
    );
  }
  return id;
}

/** Commander parser for a `host:port` to dial: like {@link hostPort}, but port 0 is refused. */
export function dialAddress(value: string): string {
  hostPort(value);
  if (/:0+$/.test(value))
    throw new InvalidArgumentError("must name a real port (not 0), e.g. 127.0.0.1:50051.");
  return value;
}

/**
 * Commander parser for a repeatable `key=value` (the value may contain `=` and be empty); the
 * values accumulate into an object. A repeated key is refused rather than silently overwritten.
 */
export function keyValue(
  value: string,
  previous: Readonly<Record<string, string>> = {},
): Record<string, string> {
  const equals = value.indexOf("=");
  const key = value.slice(0, Math.max(equals, 0)).trim();
  if (equals <= 0 || key === "") throw new InvalidArgumentError("must be key=value, e.g. version=1.2.");
  if (Object.hasOwn(previous, key)) throw new InvalidArgumentError(`gives "${key}" twice.`);
  return { ...previous, [key]: value.slice(equals + 1) };
}

/** Commander parser for one or more comma-separated `host:port`. */
export function hostPortList(value: string): string {
  value.split(",").forEach((part) => hostPort(part.trim()));
  return value;
}

/** Commander parser for comma-separated http(s) URLs. */
export function urlList(value: string): string[] {
  const urls = value.split(",").map((part) => part.trim());
  for (const url of urls) {
    if (!/^https?:\/\/[^/\s]+$/.test(url)) {
      throw new InvalidArgumentError("must be etcd client URLs like http://127.0.0.1:2379[,http://...].");
    }
  }
  return urls;
}

/** The registry address: the flag, else `LEASEHOLD_REGISTRY`, else 127.0.0.1:7100. */
export const REGISTRY_DEFAULT = process.env["LEASEHOLD_REGISTRY"] ?? "127.0.0.1:7100";
