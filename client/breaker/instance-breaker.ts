/**
 * The per-instance circuit breaker (DESIGN §5): an adapter over opossum, the only module that
 * imports it. opossum's EventEmitter stays in here; callers see a state, a guarded `fire` and a
 * state-change callback.
 */
import CircuitBreaker from "opossum";
import { LeaseholdError, type LeaseholdErrorCode } from "../errors.js";

/** Breaker state as callers and `leasehold call --json` see it. */
export type BreakerState = "closed" | "half-open" | "open";

/** `leasehold_client_breaker_state` values (DESIGN §7). */
export const BREAKER_STATE_VALUE: Readonly<Record<BreakerState, 0 | 1 | 2>> = Object.freeze({
  closed: 0,
  "half-open": 1,
  open: 2,
});

/** Tuning of every instance's breaker. Durations in milliseconds; all optional. */
export interface BreakerOptions {
  /** Calls in the rolling window before the error rate may open the breaker. Default 5 (opossum's 0 opens on the first failure). */
  readonly volumeThreshold?: number;
  /** The breaker opens when endpoint faults exceed this percentage of calls in the window. Default 50. */
  readonly errorThresholdPercentage?: number;
  /** Time an open breaker waits before letting one trial call through (half-open). Default 5000. */
  readonly resetTimeoutMs?: number;
  /** Length of the rolling statistics window. Default 10000. */
  readonly rollingCountTimeoutMs?: number;
  /** Buckets in the rolling window (must divide it sensibly). Default 10. */
  readonly rollingCountBuckets?: number;
}

export type ResolvedBreakerOptions = Readonly<Required<BreakerOptions>>;

export const DEFAULT_BREAKER_OPTIONS: ResolvedBreakerOptions = Object.freeze({
  volumeThreshold: 5,
  errorThresholdPercentage: 50,
  resetTimeoutMs: 5000,
  rollingCountTimeoutMs: 10_000,
  rollingCountBuckets: 10,
});

/** Resolves and validates breaker options once; throws `LeaseholdError` `INVALID_ARGUMENT`. */
export function resolveBreakerOptions(options: BreakerOptions = {}): ResolvedBreakerOptions {
  const resolved = { ...DEFAULT_BREAKER_OPTIONS, ...stripUndefined(options) };
  const check = (ok: boolean, what: string): void => {
    if (!ok) throw new LeaseholdError("INVALID_ARGUMENT", `breaker option ${what}`);
  };
  check(
    Number.isInteger(resolved.volumeThreshold) && resolved.volumeThreshold >= 0,
    "volumeThreshold must be an integer ≥ 0",
  );
  check(
    resolved.errorThresholdPercentage >= 0 && resolved.errorThresholdPercentage <= 100,
    "errorThresholdPercentage must be within 0..100",
  );
  check(
    Number.isFinite(resolved.resetTimeoutMs) && resolved.resetTimeoutMs > 0,
    "resetTimeoutMs must be > 0",
  );
  check(
    Number.isInteger(resolved.rollingCountBuckets) && resolved.rollingCountBuckets > 0,
    "rollingCountBuckets must be an integer > 0",
  );
  check(
    Number.isFinite(resolved.rollingCountTimeoutMs) &&
      resolved.rollingCountTimeoutMs >= resolved.rollingCountBuckets,
    "rollingCountTimeoutMs must be ≥ rollingCountBuckets",
  );
  return Object.freeze(resolved);
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Endpoint faults (DESIGN §5): the only codes that count against an instance. */
const ENDPOINT_FAULTS: ReadonlySet<LeaseholdErrorCode> = new Set<LeaseholdErrorCode>([
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "RESOURCE_EXHAUSTED",
  "INTERNAL",
  "UNKNOWN",
]);

/** True for codes that count against the instance (never caller faults like `INVALID_ARGUMENT`). */
export function isEndpointFault(code: LeaseholdErrorCode): boolean {
  return ENDPOINT_FAULTS.has(code);
}

type Attempt = () => Promise<unknown>;

/** opossum's options plus one its types lack (`enableSnapshots`, opossum ≥ 6). */
type OpossumOptions = CircuitBreaker.Options<[Attempt]> & { enableSnapshots: boolean };

/**
 * One breaker for one instance. Created when the instance appears, {@link shutdown} when it leaves.
 *
 * - closed → open: more than `errorThresholdPercentage` % endpoint faults among at least
 *   `volumeThreshold` calls in the rolling window.
 * - open → half-open: after `resetTimeoutMs`; exactly one trial call is let through.
 * - half-open → closed when the trial is not an endpoint fault, → open again when it is.
 *
 * `timeout` is off: the gRPC deadline ends the call, opossum's timeout would not cancel it.
 */
export class InstanceBreaker {
  readonly #breaker: CircuitBreaker<[Attempt], unknown>;
  #state: BreakerState = "closed";
  #isShutdown = false;

  /**
   * @param name instance id, for opossum's stats and traces
   * @param onStateChange called synchronously after every transition (not on shutdown)
   */
  constructor(
    name: string,
    options: ResolvedBreakerOptions,
    onStateChange: (state: BreakerState, previous: BreakerState) => void = () => undefined,
  ) {
    const opossumOptions: OpossumOptions = {
      name,
      timeout: false,
      volumeThreshold: options.volumeThreshold,
      errorThresholdPercentage: options.errorThresholdPercentage,
      resetTimeout: options.resetTimeoutMs,
      rollingCountTimeout: options.rollingCountTimeoutMs,
      rollingCountBuckets: options.rollingCountBuckets,
      // Percentiles keep every latency of the window and sort them on each failure; snapshots
      // compute the stats every bucket interval per breaker. Neither is used here.
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
      // A filtered error counts as a success for opossum: caller faults must not trip the breaker.
      errorFilter: (error: unknown) => !isEndpointFault(LeaseholdError.from(error).code),
    };
    this.#breaker = new CircuitBreaker((attempt: Attempt) => attempt(), opossumOptions);
    const move = (to: BreakerState) => () => {
      const previous = this.#state;
      if (previous === to) return;
      this.#state = to;
      onStateChange(to, previous);
    };
    this.#breaker.on("open", move("open"));
    this.#breaker.on("halfOpen", move("half-open"));
    this.#breaker.on("close", move("closed"));
  }

  get state(): BreakerState {
    return this.#state;
  }

  /** False only while open: a picker may choose the instance (half-open admits a trial). */
  get isAdmitting(): boolean {
    return this.#state !== "open";
  }

  /**
   * Would `fire` run the call now? False while open and while a half-open trial is in flight,
   * so a caller can pick another instance instead of spending an attempt on a rejection.
   */
  get isCallPermitted(): boolean {
    return !this.#isShutdown && (this.#breaker.closed || this.#breaker.pendingClose);
  }

  get isShutdown(): boolean {
    return this.#isShutdown;
  }

  /**
   * Runs `attempt` under the breaker. Resolves with its result; rejects with its error, or with an
   * opossum rejection (`EOPENBREAKER`, `ESHUTDOWN`) that `LeaseholdError.from` maps to
   * `UNAVAILABLE`. The attempt should reject with a `LeaseholdError` (anything else counts as
   * `UNKNOWN`, an endpoint fault).
   */
  fire<T>(attempt: () => Promise<T>): Promise<T> {
    return this.#breaker.fire(attempt) as Promise<T>;
  }

  /** Stops timers and listeners; later `fire`s reject (`ESHUTDOWN`). Idempotent. */
  shutdown(): void {
    if (this.#isShutdown) return;
    this.#isShutdown = true;
    this.#breaker.shutdown();
  }
}
