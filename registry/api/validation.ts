import {
  InstanceStatus,
  type DeregisterRequest,
  type Instance,
  type InstanceKey,
  type RegisterRequest,
  type UpdateInstanceRequest,
  type WatchRequest,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { isIPv4, isIPv6 } from "node:net";
import { isSameHost } from "../../client/server/host-port.js";
import { RegistryError } from "../registry-error.js";
import { MAX_REGISTRATION_TOKEN_LENGTH, hashRegistrationToken } from "../registration-token.js";

/** Expected failures of pure validation are values; the error is `invalid_argument`, naming the field. */
export type Validated<T> = { ok: true; value: T } | { ok: false; error: RegistryError };

/** Limits of DESIGN §2. */
export const limits = Object.freeze({
  serviceMaxLength: 63,
  instanceIdMaxLength: 128,
  zoneMaxLength: 63,
  weightMax: 10_000,
  defaultWeight: 1,
  /** Lease TTL used when `ttl_seconds` is 0, in seconds. */
  defaultTtlSeconds: 10,
  /** Largest TTL accepted, in seconds. etcd raises TTLs below its minimum (2 s here) itself. */
  maxTtlSeconds: 300,
  metadataMaxKeys: 32,
  /** Sum of the UTF-8 bytes of every metadata key and value. */
  metadataMaxBytes: 4096,
  /** Longest `registration_id` (the registrar sends 32 hex chars: 128 random bits). */
  registrationIdMaxLength: 64,
});

/** Choices of the registry operator that loosen validation. */
export interface ValidationOptions {
  /**
   * Accept a `metrics_address` on another host than `address` (default false). Prometheus scrapes
   * every `metrics_address` listed on `/sd/prometheus`: a foreign one would point it anywhere.
   */
  readonly allowForeignMetricsAddress: boolean;
}

const defaultValidationOptions: ValidationOptions = Object.freeze({ allowForeignMetricsAddress: false });

/**
 * Metadata keys refused because JavaScript objects treat them specially: a decoded `__proto__`
 * entry would silently vanish or poison the prototype of whatever copies the map.
 */
const reservedMetadataKeys: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

/** A valid registration: the instance to store (no revision yet) and its TTL in seconds. */
export interface ValidRegistration {
  readonly instance: Instance;
  readonly ttlSeconds: number;
  /** The caller's registration id; `undefined` when unset or empty (legacy behaviour). Never log it. */
  readonly registrationId: string | undefined;
}

/** The fields an update changes; `undefined` leaves a field as it is. */
export interface InstanceChange {
  readonly weight: number | undefined;
  readonly status: InstanceStatus | undefined;
  readonly zone: string | undefined;
  readonly metadata: Readonly<Record<string, string>> | undefined;
}

/** A valid fenced request: which instance, the lease that must hold it and its owner's proof. */
export interface FencedKey {
  readonly key: InstanceKey;
  readonly leaseId: string;
  /** Hex SHA-256 of the registration token sent (the token itself goes no further). */
  readonly tokenHash: string;
}

/** A valid KeepAlive request: the lease to renew and the owner's proof. */
export interface FencedLease {
  readonly leaseId: string;
  /** Hex SHA-256 of the registration token sent. */
  readonly tokenHash: string;
}

class Invalid extends Error {}

/** `value` (its first `maxLength` characters) as a JSON string with every control character escaped. */
function quoted(value: string, maxLength = 80): string {
  return JSON.stringify(value.slice(0, maxLength)).replace(
    /[\u007f-\u009f]/g,
    (character) => `\\u${character.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** Throws `Invalid` with `message()` unless `condition`: the message is built only on failure. */
function check(condition: boolean, message: () => string): asserts condition {
  if (!condition) throw new Invalid(message());
}

function validated<T>(build: () => T): Validated<T> {
  try {
    return { ok: true, value: build() };
  } catch (error) {
    if (!(error instanceof Invalid)) throw error;
    return { ok: false, error: new RegistryError("invalid_argument", error.message) };
  }
}

const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const instanceIdPattern = /^[A-Za-z0-9._-]+$/;
const zonePattern = /^[A-Za-z0-9._-]*$/;
const registrationIdPattern = /^[A-Za-z0-9_-]+$/;
const dnsNameLabel = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
/** A last label that WHATWG URL parsing (and so many clients) reads as an IPv4 number. */
const numericLabel = /^(0[xX][0-9A-Fa-f]*|\d+)$/;
const ipv6ZonePattern = /^[A-Za-z0-9._-]+$/;
/** C0 controls, DEL and C1 controls. */
// eslint-disable-next-line no-control-regex
const controlCharacter = /[\u0000-\u001f\u007f-\u009f]/;
/** The same, minus tab and line feed, which values may carry. */
// eslint-disable-next-line no-control-regex
const valueControlCharacter = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;

function checkService(service: string, field = "service"): void {
  check(service !== "", () => `${field}: required`);
  check(
    service.length <= limits.serviceMaxLength && dnsLabel.test(service),
    () =>
      `${field}: must be a DNS-1123 label (lowercase letters, digits and '-', starting and ending with ` +
      `a letter or digit, at most ${limits.serviceMaxLength} characters), got ${quoted(service)}`,
  );
}

function checkInstanceId(instanceId: string): void {
  check(instanceId !== "", () => "instance_id: required");
  check(
    instanceId.length <= limits.instanceIdMaxLength && instanceIdPattern.test(instanceId),
    () =>
      `instance_id: must be 1 to ${limits.instanceIdMaxLength} characters of [A-Za-z0-9._-], ` +
      `got ${quoted(instanceId, 140)}`,
  );
  // A path segment or a command-line option in disguise (etcdctl, shells, file names).
  check(
    instanceId !== "." && instanceId !== "..",
    () => `instance_id: must not be "." or "..", got ${quoted(instanceId)}`,
  );
  check(!instanceId.startsWith("-"), () => `instance_id: must not start with '-', got ${quoted(instanceId)}`);
}

/**
 * True for a host of `host:port`: an IPv4 address in dotted-quad form, or a DNS name of labels
 * 1–63 characters of `[A-Za-z0-9-]` (not starting or ending with `-`), ≤ 253 in all, whose last
 * label is not numeric (`999.999.999.999`, `1.2.3`, `0x7f` look like IPs but are none).
 */
function isHost(host: string): boolean {
  if (isIPv4(host)) return true;
  const labels = host.split(".");
  const last = labels.at(-1) ?? "";
  return host.length <= 253 && labels.every((label) => dnsNameLabel.test(label)) && !numericLabel.test(last);
}

/** True for an IPv6 address, with an optional zone (`fe80::1%eth0`). */
function isIpv6Host(host: string): boolean {
  const [address = "", zone, ...rest] = host.split("%");
  return isIPv6(address) && rest.length === 0 && (zone === undefined || ipv6ZonePattern.test(zone));
}

/** True for `host:port` with a DNS name, IPv4 or bracketed IPv6 host and a port 1–65535. */
export function isHostPort(address: string): boolean {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(address);
  if (match === null) return false;
  const [, ipv6, host, port] = match;
  const portNumber = Number(port);
  if (portNumber < 1 || portNumber > 65_535) return false;
  if (ipv6 !== undefined) return isIpv6Host(ipv6);
  return host !== undefined && isHost(host);
}

function checkAddress(address: string, field: string): void {
  check(
    isHostPort(address),
    () =>
      `${field}: must be host:port (DNS name with non-empty labels, dotted-quad IPv4 or [IPv6], ` +
      `port 1-65535), got ${quoted(address, 300)}`,
  );
}

function checkWeight(weight: number): void {
  check(
    Number.isInteger(weight) && weight >= 0 && weight <= limits.weightMax,
    () => `weight: must be an integer from 0 to ${limits.weightMax}, got ${weight}`,
  );
}

function checkZone(zone: string): void {
  check(
    zone.length <= limits.zoneMaxLength && zonePattern.test(zone),
    () =>
      `zone: must be at most ${limits.zoneMaxLength} characters of [A-Za-z0-9._-], got ${quoted(zone, 80)}`,
  );
}

function checkMetadata(metadata: Readonly<Record<string, string>>, field: string): void {
  const entries = Object.entries(metadata);
  check(
    entries.length <= limits.metadataMaxKeys,
    () => `${field}: at most ${limits.metadataMaxKeys} keys, got ${entries.length}`,
  );
  let bytes = 0;
  for (const [key, value] of entries) {
    check(key !== "", () => `${field}: keys must not be empty`);
    check(
      !reservedMetadataKeys.has(key),
      () => `${field}: key ${quoted(key)} is reserved (__proto__, constructor and prototype are refused)`,
    );
    check(
      !controlCharacter.test(key),
      () => `${field}: key ${quoted(key)} must not contain control characters`,
    );
    check(
      !valueControlCharacter.test(value),
      () =>
        `${field}: value of key ${quoted(key)} must not contain control characters ` +
        `(tab and line feed are allowed)`,
    );
    bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
  }
  check(
    bytes <= limits.metadataMaxBytes,
    () => `${field}: keys and values must total at most ${limits.metadataMaxBytes} bytes, got ${bytes}`,
  );
}

function checkStatus(value: InstanceStatus, field: string): void {
  check(
    value === InstanceStatus.INSTANCE_STATUS_SERVING || value === InstanceStatus.INSTANCE_STATUS_DRAINING,
    () => `${field}: must be INSTANCE_STATUS_SERVING or INSTANCE_STATUS_DRAINING, got ${value}`,
  );
}

/** A decimal int64 as ts-proto decodes it (`forceLong=string`). */
function parseInt64(value: string, field: string): bigint {
  check(/^-?\d+$/.test(value), () => `${field}: must be a decimal integer, got ${quoted(value)}`);
  return BigInt(value);
}

function checkLeaseId(leaseId: string): string {
  const id = parseInt64(leaseId, "lease_id");
  check(id > 0n, () => `lease_id: required (the lease id returned by Register), got ${leaseId}`);
  return id.toString();
}

/**
 * Validates a Register request against every rule of DESIGN §2 and applies the defaults
 * (weight 1, TTL 10 s, status SERVING). `registeredAt` is the caller's clock, RFC 3339.
 * A `metrics_address` must be on the host of `address` unless `options.allowForeignMetricsAddress`.
 */
export function validateRegister(
  request: RegisterRequest,
  registeredAt: string,
  options: ValidationOptions = defaultValidationOptions,
): Validated<ValidRegistration> {
  return validated(() => {
    checkService(request.service);
    checkInstanceId(request.instanceId);
    check(request.address !== "", () => "address: required");
    checkAddress(request.address, "address");
    if (request.metricsAddress !== "") {
      checkAddress(request.metricsAddress, "metrics_address");
      check(
        options.allowForeignMetricsAddress || isSameHost(request.metricsAddress, request.address),
        () =>
          `metrics_address: must be on the host of address (${quoted(request.address)}), ` +
          `got ${quoted(request.metricsAddress)}`,
      );
    }
    const weight = request.weight ?? limits.defaultWeight;
    checkWeight(weight);
    checkZone(request.zone);
    checkMetadata(request.metadata, "metadata");
    const status =
      request.status === InstanceStatus.INSTANCE_STATUS_UNSPECIFIED
        ? InstanceStatus.INSTANCE_STATUS_SERVING
        : request.status;
    checkStatus(status, "status");
    const registrationId = request.registrationId ?? "";
    // The id is a secret of its holder: the message says what is wrong, never echoes it.
    check(
      registrationId === "" ||
        (registrationId.length <= limits.registrationIdMaxLength &&
          registrationIdPattern.test(registrationId)),
      () =>
        `registration_id: must be 1 to ${limits.registrationIdMaxLength} characters of [A-Za-z0-9_-] ` +
        `(got ${registrationId.length} characters)`,
    );
    const ttl = parseInt64(request.ttlSeconds, "ttl_seconds");
    check(
      ttl >= 0n && ttl <= BigInt(limits.maxTtlSeconds),
      () =>
        `ttl_seconds: must be from 0 (default ${limits.defaultTtlSeconds}) to ${limits.maxTtlSeconds}, got ${ttl}`,
    );
    return {
      instance: {
        service: request.service,
        instanceId: request.instanceId,
        address: request.address,
        weight,
        zone: request.zone,
        metadata: { ...request.metadata },
        status,
        registeredAt,
        metricsAddress: request.metricsAddress,
        revision: "0",
        ttlSeconds: String(ttl === 0n ? limits.defaultTtlSeconds : ttl),
        createRevision: "0",
      },
      ttlSeconds: ttl === 0n ? limits.defaultTtlSeconds : Number(ttl),
      registrationId: registrationId === "" ? undefined : registrationId,
    };
  });
}

/** Validates an UpdateInstance request: the fenced key plus the fields it changes. */
export function validateUpdate(
  request: UpdateInstanceRequest,
): Validated<FencedKey & { change: InstanceChange }> {
  return validated(() => {
    const fenced = fencedKey(request);
    if (request.weight !== undefined) checkWeight(request.weight);
    if (request.status !== undefined) checkStatus(request.status, "status");
    if (request.zone !== undefined) checkZone(request.zone);
    if (request.metadata !== undefined) checkMetadata(request.metadata.entries, "metadata.entries");
    return {
      ...fenced,
      change: {
        weight: request.weight,
        status: request.status,
        zone: request.zone,
        metadata: request.metadata?.entries,
      },
    };
  });
}

/** Validates a Deregister request. */
export function validateDeregister(request: DeregisterRequest): Validated<FencedKey> {
  return validated(() => fencedKey(request));
}

/** Validates one KeepAlive request: the lease id (normalised, decimal) and the registration token. */
export function validateKeepAlive(request: {
  leaseId: string;
  registrationToken: string;
}): Validated<FencedLease> {
  return validated(() => ({
    leaseId: checkLeaseId(request.leaseId),
    tokenHash: checkRegistrationToken(request.registrationToken),
  }));
}

/** Validates a GetService request's service name. */
export function validateServiceName(service: string): Validated<string> {
  return validated(() => {
    checkService(service);
    return service;
  });
}

/** Validates a Watch request: `service` empty (all services) or a valid name; `start_revision` ≥ 0. */
export function validateWatch(
  request: WatchRequest,
): Validated<{ service: string | undefined; startRevision: bigint }> {
  return validated(() => {
    if (request.service !== "") checkService(request.service);
    const startRevision = parseInt64(request.startRevision, "start_revision");
    check(startRevision >= 0n, () => `start_revision: must not be negative, got ${startRevision}`);
    return { service: request.service === "" ? undefined : request.service, startRevision };
  });
}

/** Applies a validated change to the stored instance (a new object). */
export function applyChange(current: Instance, change: InstanceChange): Instance {
  return {
    ...current,
    weight: change.weight ?? current.weight,
    status: change.status ?? current.status,
    zone: change.zone ?? current.zone,
    metadata: change.metadata === undefined ? current.metadata : { ...change.metadata },
  };
}

function fencedKey(request: {
  service: string;
  instanceId: string;
  leaseId: string;
  registrationToken: string;
}): FencedKey {
  checkService(request.service);
  checkInstanceId(request.instanceId);
  return {
    key: { service: request.service, instanceId: request.instanceId },
    leaseId: checkLeaseId(request.leaseId),
    tokenHash: checkRegistrationToken(request.registrationToken),
  };
}

/** The hash of a present, plausible token; the token is a secret, so messages never echo it. */
function checkRegistrationToken(token: string): string {
  check(token !== "", () => "registration_token: required (the registration_token returned by Register)");
  check(
    token.length <= MAX_REGISTRATION_TOKEN_LENGTH,
    () =>
      `registration_token: must be at most ${MAX_REGISTRATION_TOKEN_LENGTH} characters (got ${token.length})`,
  );
  return hashRegistrationToken(token);
}
