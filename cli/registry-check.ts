import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { connect as tlsConnect } from "node:tls";
import { decodeHealthStatus, encodeHealthRequest, HealthStatus } from "./health-codec.js";
import type { RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";

/**
 * Default deadline of the check, in ms. A port that is closed, answers UNIMPLEMENTED or speaks TLS
 * answers in milliseconds; only a host that does not answer at all waits this long. 2 s proved too
 * short on a loaded machine (two CPUs, a dozen CLIs starting at once), where connecting alone took it.
 */
export const CHECK_TIMEOUT_MS = 5000;

/** The service name whose `grpc.health.v1` status the registry ties to etcd (DESIGN §3). */
const REGISTRY_SERVICE = "leasehold.registry.v1.RegistryService";

/**
 * The registry at an address cannot be used: it is not running, is something else, speaks the
 * other transport (TLS / plaintext), or cannot reach etcd. Not the user's typing mistake, so the
 * CLI prints the message as one line and exits with status 1 (not 2).
 */
export class RegistryUnreachableError extends Error {
  override readonly name = "RegistryUnreachableError";
  /** The address as given (`host:port[,...]`). */
  readonly address: string;

  /** `message` is one line that names the address and the cause. */
  constructor(address: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.address = address;
  }
}

/**
 * Checks once, within `timeoutMs` (default 5000), that `address` is a working Leasehold registry:
 * one `ListServices` call that fails fast, as grpc-js calls do without `waitForReady`, then the
 * registry's own `grpc.health.v1.Health/Check`, which is NOT_SERVING while its etcd is unreachable.
 * Nothing is retried: a long-lived command calls this once at start and then rides out later outages.
 *
 * @throws RegistryUnreachableError naming the address and the cause: connection refused, name
 * resolution, not a Leasehold registry (UNIMPLEMENTED), TLS mismatch, not gRPC, no answer within
 * the deadline, or etcd unreachable behind the registry.
 */
export async function checkRegistry(
  registry: RegistryServiceClient,
  address: string,
  timeoutMs = CHECK_TIMEOUT_MS,
): Promise<void> {
  const deadline = new Date(Date.now() + timeoutMs);
  try {
    await new Promise<void>((resolve, reject) =>
      registry.listServices({}, new Metadata(), { deadline }, (error) =>
        error === null ? resolve() : reject(error),
      ),
    );
  } catch (error) {
    const message = await describeFailure(error as ServiceError, address, timeoutMs);
    throw new RegistryUnreachableError(address, message, { cause: error });
  }
  let health: number | undefined;
  try {
    health = await healthCheck(registry, deadline);
  } catch (error) {
    const code = (error as Partial<ServiceError>).code;
    // A registry without the health service (or without this name in it) cannot say; trust ListServices.
    if (code === status.UNIMPLEMENTED || code === status.NOT_FOUND) return;
    const message = await describeFailure(error as ServiceError, address, timeoutMs);
    throw new RegistryUnreachableError(address, message, { cause: error });
  }
  if (health !== HealthStatus.SERVING) {
    throw new RegistryUnreachableError(
      address,
      `the registry at ${address} answers, but etcd is unreachable behind it (health NOT_SERVING); check its --etcd and that etcd is up`,
    );
  }
}

/** One line naming the address and the cause of a failed call, from the grpc-js status and details. */
async function describeFailure(error: ServiceError, address: string, timeoutMs: number): Promise<string> {
  const details = String(error.details ?? error.message);
  const unreachable = `cannot reach the registry at ${address}`;
  switch (error.code) {
    case status.UNIMPLEMENTED:
      return `${address} is not a Leasehold registry: it answers gRPC but not ${REGISTRY_SERVICE} (UNIMPLEMENTED); check the port`;
    case status.DEADLINE_EXCEEDED:
      return `${unreachable}: no answer within ${timeoutMs} ms (is the host reachable and the registry running?)`;
    case status.UNAVAILABLE: {
      if (/etcd/i.test(details)) {
        return `the registry at ${address} answers, but etcd is unreachable behind it (${firstLine(details)})`;
      }
      const cause = await describeUnavailable(details, address);
      return `${unreachable}: ${cause}${cause === "connection refused" ? " (is `leasehold registry` running there?)" : ""}`;
    }
    default:
      return `the registry at ${address} failed: ${status[error.code] ?? String(error.code)}: ${firstLine(details)}`;
  }
}

async function describeUnavailable(details: string, address: string): Promise<string> {
  const known = causeOf(details);
  if (known !== undefined) return known;
  if (/Failed to connect|Connection dropped|ECONNRESET/.test(details) && (await speaksTls(address))) {
    return "TLS mismatch: the port expects TLS but this client connects in plaintext (give --tls-ca, and --tls-cert/--tls-key for mTLS)";
  }
  return `UNAVAILABLE: ${firstLine(details.replace(/^No connection established\. Last error: /, ""))}`;
}

/** The cause of a failed connection, from a grpc-js error's details, in words; undefined if unknown. */
function causeOf(details: string): string | undefined {
  if (/ECONNREFUSED/.test(details)) return "connection refused";
  if (/Name resolution failed|ENOTFOUND|EAI_AGAIN/.test(details)) return "cannot resolve the host name";
  if (/EHOSTUNREACH|ENETUNREACH/.test(details)) return "host unreachable";
  if (/wrong version number|SSL routines|tlsv1 alert|certificate/i.test(details)) {
    return "TLS mismatch: this client uses TLS but the port answers in plaintext (or the certificate is refused)";
  }
  if (/Protocol error/.test(details)) return "the port does not speak gRPC (HTTP/2 protocol error)";
  return undefined;
}

/**
 * The cause of a failed connection to any gRPC server (the registry, etcd) in a few words:
 * "connection refused", "no answer within 5000 ms", ... or the status and first line of the details.
 */
export function describeConnectFailure(error: unknown): string {
  const details = String(
    (error as Partial<ServiceError> | null)?.details ?? (error instanceof Error ? error.message : error),
  );
  const known = causeOf(details);
  if (known !== undefined) return known;
  const deadline = /Deadline exceeded after ([\d.]+)s/.exec(details);
  if (deadline !== null) return `no answer within ${Number(deadline[1]) * 1000} ms`;
  return firstLine(details.replace(/^No connection established\. Last error: /, "")).replace(
    / \(\d{4}-\d\d-\d\dT[^)]*\)/g,
    "",
  );
}

/** True when a TLS handshake with the first address succeeds (any certificate): the port speaks TLS. */
async function speaksTls(address: string): Promise<boolean> {
  const first = (address.split(",")[0] ?? "").trim();
  const match = /^\[?([^\]]*)\]?:(\d+)$/.exec(first);
  if (match === null) return false;
  const [, host = "", port = ""] = match;
  return await new Promise<boolean>((resolve) => {
    const socket = tlsConnect({ host, port: Number(port), rejectUnauthorized: false, ALPNProtocols: ["h2"] });
    const done = (speaks: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(speaks);
    };
    const timer = setTimeout(() => done(false), 1000);
    socket.once("secureConnect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** `grpc.health.v1.Health/Check` for the registry service over the registry client's own channel. */
async function healthCheck(registry: RegistryServiceClient, deadline: Date): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    registry.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      encodeHealthRequest,
      decodeHealthStatus,
      REGISTRY_SERVICE,
      new Metadata(),
      { deadline },
      (error, healthStatus) => (error === null ? resolve(healthStatus ?? 0) : reject(error)),
    );
  });
}

function firstLine(text: string): string {
  return (text.split("\n")[0] ?? "").trim();
}
