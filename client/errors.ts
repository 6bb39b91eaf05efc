import { Metadata, status as GrpcStatus, type StatusObject } from "@grpc/grpc-js";

/**
 * The gRPC status code names, as they appear in `leasehold_client_requests_total{code}` and in
 * `grpc.status`. `OK` is a result, not an error, so {@link LeaseholdErrorCode} leaves it out.
 */
export type StatusCodeName =
  | "OK"
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

/** The stable code of a {@link LeaseholdError}: every gRPC status code name except `OK`. */
export type LeaseholdErrorCode = Exclude<StatusCodeName, "OK">;

/** Name → numeric gRPC status. The only place codes and gRPC status numbers meet. */
const STATUS_BY_NAME: Readonly<Record<StatusCodeName, GrpcStatus>> = Object.freeze({
  OK: GrpcStatus.OK,
  CANCELLED: GrpcStatus.CANCELLED,
  UNKNOWN: GrpcStatus.UNKNOWN,
  INVALID_ARGUMENT: GrpcStatus.INVALID_ARGUMENT,
  DEADLINE_EXCEEDED: GrpcStatus.DEADLINE_EXCEEDED,
  NOT_FOUND: GrpcStatus.NOT_FOUND,
  ALREADY_EXISTS: GrpcStatus.ALREADY_EXISTS,
  PERMISSION_DENIED: GrpcStatus.PERMISSION_DENIED,
  RESOURCE_EXHAUSTED: GrpcStatus.RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION: GrpcStatus.FAILED_PRECONDITION,
  ABORTED: GrpcStatus.ABORTED,
  OUT_OF_RANGE: GrpcStatus.OUT_OF_RANGE,
  UNIMPLEMENTED: GrpcStatus.UNIMPLEMENTED,
  INTERNAL: GrpcStatus.INTERNAL,
  UNAVAILABLE: GrpcStatus.UNAVAILABLE,
  DATA_LOSS: GrpcStatus.DATA_LOSS,
  UNAUTHENTICATED: GrpcStatus.UNAUTHENTICATED,
});

/** Numeric gRPC status → name; indexed by the status number (0..16). */
const NAME_BY_STATUS: readonly StatusCodeName[] = (() => {
  const names: StatusCodeName[] = [];
  for (const [name, value] of Object.entries(STATUS_BY_NAME)) names[value] = name as StatusCodeName;
  return names;
})();

/** The name of a numeric gRPC status; an unknown number is `UNKNOWN` (as grpc-js does). */
export function statusCodeName(code: number): StatusCodeName {
  return NAME_BY_STATUS[code] ?? "UNKNOWN";
}

/** Go's spelling of each code name, as go-grpc-prometheus writes `grpc_code`. */
const METRIC_LABEL_BY_NAME: Readonly<Record<string, string>> = Object.fromEntries(
  Object.keys(STATUS_BY_NAME).map((name) => [
    name,
    name === "CANCELLED"
      ? "Canceled"
      : name === "OK"
        ? "OK"
        : name
            .toLowerCase()
            .replace(/(^|_)([a-z])/g, (_match, _sep: string, letter: string) => letter.toUpperCase()),
  ]),
);

/**
 * The `code`/`grpc_code` label value of a gRPC status in every Leasehold metric, client and server:
 * Go's spelling (`OK`, `Unavailable`, `DeadlineExceeded`, `Canceled`, ...), as go-grpc-prometheus
 * writes it, so stock gRPC dashboards and alerts match. Accepts a status number or a code name; an
 * unknown one is `Unknown`.
 */
export function metricCodeLabel(code: number | StatusCodeName): string {
  return METRIC_LABEL_BY_NAME[typeof code === "number" ? statusCodeName(code) : code] ?? "Unknown";
}

/** The numeric gRPC status of a code name. */
export function grpcStatusOf(code: StatusCodeName): GrpcStatus {
  return STATUS_BY_NAME[code];
}

/**
 * Codes worth another attempt on a DIFFERENT instance: the instance could not take the call
 * (`UNAVAILABLE`, which includes an open breaker) or shed it (`RESOURCE_EXHAUSTED`). Not
 * `DEADLINE_EXCEEDED`: the deadline belongs to the whole call, so it is spent. Not caller faults.
 */
