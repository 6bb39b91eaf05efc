import { createHistogram, performance, type RecordableHistogram } from "node:perf_hooks";
import { RegistryError } from "../registry-error.js";

/**
 * Thresholds of Register load shedding (README, "Operating": overload protection). Each is a
 * positive integer; the defaults are in {@link DEFAULT_OVERLOAD_OPTIONS}.
 */
export interface OverloadOptions {
  /**
   * Event-loop delay, p99 over the last 1–2 s ({@link EventLoopDelay}), in ms, above which new
   * Registers are shed; default 1000. A loop that late answers keepalives late: the collapse of
   * issue 10 showed 0.2–4.3 s stalls before leases went.
   */
  maxEventLoopDelayMs?: number | undefined;
  /**
   * Keepalive lag on the shared etcd keepalive streams, in ms, above which new Registers are shed:
   * the age of the oldest renewal waiting for etcd, or the slowest renewal etcd answered in the last
   * 5–10 s, whichever is longer. Default 1000 (half the 2 s after which a renewal fails
   * UNAVAILABLE; a lease is lost once its holder has no renewal for a whole TTL).
   */
  maxKeepAliveLagMs?: number | undefined;
  /** Registers waiting for etcd at once (grant + txn each) beyond which new ones are shed; default 1024. */
  maxRegistersInFlight?: number | undefined;
  /**
   * Cap on this replica's projected renewal rate, renewals/s: Σ 3/TTL over the leases it holds
   * and the Registers it admitted (registry/api/renewal-load.ts). A new Register whose lease would take
   * the projection over it is refused; default 4000 (13,333 instances at TTL 10 s). Per replica:
   * etcd's capacity is shared by every replica. Measured on a shared 2-core box with a local etcd
   * (bench/registry-scale.mjs): 3,000/s held every lease; 15,000/s lost 37,370 of 50,000.
   */
  maxRenewalsPerSecond?: number | undefined;
  /**
   * The `grpc-retry-pushback-ms` a shed Register carries (gRFC A6), in ms: drawn uniformly from
   * [pushbackMs, 2 × pushbackMs) so refused callers do not come back together; default 1000. The
   * registry keeps shedding for at least the pushback it announced after each overloaded reading.
   */
  pushbackMs?: number | undefined;
}

/** {@link OverloadOptions} resolved: every threshold set. */
export type ResolvedOverloadOptions = { readonly [K in keyof OverloadOptions]-?: number };

/** The defaults of {@link OverloadOptions}. */
export const DEFAULT_OVERLOAD_OPTIONS: ResolvedOverloadOptions = Object.freeze({
  maxEventLoopDelayMs: 1000,
  maxKeepAliveLagMs: 1000,
  maxRegistersInFlight: 1024,
  maxRenewalsPerSecond: 4000,
  pushbackMs: 1000,
});

/**
 * Validates overload options (each a positive integer) and applies the defaults.
 * @throws RegistryError `invalid_argument` naming the option.
 */
export function resolveOverloadOptions(options: OverloadOptions = {}): ResolvedOverloadOptions {
  const resolved: Record<string, number> = {};
  for (const [name, fallback] of Object.entries(DEFAULT_OVERLOAD_OPTIONS)) {
    const value = options[name as keyof OverloadOptions] ?? fallback;
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new RegistryError(
        "invalid_argument",
        `RegistryOptions.overload.${name} must be a positive integer, got ${value}`,
      );
    }
    resolved[name] = value;
  }
  return Object.freeze(resolved) as ResolvedOverloadOptions;
}

/** The readings the guard decides on, each read when a Register arrives. */
export interface OverloadSignals {
  /** Event-loop delay, ms (see {@link EventLoopDelay}). */
  eventLoopDelayMs(): number;
  /** Keepalive lag, ms (see {@link OverloadOptions.maxKeepAliveLagMs}); 0 when none waits and none was slow. */
  keepAliveLagMs(): number;
  /** Registers waiting for etcd now. */
  registersInFlight(): number;
}

/** Values of the `limit` label that count shed Registers in `leasehold_registry_limited_total`. */
export type OverloadSignal =
  | "overload_event_loop_delay"
  | "overload_keepalive_lag"
  | "overload_registers_in_flight"
  | "renewals_per_second";

/** A Register admitted, or shed with the signal that tripped and the pushback to announce. */
export type OverloadDecision =
  | { readonly isShed: false }
  | {
      readonly isShed: true;
      readonly signal: OverloadSignal;
      readonly pushbackMs: number;
      readonly message: string;
    };

/**
 * Decides whether a new Register is admitted (load shedding that protects the leases already
 * held: KeepAlive renewals are never asked). Shed when a reading is over its threshold, and for the
 * pushback announced after it (the registry does not admit before it told callers to come back),
 * naming the reading that tripped last. Pure: readings, clock and random are injected.
 */
export class OverloadGuard {
  readonly #options: ResolvedOverloadOptions;
  readonly #signals: OverloadSignals;
  readonly #nowMs: () => number;
  readonly #random: () => number;
  /** Until when Registers are shed (Unix ms), and why. */
  #shedUntilMs = Number.NEGATIVE_INFINITY;
  #trip: { signal: OverloadSignal; message: string } | undefined;

