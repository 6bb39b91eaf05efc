/**
 * The settings of a Leasehold load-balancing policy: the JSON object of its `loadBalancingConfig`
 * entry (`{"leasehold_weighted_round_robin": {"slowStart": {"windowMs": 30000}}}`), which the typed
 * balanced client fills from its options and a stock grpc-js client may write in its own
 * `grpc.service_config`. Every setting is optional and off by default.
 */
import { LeaseholdError } from "../errors.js";
import type { OrcaWeightConfig, PeakEwmaConfig } from "./load-report.js";

/** Slow start, as Envoy's `slow_start_config`. */
export interface SlowStartConfig {
  /** How long a new instance's weight ramps up, ms (> 0). */
  readonly windowMs: number;
  /** Envoy's `aggression`: > 0, default 1 (a linear ramp); larger ramps up faster at first. */
  readonly aggression?: number;
  /** Envoy's `min_weight_percent`: the weight share a new instance starts at, 0–100, default 10. */
  readonly minWeightPercent?: number;
}

/** The ring of `ring_hash` (Envoy's `RingHashLbConfig`, gRFC A42 defaults). */
export interface RingHashConfig {
  /** The ring has at least this many entries (when `maxRingSize` allows). Default 1024. */
  readonly minRingSize?: number;
  /** ...and at most this many. Default 4096 (gRFC A42); at most 8,388,608 (Envoy's cap). */
  readonly maxRingSize?: number;
  /**
   * Request metadata key whose value is hashed to pick (gRFC A76's `request_hash_header`).
   * Default `leasehold-hash-key`. A call without it gets a random hash (a random instance).
   */
  readonly hashHeader?: string;
}

/** `least_loaded`'s settings. */
export interface LeastLoadedConfig {
  /** A load report older than this is unknown (the instance counts as the mean of the known), ms. Default 10,000. */
  readonly maxReportAgeMs?: number;
  /** How often the picker is rebuilt from the latest reports, ms. Default 1,000. */
  readonly updatePeriodMs?: number;
}

/** The `loadBalancingConfig` object of every `leasehold_<policy>` balancer. */
export interface PolicyConfig {
  /** Ramp up the weight of instances that join (weighted policies only). */
  readonly slowStart?: SlowStartConfig;
  /**
   * The caller's zone. When set, zone-aware routing (Envoy's): calls stay in this zone while its
   * share of the healthy capacity (Σ weight) is at least the zone's expected share of callers, and
   * the rest spills over to the other zones in proportion to their capacity.
   */
  readonly zone?: string;
  /**
   * The share of all callers expected in the caller's zone, percent (Envoy reads it from its local
   * cluster; Leasehold callers do not register). Default 100 / the number of zones among the
   * listed instances, i.e. callers spread like the instances' zones.
   */
  readonly zoneCallerPercent?: number;
  /** Subset routing: only instances whose metadata has every one of these key/value pairs. */
  readonly metadataFilter?: Readonly<Record<string, string>>;
  /** The ring of `ring_hash` (that policy only). */
  readonly ringHash?: RingHashConfig;
  /**
   * `weighted_round_robin` only: weights from the instances' ORCA load reports instead of the
   * registered ones, as gRFC A58 (`{}` takes its defaults; see {@link OrcaWeightConfig}).
   */
  readonly orca?: Partial<OrcaWeightConfig>;
  /** `least_loaded` only. */
  readonly leastLoaded?: LeastLoadedConfig;
  /** `peak_ewma` only. */
  readonly peakEwma?: Partial<PeakEwmaConfig>;
}

/** A validated {@link PolicyConfig} with its defaults filled in; frozen. */
export interface ResolvedPolicyConfig {
  readonly slowStart: Required<SlowStartConfig> | undefined;
  readonly zone: string | undefined;
  readonly zoneCallerPercent: number | undefined;
  readonly metadataFilter: Readonly<Record<string, string>> | undefined;
  readonly ringHash: Required<RingHashConfig>;
  /** Set: `weighted_round_robin` weighs by load reports. */
  readonly orca: OrcaWeightConfig | undefined;
  readonly leastLoaded: Required<LeastLoadedConfig>;
  readonly peakEwma: PeakEwmaConfig;
}

