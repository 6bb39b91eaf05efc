/**
 * The picker contract (DESIGN §5), after grpc-js `picker.ts`: a picker is a snapshot of the
 * eligible instances, rebuilt on every membership or breaker change, and `pick()` is synchronous.
 */
import type { InstanceLoadState, PeakEwma } from "./load-report.js";
import type { ResolvedPolicyConfig } from "./policy-config.js";

/** What a picker needs to know about one instance. The Leasehold load balancer's children implement it. */
export interface Pickable {
  readonly instanceId: string;
  /**
   * The effective weight: the registered 0..10000 (DESIGN §2), times slow start's factor while an
   * instance ramps up (so possibly fractional). 0 is listed but never picked.
   */
  readonly weight: number;
  /** True only for `SERVING`; a `DRAINING` instance is never picked. */
  readonly isServing: boolean;
  /** False while the instance's breaker is open (a half-open breaker lets a trial through). */
  readonly isBreakerAdmitting: boolean;
  /**
   * True while its grpc-js subchannel is READY. An instance that is connecting, idle or in
   * TRANSIENT_FAILURE is never picked (as in grpc-js `round_robin`).
   */
  readonly isReady: boolean;
  /** Calls in flight on this instance, read live by `least_request`. */
  readonly outstanding: number;
  /** Its zone ("" when none), for zone-aware routing. */
  readonly zone?: string;
  /** Its registered metadata, for the metadata filter (subset routing). */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Its last ORCA load report (updated on every call's trailers), read by the load-aware policies. */
  readonly load?: InstanceLoadState;
  /** The peak EWMA of its latency (updated on every answer), read by `peak_ewma`. */
  readonly rtt?: PeakEwma;
}

/**
 * An instance may be picked when it is SERVING, has weight > 0, its breaker is not open and its
 * subchannel is READY.
 */
export function isEligible(instance: Pickable): boolean {
  return instance.isServing && instance.weight > 0 && instance.isBreakerAdmitting && instance.isReady;
}

/**
 * A snapshot of the eligible instances of one service. Built once per change; `pick` is O(1) to
 * O(n) in the number of eligible instances and never allocates on the first attempt.
 */
export interface Picker<T extends Pickable = Pickable> {
  /** The policy that built it. */
  readonly policy: PolicyName;
  /** The eligible instances, in snapshot order (sorted by `instanceId` by the membership). */
  readonly instances: readonly T[];
  /**
   * Picks an instance, skipping the ids in `exclude` (instances already tried by this call);
   * `undefined` when no eligible instance is left. `hash` is the request's hash (xxHash64 of its
   * hash key), read only by `ring_hash`.
   */
  pick(exclude?: ReadonlySet<string>, hash?: bigint): T | undefined;
  /** The weight each instance gets from a load-aware policy, by instance id (for metrics); absent otherwise. */
  readonly effectiveWeights?: ReadonlyMap<string, number>;
}

/** The standard policy names (DESIGN §5). */
export type PolicyName =
  | "random"
  | "round_robin"
  | "weighted_random"
  | "weighted_round_robin"
  | "least_request"
  | "ring_hash"
  | "least_loaded"
  | "peak_ewma";

export const POLICY_NAMES: readonly PolicyName[] = Object.freeze([
  "random",
  "round_robin",
  "weighted_random",
  "weighted_round_robin",
  "least_request",
  "ring_hash",
  "least_loaded",
  "peak_ewma",
]);

export function isPolicyName(name: string): name is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(name);
}

/** What a policy gets besides the instances. */
export interface PickerDeps<T extends Pickable = Pickable> {
  /** Uniform in [0, 1), like `Math.random` (inject a seeded PRNG in tests). */
  readonly random: () => number;
  /** The picker this one replaces, so stateful policies can carry state over (smooth WRR). */
  readonly previous?: Picker<T> | undefined;
  /**
   * The listed SERVING instances with weight > 0, eligible or not: `ring_hash` builds its ring
   * over them, so a key keeps its place while its instance reconnects or its breaker is open
   * (a pick walks on past such instances). Default: the eligible ones.
   */
  readonly members?: readonly T[] | undefined;
  /** The clock, ms (default `Date.now`): report ages, A58 blackout and expiry, EWMA decay. */
  readonly now?: (() => number) | undefined;
  /** The policy's settings (zone, metadata filter, ring); defaults when absent. */
  readonly config?: ResolvedPolicyConfig | undefined;
}

/** The picker of an empty eligible set. */
export function emptyPicker<T extends Pickable>(policy: PolicyName): Picker<T> {
  return { policy, instances: [], pick: () => undefined };
}

/** A uniform integer in [0, n), clamped against a `random` that returns 1. */
export function randomIndex(random: () => number, n: number): number {
  const i = Math.floor(random() * n);
  return i < n ? i : n - 1;
}