  constructor(options: {
    overload: ResolvedOverloadOptions;
    signals: OverloadSignals;
    /** Clock in ms; default `Date.now`. */
    nowMs?: () => number;
    /** Random in [0, 1); default `Math.random`. */
    random?: () => number;
  }) {
    this.#options = options.overload;
    this.#signals = options.signals;
    this.#nowMs = options.nowMs ?? Date.now;
    this.#random = options.random ?? Math.random;
  }

  /** Reads the signals once and decides for one new Register. */
  admitRegister(): OverloadDecision {
    const nowMs = this.#nowMs();
    const pushbackMs = Math.round(this.#options.pushbackMs * (1 + this.#random()));
    const trip = this.#overloaded();
    if (trip !== undefined) {
      this.#trip = trip;
      this.#shedUntilMs = Math.max(this.#shedUntilMs, nowMs + pushbackMs);
    }
    if (nowMs >= this.#shedUntilMs || this.#trip === undefined) return { isShed: false };
    return {
      isShed: true,
      signal: this.#trip.signal,
      pushbackMs: Math.max(pushbackMs, Math.ceil(this.#shedUntilMs - nowMs)),
      message: `registry overloaded (${this.#trip.message}); Register again after the grpc-retry-pushback-ms trailer's delay`,
    };
  }

  #overloaded(): { signal: OverloadSignal; message: string } | undefined {
    const options = this.#options;
    const lagMs = this.#signals.keepAliveLagMs();
    if (lagMs > options.maxKeepAliveLagMs) {
      return {
        signal: "overload_keepalive_lag",
        message: `a keepalive renewal has waited ${Math.round(lagMs)} ms for etcd, over maxKeepAliveLagMs ${options.maxKeepAliveLagMs}`,
      };
    }
    const delayMs = this.#signals.eventLoopDelayMs();
    if (delayMs > options.maxEventLoopDelayMs) {
      return {
        signal: "overload_event_loop_delay",
        message: `event-loop delay p99 ${Math.round(delayMs)} ms, over maxEventLoopDelayMs ${options.maxEventLoopDelayMs}`,
      };
    }
    const inFlight = this.#signals.registersInFlight();
    if (inFlight >= options.maxRegistersInFlight) {
      return {
        signal: "overload_registers_in_flight",
        message: `${inFlight} Registers wait for etcd, maxRegistersInFlight ${options.maxRegistersInFlight}`,
      };
    }
    return undefined;
  }
}

/** Length of one event-loop delay window, ms. */
export const EVENT_LOOP_WINDOW_MS = 1000;

/** Interval of the event-loop delay sampling timer, ms (`monitorEventLoopDelay` samples every 10 ms by default). */
const SAMPLE_INTERVAL_MS = 20;

/**
 * The process's event-loop delay: how late a 20 ms timer fires, recorded in a perf_hooks
 * histogram; the p99 of the current ~1 s window and the previous one, whichever is larger, so a
 * stall stays visible for one to two windows. The same timer records its sample and then turns the
 * window, so no stall is lost between windows. (perf_hooks `monitorEventLoopDelay` drops the first
 * interval after `reset()`: when Node ran a window-turning JS timer before that histogram's own
 * timer after a stall, the stall was never recorded — 21 of 80 400 ms stalls in a test script, and
 * CI runs of test/registry-overload admitted a Register right after one.) Sampling starts on the
 * first read, on an unref'd timer; {@link close} stops it. The p99 is computed on that timer, the
 * only writer of the histogram, not per read: `percentile()` walks the HDR histogram's buckets, and
 * a read per Register showed as 0.8 % of the registry's CPU under Register load (issue 10, `perf`).
 */
export class EventLoopDelay {
  /** Delays in µs (a recordable histogram takes integers ≥ 1). */
  readonly #histogram: RecordableHistogram = createHistogram();
  #previousMs = 0;
  /** p99 of the current window as of the last sample, ms. */
  #currentMs = 0;
  #windowStartMs = 0;
  #lastTickMs = 0;
  #timer: NodeJS.Timeout | undefined;

  /** The delay in ms (0 until sampled). Starts sampling on the first read. */
  readMs(): number {
    if (this.#timer === undefined) {
      this.#lastTickMs = this.#windowStartMs = performance.now();
      this.#timer = setInterval(() => this.#tick(), SAMPLE_INTERVAL_MS).unref();
    }
    return Math.max(this.#previousMs, this.#currentMs);
  }

  #tick(): void {
    const nowMs = performance.now();
    const lateMs = nowMs - this.#lastTickMs - SAMPLE_INTERVAL_MS;
    this.#lastTickMs = nowMs;
    this.#histogram.record(Math.max(1, Math.round(lateMs * 1000)));
    this.#currentMs = this.#histogram.percentile(99) / 1000;
    if (nowMs - this.#windowStartMs >= EVENT_LOOP_WINDOW_MS) {
      this.#previousMs = this.#currentMs;
      this.#currentMs = 0;
      this.#histogram.reset();
      this.#windowStartMs = nowMs;
    }
  }

  /** Stops sampling. Idempotent. */
  close(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