/** The request metadata key `ring_hash` hashes by default. */
export const DEFAULT_HASH_HEADER = "leasehold-hash-key";

const RING_SIZE_CAP = 8_388_608;

/** Policies whose picks follow weights, so slow start means something to them. */
const WEIGHTED: ReadonlySet<string> = new Set(["weighted_random", "weighted_round_robin", "least_request"]);

const KEYS = new Set([
  "slowStart",
  "zone",
  "zoneCallerPercent",
  "metadataFilter",
  "ringHash",
  "orca",
  "leastLoaded",
  "peakEwma",
]);

/**
 * Validates `json` (a {@link PolicyConfig}) for `policy`.
 * @throws LeaseholdError `INVALID_ARGUMENT` naming the bad field.
 */
export function resolvePolicyConfig(policy: string, json: unknown): ResolvedPolicyConfig {
  const bad = (message: string): never => {
    throw new LeaseholdError("INVALID_ARGUMENT", `leasehold_${policy} config: ${message}`);
  };
  const config = (json ?? {}) as Record<string, unknown>;
  if (typeof config !== "object" || Array.isArray(config)) bad("must be an object");
  for (const key of Object.keys(config))
    if (!KEYS.has(key)) bad(`unknown setting "${key}" (known: ${[...KEYS].join(", ")})`);
  const number = (value: unknown, name: string, fallback: number, ok: (n: number) => boolean): number => {
    if (value === undefined) return fallback;
    if (typeof value !== "number" || !ok(value)) bad(`${name} out of range: ${JSON.stringify(value)}`);
    return value as number;
  };

  let slowStart: Required<SlowStartConfig> | undefined;
  if (config.slowStart !== undefined) {
    if (!WEIGHTED.has(policy))
      bad("slowStart needs a weighted policy: weighted_random, weighted_round_robin or least_request");
    const s = config.slowStart as Record<string, unknown>;
    if (typeof s !== "object" || s === null) bad("slowStart must be an object");
    slowStart = Object.freeze({
      windowMs: number(s.windowMs, "slowStart.windowMs", Number.NaN, (n) => n > 0 && Number.isFinite(n)),
      aggression: number(s.aggression, "slowStart.aggression", 1, (n) => n > 0 && Number.isFinite(n)),
      minWeightPercent: number(
        s.minWeightPercent,
        "slowStart.minWeightPercent",
        10,
        (n) => n >= 0 && n <= 100,
      ),
    });
    if (Number.isNaN(slowStart.windowMs)) bad("slowStart.windowMs is required");
  }

  const zone = config.zone;
  if (zone !== undefined && (typeof zone !== "string" || zone === "")) bad("zone must be a non-empty string");
  if (zone !== undefined && policy === "ring_hash")
    bad("zone does not apply to ring_hash (keys keep their instance)");
  const zoneCallerPercent =
    config.zoneCallerPercent === undefined
      ? undefined
      : number(config.zoneCallerPercent, "zoneCallerPercent", 0, (n) => n > 0 && n <= 100);
  if (zoneCallerPercent !== undefined && zone === undefined) bad("zoneCallerPercent needs zone");

  let metadataFilter: Record<string, string> | undefined;
  if (config.metadataFilter !== undefined) {
    const filter = config.metadataFilter as Record<string, unknown>;
    if (typeof filter !== "object" || filter === null || Array.isArray(filter))
      bad("metadataFilter must be an object of strings");
    for (const [key, value] of Object.entries(filter))
      if (typeof value !== "string") bad(`metadataFilter.${key} must be a string`);
    metadataFilter = Object.freeze({ ...(filter as Record<string, string>) });
  }

  const ring = (config.ringHash ?? {}) as Record<string, unknown>;
  if (config.ringHash !== undefined && policy !== "ring_hash") bad("ringHash is for the ring_hash policy");
  if (typeof ring !== "object" || ring === null) bad("ringHash must be an object");
  const isSize = (n: number): boolean => Number.isInteger(n) && n >= 1 && n <= RING_SIZE_CAP;
  const minRingSize = number(ring.minRingSize, "ringHash.minRingSize", 1024, isSize);
  const maxRingSize = number(ring.maxRingSize, "ringHash.maxRingSize", Math.max(4096, minRingSize), isSize);
  if (minRingSize > maxRingSize) bad(`ringHash.minRingSize ${minRingSize} > maxRingSize ${maxRingSize}`);
  const hashHeader = ring.hashHeader ?? DEFAULT_HASH_HEADER;
  if (typeof hashHeader !== "string" || !/^[0-9a-z_.-]+$/.test(hashHeader) || hashHeader.endsWith("-bin"))
    bad("ringHash.hashHeader must be a lower-case ASCII metadata key (not -bin)");

  const section = (key: "orca" | "leastLoaded" | "peakEwma", owner: string): Record<string, unknown> => {
    const value = config[key];
    if (value === undefined) return {};
    if (policy !== owner) bad(`${key} is for the ${owner} policy`);
    if (typeof value !== "object" || value === null || Array.isArray(value)) bad(`${key} must be an object`);
    return value as Record<string, unknown>;
  };
  const isDurationMs = (n: number): boolean => n >= 0 && Number.isFinite(n);
  const isPositiveMs = (n: number): boolean => n > 0 && Number.isFinite(n);
  let orca: OrcaWeightConfig | undefined;
  if (config.orca !== undefined) {
    const o = section("orca", "weighted_round_robin");
    if (slowStart !== undefined) bad("slowStart does not combine with orca (weights come from load reports)");
    orca = Object.freeze({
      blackoutPeriodMs: number(o.blackoutPeriodMs, "orca.blackoutPeriodMs", 10_000, isDurationMs),
      weightExpirationPeriodMs: number(
        o.weightExpirationPeriodMs,
        "orca.weightExpirationPeriodMs",
        180_000,
        isPositiveMs,
      ),
      errorUtilizationPenalty: number(
        o.errorUtilizationPenalty,
        "orca.errorUtilizationPenalty",
        1,
        isDurationMs,
      ),
      weightUpdatePeriodMs: number(
        o.weightUpdatePeriodMs,
        "orca.weightUpdatePeriodMs",
        1_000,
        (n) => n >= 100,
      ),
    });
  }
  const ll = section("leastLoaded", "least_loaded");
  const leastLoaded = Object.freeze({
    maxReportAgeMs: number(ll.maxReportAgeMs, "leastLoaded.maxReportAgeMs", 10_000, isPositiveMs),
    updatePeriodMs: number(ll.updatePeriodMs, "leastLoaded.updatePeriodMs", 1_000, (n) => n >= 100),
  });
  const pe = section("peakEwma", "peak_ewma");
  const peakEwma = Object.freeze({
    decayMs: number(pe.decayMs, "peakEwma.decayMs", 10_000, isPositiveMs),
    defaultRttMs: number(pe.defaultRttMs, "peakEwma.defaultRttMs", 30, isDurationMs),
  });

  return Object.freeze({
    orca,
    leastLoaded,
    peakEwma,
    slowStart,
    zone: zone as string | undefined,
    zoneCallerPercent,
    metadataFilter,
    ringHash: Object.freeze({ minRingSize, maxRingSize, hashHeader: hashHeader as string }),
  });
}

/**
 * Slow start's share of an instance's weight (Envoy's formula):
 * max(minWeightPercent / 100, (ageMs / windowMs)^(1 / aggression)), and 1 once `ageMs` ≥ the window.
 * `ageMs` counts from when the instance became pickable (see the load balancer).
 */
export function slowStartFactor(ageMs: number, slowStart: Required<SlowStartConfig>): number {
  if (ageMs >= slowStart.windowMs) return 1;
  const timeFactor = Math.max(ageMs, 1) / slowStart.windowMs;
  return Math.max(slowStart.minWeightPercent / 100, timeFactor ** (1 / slowStart.aggression));
}
