/**
 * Stable codes of registry failures. They name the gRPC status each one maps to
 * (see `api/grpc-status.ts`, the only module that does that mapping).
 */
export type RegistryErrorCode =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "unauthenticated"
  | "resource_exhausted"
  | "aborted"
  | "out_of_range"
  | "deadline_exceeded"
  | "cancelled"
  | "unavailable"
  | "internal";

const retryableCodes: ReadonlySet<RegistryErrorCode> = new Set([
  "unavailable",
  "aborted",
  "resource_exhausted",
]);

/**
 * The one error type of the registry: a stable `code`, a message that is safe to show callers
 * (except for `internal`, whose message is never sent), and the original `cause`.
 */
export class RegistryError extends Error {
  override readonly name = "RegistryError";
  readonly code: RegistryErrorCode;
  /**
   * How long the caller should wait before trying again, in ms: sent as the
   * `grpc-retry-pushback-ms` trailer (gRFC A6 server pushback); undefined = no advice.
   */
  readonly retryPushbackMs: number | undefined;

  constructor(
    code: RegistryErrorCode,
    message: string,
    options?: { cause?: unknown; retryPushbackMs?: number | undefined },
  ) {
    super(message, options);
    this.code = code;
    this.retryPushbackMs = options?.retryPushbackMs;
  }

  /** True when the same call may succeed if tried again later. */
  get retryable(): boolean {
    return retryableCodes.has(this.code);
  }

  /** Normalises anything thrown at a boundary: a `RegistryError` stays as it is, the rest is `internal`. */
  static from(error: unknown): RegistryError {
    if (error instanceof RegistryError) return error;
    return new RegistryError("internal", error instanceof Error ? error.message : String(error), {
      cause: error,
    });
  }
}
