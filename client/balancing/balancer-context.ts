/**
 * What a Leasehold load balancer inside a grpc-js channel needs from the process that made the
 * channel: metrics, breaker tuning, a logger and a random source. grpc-js channel options must
 * stay plain values (grpc-js prints them when tracing), so a channel names its context by id in
 * the channel option {@link CONTEXT_OPTION}; channels without one use the default context that
 * `registerLeasehold()` sets. The typed balanced client makes a context of its own, and reads its
 * balancers' per-instance stats through it.
 */
import { pino, type Logger } from "pino";
import type { ClientMetrics } from "../metrics/client-metrics.js";
import type { BreakerState, ResolvedBreakerOptions } from "../breaker/instance-breaker.js";
import { resolveBreakerOptions } from "../breaker/instance-breaker.js";
import { LeaseholdError } from "../errors.js";
import { DEFAULT_STALL_FLOOR_MS } from "./stall-detector.js";

/**
 * The metadata options object the typed client gives each attempt (`new Metadata(tag)`); the
 * picker writes the address of the instance it picked into it. grpc-js keeps a metadata's options
 * object through the clones between the call and the pick, and its `getPeer()` says "unknown"
 * until the server answers, so this is how the client knows where a silent attempt went.
 */
export class AttemptTag {
  /** `host:port` of the picked instance; undefined until picked. */
  address: string | undefined = undefined;
  /**
   * Whether the attempt's metadata lists addresses to avoid (`leasehold-exclude`): when false the
   * picker does not look (a first attempt, most of them).
   */
  isExcluding = false;
}

/** Channel option naming the {@link BalancerContext} of a channel (a string id). */
export const CONTEXT_OPTION = "leasehold.context";

/** What a caller knows about one listed instance (`leasehold call --json`, the demo's live view). */
export interface InstanceStats {
  readonly service: string;
  readonly instanceId: string;
  readonly address: string;
  /** The registered weight. */
  readonly weight: number;
  /** The weight picks use now: the registered one, lowered while slow start ramps the instance up. */
  readonly effectiveWeight: number;
  readonly status: "SERVING" | "DRAINING";
  readonly zone: string;
  /** Attempts made on this instance (retries included; breaker rejections excluded). */
  readonly calls: number;
  /** Attempts that ended with a code other than OK. */
  readonly errors: number;
  /** Median and 99th percentile latency over the last {@link LATENCY_SAMPLES} attempts, ms; 0 before any. */
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly breaker: BreakerState;
  /** Calls in flight now. */
  readonly outstanding: number;
  /** The subchannel's connectivity state (`READY`, `CONNECTING`, `TRANSIENT_FAILURE`, `IDLE`). */
  readonly connectivity: string;
  /** Its open breaker keeps it out of picks (within the max-ejection cap). */
  readonly ejected: boolean;
  /** Panic mode keeps it although it left the membership. */
  readonly retained: boolean;
}

/** Latency samples kept per instance for p50/p99 (a ring buffer). */
export const LATENCY_SAMPLES = 1024;

/** What a context tells its listeners after a change. */
export interface BalancerChange {
  /** The last stats of instances that just left (their totals are final). */
  readonly removed: readonly InstanceStats[];
}

/** The part of a balancer a context can see. */
export interface BalancerView {
  /** Per listed instance, in `instanceId` order. */
  stats(): InstanceStats[];
  /** etcd revision of the membership applied last ("" before the first). */
  readonly membershipRevision: string;
  /** True while panic mode keeps instances that left the membership. */
  readonly isPanicking: boolean;
  /** Instances the picker could choose now (READY, serving, weight > 0, not ejected). */
  readonly pickableCount: number;
  /** True when the instance at this `host:port` has an open breaker (kept in picks only by the ejection cap). */
  isBreakerOpenAt(address: string): boolean;
  /** True when the instance at this `host:port` is stalled (see stall-detector.ts). */
  isStalledAt(address: string): boolean;
}