const RETRYABLE: ReadonlySet<LeaseholdErrorCode> = new Set<LeaseholdErrorCode>([
  "UNAVAILABLE",
  "RESOURCE_EXHAUSTED",
]);

/** opossum rejection codes (`err.code` strings) and what they mean to a caller. */
const OPOSSUM_CODES: Readonly<Record<string, { code: LeaseholdErrorCode; message: string }>> = Object.freeze({
  EOPENBREAKER: { code: "UNAVAILABLE", message: "circuit breaker is open" },
  ESHUTDOWN: { code: "UNAVAILABLE", message: "circuit breaker is shut down (instance left)" },
  ESEMLOCKED: { code: "RESOURCE_EXHAUSTED", message: "circuit breaker capacity reached" },
  ETIMEDOUT: { code: "DEADLINE_EXCEEDED", message: "circuit breaker timeout" },
});

export interface LeaseholdErrorOptions {
  /** What was thrown originally. */
  readonly cause?: unknown;
  /** gRPC trailers/metadata of the failed call, when there was one. */
  readonly metadata?: Metadata;
}

/**
 * The one error type of the Leasehold client: a stable {@link LeaseholdErrorCode} (the gRPC status
 * code name), a human `message`, the original `cause`, and `retryable` derived from the code.
 * Normalise anything thrown at a boundary with {@link LeaseholdError.from}.
 */
export class LeaseholdError extends Error {
  override readonly name = "LeaseholdError";
  readonly code: LeaseholdErrorCode;
  /** gRPC trailers/metadata of the failed call; empty when the error did not come from a call. */
  readonly metadata: Metadata;

  constructor(code: LeaseholdErrorCode, message: string, options: LeaseholdErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.metadata = options.metadata ?? new Metadata();
  }

  /** True when another attempt on a different instance may succeed (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`). */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }

  /** The numeric gRPC status of {@link code}. */
  get grpcStatus(): GrpcStatus {
    return STATUS_BY_NAME[this.code];
  }

  /** A gRPC status object for a server handler's callback (`callback(err.toStatusObject())`). */
  toStatusObject(): Partial<StatusObject> {
    return { code: this.grpcStatus, details: this.message, metadata: this.metadata };
  }

  /**
   * Normalises anything thrown: a `LeaseholdError` as is; a grpc-js `ServiceError` (numeric `code`
   * plus `details`) by its status; an `AbortError` as `CANCELLED` and a `TimeoutError`
   * (`AbortSignal.timeout`) as `DEADLINE_EXCEEDED`; opossum rejections (`EOPENBREAKER`,
   * `ESHUTDOWN` → `UNAVAILABLE`, `ESEMLOCKED` → `RESOURCE_EXHAUSTED`); anything else `UNKNOWN`.
   */
  static from(error: unknown): LeaseholdError {
    if (error instanceof LeaseholdError) return error;
    if (typeof error === "object" && error !== null) {
      const { code, details, metadata, name, message } = error as {
        code?: unknown;
        details?: unknown;
        metadata?: unknown;
        name?: unknown;
        message?: unknown;
      };
      const text = typeof message === "string" ? message : "";
      // Names first: a DOMException also has a numeric `code` (ABORT_ERR is 20, TIMEOUT_ERR 23).
      if (name === "AbortError")
        return new LeaseholdError("CANCELLED", text || "call aborted", { cause: error });
      if (name === "TimeoutError")
        return new LeaseholdError("DEADLINE_EXCEEDED", text || "call timed out", { cause: error });
      if (typeof code === "number" && Number.isInteger(code) && code > 0) {
        const grpcCode = statusCodeName(code);
        return new LeaseholdError(
          grpcCode === "OK" ? "UNKNOWN" : grpcCode,
          typeof details === "string" ? details : text,
          {
            cause: error,
            ...(metadata instanceof Metadata ? { metadata } : {}),
          },
        );
      }
      if (typeof code === "string") {
        const opossum = OPOSSUM_CODES[code];
        if (opossum !== undefined) return new LeaseholdError(opossum.code, opossum.message, { cause: error });
      }
      return new LeaseholdError("UNKNOWN", text || "non-Error object thrown", { cause: error });
    }
    return new LeaseholdError("UNKNOWN", String(error), { cause: error });
  }
}
