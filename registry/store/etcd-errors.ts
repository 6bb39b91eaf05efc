import { EtcdLeaseInvalidError, GRPCDeadlineExceededError, isRecoverableError } from "etcd3";
import { RegistryError } from "../registry-error.js";

/**
 * Normalises an error thrown by etcd3 into a {@link RegistryError}: etcd unreachable or too slow
 * is `unavailable`, a missing lease is `not_found`, anything else is `internal`.
 */
export function fromEtcdError(error: unknown): RegistryError {
  if (error instanceof RegistryError) return error;
  if (error instanceof EtcdLeaseInvalidError) {
    return new RegistryError("not_found", "lease not found (expired or revoked)", { cause: error });
  }
  if (
    error instanceof GRPCDeadlineExceededError ||
    (typeof error === "object" && error !== null && isRecoverableError(error as Error))
  ) {
    return new RegistryError("unavailable", "etcd is unavailable", { cause: error });
  }
  return RegistryError.from(error);
}

/** True for etcd's answer to a read at a revision that compaction removed. */
export function isCompactedError(error: unknown): boolean {
  return error instanceof Error && error.message.includes("required revision has been compacted");
}

/** True for etcd's answer to a read at a revision it has not reached yet. */
export function isFutureRevisionError(error: unknown): boolean {
  return error instanceof Error && error.message.includes("required revision is a future revision");
}
