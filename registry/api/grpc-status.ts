import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { RegistryError, type RegistryErrorCode } from "../registry-error.js";

const statusByCode: Readonly<Record<RegistryErrorCode, status>> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  permission_denied: status.PERMISSION_DENIED,
  unauthenticated: status.UNAUTHENTICATED,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  aborted: status.ABORTED,
  out_of_range: status.OUT_OF_RANGE,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
  cancelled: status.CANCELLED,
  unavailable: status.UNAVAILABLE,
  internal: status.INTERNAL,
};

/**
 * The one mapping of registry errors to gRPC status (DESIGN §3): the status code and the message
 * a caller may see. Anything that is not a {@link RegistryError} becomes `INTERNAL` with a fixed
 * message: internals never leak. The HTTP API answers the same code (Connect's codes are gRPC's).
 */
export function statusOf(error: unknown): { readonly code: status; readonly details: string } {
  const normalised = RegistryError.from(error);
  const details = normalised.code === "internal" ? "internal error" : normalised.message;
  return { code: statusByCode[normalised.code], details };
}

/** Trailer of a retry delay the server asks for, in ms (gRFC A6 server pushback). */
export const RETRY_PUSHBACK_TRAILER = "grpc-retry-pushback-ms";

/**
 * {@link statusOf} as the `ServiceError` a grpc-js handler fails with; a
 * {@link RegistryError.retryPushbackMs} goes out as the {@link RETRY_PUSHBACK_TRAILER} trailer.
 */
export function toServiceError(error: unknown): ServiceError {
  const { code, details } = statusOf(error);
  const metadata = new Metadata();
  const pushbackMs = error instanceof RegistryError ? error.retryPushbackMs : undefined;
  if (pushbackMs !== undefined) metadata.set(RETRY_PUSHBACK_TRAILER, String(Math.round(pushbackMs)));
  return Object.assign(new Error(details), { code, details, metadata });
}