/** Options of a {@link BalancerContext}; all optional. */
export interface BalancerContextOptions {
  /** Caller-side metrics (DESIGN §7); none recorded when absent. */
  readonly metrics?: ClientMetrics | undefined;
  /** Breaker tuning; see `DEFAULT_BREAKER_OPTIONS`. */
  readonly breaker?: Parameters<typeof resolveBreakerOptions>[0];
  /** pino logger for membership and breaker transitions. Default silent. */
  readonly logger?: Logger | undefined;
  /** Uniform in [0, 1). Default `Math.random`. */
  readonly random?: (() => number) | undefined;
  /** At most this share of instances is ejected by open breakers, never all (Envoy's default is 10; ours 50). */
  readonly maxEjectionPercent?: number | undefined;
  /** Panic mode starts when more than this share of serving instances leaves at once. Default 50. */
  readonly panicThresholdPercent?: number | undefined;
  /** How long panic mode keeps instances that left, ms. Default 2 × the largest lease TTL seen (20 s before any). */
  readonly panicGraceMs?: number | undefined;
  /**
   * Floor of the stall threshold, ms (see stall-detector.ts): an instance with attempts in flight
   * that answers none for max(this, 3 × its p99) while others answer 16 is skipped by picks, and
   * the typed client moves attempts parked on it. Default 75; `Infinity` turns stall detection off.
   */
  readonly stallFloorMs?: number | undefined;
}

/** Shared, per-process state of the balancers of one or more channels. */
export class BalancerContext {
  readonly id: string;
  readonly metrics: ClientMetrics | undefined;
  readonly breaker: ResolvedBreakerOptions;
  readonly logger: Logger;
  readonly random: () => number;
  readonly maxEjectionPercent: number;
  readonly panicThresholdPercent: number;
  readonly panicGraceMs: number | undefined;
  readonly stallFloorMs: number;
  readonly #balancers = new Set<BalancerView>();
  readonly #listeners = new Set<(change: BalancerChange) => void>();

  constructor(id: string, options: BalancerContextOptions = {}) {
    this.id = id;
    this.metrics = options.metrics;
    this.breaker = resolveBreakerOptions(options.breaker);
    this.logger = options.logger ?? pino({ enabled: false });
    this.random = options.random ?? Math.random;
    this.maxEjectionPercent = percent("maxEjectionPercent", options.maxEjectionPercent ?? 50);
    this.panicThresholdPercent = percent("panicThresholdPercent", options.panicThresholdPercent ?? 50);
    this.panicGraceMs = options.panicGraceMs;
    this.stallFloorMs = options.stallFloorMs ?? DEFAULT_STALL_FLOOR_MS;
    if (!(this.stallFloorMs > 0)) throw new LeaseholdError("INVALID_ARGUMENT", "stallFloorMs must be > 0");
    if (this.panicGraceMs !== undefined && !(this.panicGraceMs >= 0))
      throw new LeaseholdError("INVALID_ARGUMENT", "panicGraceMs must be ≥ 0");
  }

  /** The balancers currently alive in channels of this context. */
  get balancers(): ReadonlySet<BalancerView> {
    return this.#balancers;
  }

  attach(balancer: BalancerView): void {
    this.#balancers.add(balancer);
  }

  detach(balancer: BalancerView): void {
    this.#balancers.delete(balancer);
  }

  /** Calls `listener` after membership, connectivity or breaker changes; returns the unsubscribe function. */
  onChange(listener: (change: BalancerChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  changed(change: BalancerChange): void {
    for (const listener of this.#listeners) {
      try {
        listener(change);
      } catch (error) {
        this.logger.error({ err: error }, "balancer change listener threw");
      }
    }
  }

  clearListeners(): void {
    this.#listeners.clear();
  }
}

function percent(name: string, value: number): number {
  if (!(value >= 0 && value <= 100))
    throw new LeaseholdError("INVALID_ARGUMENT", `${name} must be within 0..100`);
  return value;
}

const contexts = new Map<string, BalancerContext>();
let nextId = 1;
let defaultContext = new BalancerContext("default");

/** Creates a context and makes it findable by id. Forget it with {@link dropContext}. */
export function createContext(options: BalancerContextOptions): BalancerContext {
  const context = new BalancerContext(`ctx-${nextId++}`, options);
  contexts.set(context.id, context);
  return context;
}

export function dropContext(context: BalancerContext): void {
  contexts.delete(context.id);
  context.clearListeners();
}

/** Replaces the context of channels that name none (`registerLeasehold()`). */
export function setDefaultContext(options: BalancerContextOptions): BalancerContext {
  defaultContext = new BalancerContext("default", options);
  return defaultContext;
}

/** The context a channel option names, else the default one. */
export function contextOf(id: unknown): BalancerContext {
  return (typeof id === "string" ? contexts.get(id) : undefined) ?? defaultContext;
}
