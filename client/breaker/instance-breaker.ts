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
  /** Time an open breaker first waits before letting one trial call through (half-open). Default 5000. */
  readonly resetTimeoutMs?: number;
  /**
   * Cap of the reopen delay: each consecutive ejection (a failed half-open trial) doubles it, up to
   * this (Envoy's ejection backoff). Default 60000.
   */
  readonly maxResetTimeoutMs?: number;
  /**
   * Endpoint faults in a row that open the breaker whatever the window says (Envoy's
   * consecutive_5xx, default 5), so an instance that turns bad after serving well is ejected at once.
   * 0 turns it off. Default 5.
   */
  readonly consecutiveFailures?: number;
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
  maxResetTimeoutMs: 60_000,
  consecutiveFailures: 5,
  rollingCountTimeoutMs: 10_000,
  rollingCountBuckets: 10,
});

/** Resolves and validates breaker options once; throws `LeaseholdError` `INVALID_ARGUMENT`. */
export function resolveBreakerOptions(options: BreakerOptions = {}): ResolvedBreakerOptions {
  const given = stripUndefined(options);
  const resolved = {
    ...DEFAULT_BREAKER_OPTIONS,
    // An explicit reset delay above the default cap raises the cap with it.
    maxResetTimeoutMs: Math.max(DEFAULT_BREAKER_OPTIONS.maxResetTimeoutMs, given.resetTimeoutMs ?? 0),
    ...given,
  };
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
  check(resolved.maxResetTimeoutMs >= resolved.resetTimeoutMs, "maxResetTimeoutMs must be ≥ resetTimeoutMs");
  check(
    Number.isInteger(resolved.consecutiveFailures) && resolved.consecutiveFailures >= 0,
    "consecutiveFailures must be an integer ≥ 0",
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

/** The part of opossum's `Status` (status.js) its listeners call; its types lack `increment`. */
interface OpossumStatus {
  increment(property: "fires" | "successes" | "failures", latencyMs?: number): void;
}

/**
 * The outcome of a call that ends by callback (a gRPC call), as the thenable opossum's action
 * returns: opossum attaches its handlers with `then(onSuccess).catch(onFailure)` (any thenable
 * will do, circuit.js) and {@link settle} calls them synchronously, so counting a call under the
 * breaker makes no promise, no closure and no microtask of its own.
 */
export class CallOutcome {
  #onSuccess: ((value: unknown) => unknown) | undefined = undefined;
  #onFailure: ((error: unknown) => unknown) | undefined = undefined;

  then(onSuccess?: (value: unknown) => unknown, onFailure?: (error: unknown) => unknown): this {
    this.#onSuccess = onSuccess;
    if (onFailure !== undefined) this.#onFailure = onFailure;
    return this;
  }

  catch(onFailure: (error: unknown) => unknown): this {
    this.#onFailure = onFailure;
    return this;
  }

  /**
   * Reports the call's end to its breaker: `error` undefined for a success. Once; a no-op when
   * the breaker did not run the call (open, shut down).
   */
  settle(error: LeaseholdError | undefined): void {
    const handler = error === undefined ? this.#onSuccess : this.#onFailure;
    this.#onSuccess = this.#onFailure = undefined;
    handler?.(error);
  }
}

/** opossum's options plus one its types lack (`enableSnapshots`, opossum ≥ 6). */
type OpossumOptions = CircuitBreaker.Options<[Attempt | CallOutcome]> & { enableSnapshots: boolean };

/** Absorbs opossum's promise of a tracked call: its outcome is counted, nobody else awaits it. */
const ignore = (): undefined => undefined;

/** The arguments of a tracked call, as opossum's events carry them: none. */
const NO_ARGS: readonly unknown[] = Object.freeze([]);

/**
 * One breaker for one instance. Created when the instance appears, {@link shutdown} when it leaves.
 *
 * - closed → open: more than `errorThresholdPercentage` % endpoint faults among at least
 *   `volumeThreshold` calls in the rolling window, or `consecutiveFailures` endpoint faults in a row.
 * - open → half-open: after the reset delay; exactly one trial call is let through. The delay is
 *   `resetTimeoutMs`, doubled for each failed trial in a row, capped at `maxResetTimeoutMs`.
 * - half-open → closed when the trial is not an endpoint fault (the delay resets), → open again
 *   when it is.
 *
 * `timeout` is off: the gRPC deadline ends the call, opossum's timeout would not cancel it.
 */
export class InstanceBreaker {
  readonly #breaker: CircuitBreaker<[Attempt | CallOutcome], unknown>;
  #state: BreakerState = "closed";
  #isShutdown = false;
  #consecutiveFaults = 0;
  readonly #options: ResolvedBreakerOptions;
  /** opossum's rolling window, which its own `fire`, `success` and `failure` listeners increment. */
  readonly #status: OpossumStatus;

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
    this.#options = options;
    this.#breaker = new CircuitBreaker(
      // opossum's types say Promise; its code takes any thenable.
      (work: Attempt | CallOutcome) =>
        work instanceof CallOutcome ? (work as unknown as Promise<unknown>) : work(),
      opossumOptions,
    );
    this.#status = this.#breaker.status as unknown as OpossumStatus;
    // opossum reads options.resetTimeout each time it opens: set the next delay ahead of time.
    const live = (this.#breaker as unknown as { options: { resetTimeout: number } }).options;
    const move = (to: BreakerState) => () => {
      const previous = this.#state;
      if (previous === to) return;
      this.#state = to;
      if (to === "closed") {
        this.#consecutiveFaults = 0;
        live.resetTimeout = options.resetTimeoutMs;
      } else if (to === "half-open") {
        live.resetTimeout = Math.min(options.maxResetTimeoutMs, live.resetTimeout * 2);
      }
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

  /**
   * Counts the start of a call that ends by callback under the breaker, as `fire` does for a
   * promise; report its end once with {@link callEnded} and what this returned. The picker only
   * starts calls the breaker admits; a call it refuses all the same (open, shut down) is not
   * counted (`false`). A half-open trial goes through opossum's `fire()`, which admits only one,
   * and returns the {@link CallOutcome} to settle.
   */
  callStarted(): CallOutcome | boolean {
    // opossum would reject it with an Error (a stack trace each) that nobody reads: an open
    // breaker kept in the pick set by the max-ejection cap sees every call of its share.
    if (!this.isCallPermitted) return false;
    if (!this.#breaker.closed) {
      const outcome = new CallOutcome();
      this.#breaker.fire(outcome).catch(ignore); // the half-open trial
      return outcome;
    }
    // Closed: what opossum's fire() counts for a call (its `fire` event, whose one listener is
    // this increment of its rolling window), without its promises, closures and semaphore.
    this.#status.increment("fires");
    return true;
  }

  /**
   * Reports the end of a call counted by {@link callStarted} (`started` is what that returned)
   * with its status `code`, then counts it toward `consecutiveFailures` ({@link noteOutcome}).
   * Caller faults count as successes (opossum's `errorFilter`).
   */
  callEnded(started: CallOutcome | boolean, code: LeaseholdErrorCode | "OK", details: string): void {
    if (started === true) this.#countClosedCall(code, details);
    else if (started !== false) started.settle(code === "OK" ? undefined : new LeaseholdError(code, details));
    this.noteOutcome(code);
  }

  /** The end of a call started while closed: opossum's success and failure paths (circuit.js). */
  #countClosedCall(code: LeaseholdErrorCode | "OK", details: string): void {
    const breaker = this.#breaker;
    const isFault = code !== "OK" && isEndpointFault(code);
    if (!breaker.closed) {
      // It opened (or went half-open) meanwhile: opossum's own events, whose listeners act on
      // that state (a success closes a half-open breaker).
      if (!isFault) breaker.emit("success", undefined, 0);
      else this.#countFailure(new LeaseholdError(code, details));
      return;
    }
    // Closed, the one state in which opossum's `success` and `failure` listeners do nothing but
    // this increment: no event, no LeaseholdError.
    if (!isFault) {
      this.#status.increment("successes", 0);
      return;
    }
    this.#status.increment("failures", 0);
    this.#openOnFailureRate();
  }

  /** opossum's failure path (circuit.js `handleError` and `fail`), for a call fired while closed. */
  #countFailure(error: unknown): void {
    const breaker = this.#breaker;
    if (!isEndpointFault(LeaseholdError.from(error).code)) {
      breaker.emit("success", error, 0); // the errorFilter: a caller fault counts as a success
      return;
    }
    breaker.emit("failure", error, 0, NO_ARGS);
    this.#openOnFailureRate();
  }

  /** opossum's `fail`: opens the breaker once the window's failure rate passes the threshold. */
  #openOnFailureRate(): void {
    const breaker = this.#breaker;
    if (breaker.warmUp) return;
    const stats = breaker.stats;
    if (stats.fires < breaker.volumeThreshold && !breaker.halfOpen) return;
    if ((stats.failures / stats.fires) * 100 > this.#options.errorThresholdPercentage || breaker.halfOpen)
      breaker.open();
  }

  /**
   * Endpoint faults among the calls that ran in the rolling window (opossum's stats), 0–1; 0 when
   * none ran. Rejections by the open breaker are not calls and do not count.
   */
  get failureRatio(): number {
    const { failures, successes } = this.#breaker.stats;
    return failures + successes === 0 ? 0 : failures / (failures + successes);
  }

  /** The delay before the next half-open trial if the breaker opens now, ms. */
  get resetTimeoutMs(): number {
    return (this.#breaker as unknown as { options: { resetTimeout: number } }).options.resetTimeout;
  }

  /**
   * Counts an outcome toward `consecutiveFailures`; opens the breaker when the run of endpoint
   * faults reaches it. Call once per finished call, after its `fire` settled.
   */
  noteOutcome(code: LeaseholdErrorCode | "OK"): void {
    if (code === "OK" || !isEndpointFault(code)) {
      this.#consecutiveFaults = 0;
      return;
    }
    this.#consecutiveFaults++;
    const limit = this.#options.consecutiveFailures;
    if (limit > 0 && this.#consecutiveFaults >= limit && this.#state === "closed" && !this.#isShutdown)
      this.#breaker.open();
  }

  /** Stops timers and listeners; later `fire`s reject (`ESHUTDOWN`). Idempotent. */
  shutdown(): void {
    if (this.#isShutdown) return;
    this.#isShutdown = true;
    this.#breaker.shutdown();
  }
}
