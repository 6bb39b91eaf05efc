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
 * The one mapping of registry errors to gRPC status (DESIGN §3). Anything that is not a
 * {@link RegistryError} becomes `INTERNAL` with a fixed message: internals never leak.
 */
export function toServiceError(error: unknown): ServiceError {
  const normalised = RegistryError.from(error);
  const details = normalised.code === "internal" ? "internal error" : normalised.message;
  return Object.assign(new Error(details), {
    code: statusByCode[normalised.code],
    details,
    metadata: new Metadata(),
  });
}
