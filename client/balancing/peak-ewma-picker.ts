import type { Pickable, Picker, PickerDeps } from "./picker.js";
import { randomIndex } from "./picker.js";
import { resolvePolicyConfig, type ResolvedPolicyConfig } from "./policy-config.js";

/**
 * `peak_ewma`: power of two choices by latency × load, as Finagle's `Balancers.p2cPeakEwma` and
 * Linkerd's balancer (tower's `load::PeakEwma`). An instance's cost is
 * `rtt × (outstanding + 1) / weight`, `rtt` being the peak-sensitive EWMA of its latency (see
 * `PeakEwma`: decay time τ = `peakEwma.decayMs`, default 10 s as in both; an instance with no answer
 * yet counts `peakEwma.defaultRttMs`, default 30 ms, Linkerd's). Two distinct instances are drawn
 * uniformly and the cheaper wins (the first drawn on a tie). So a slow instance is avoided while
 * fast ones are free, and tried again once its estimate has decayed (e^(−t/τ)) or the others queue
 * up. Costs are read live at each pick (`outstanding` and the EWMA change per call). O(1) per
 * pick; a retry (non-empty `exclude`) O(n).
 */
export class PeakEwmaPicker<T extends Pickable> implements Picker<T> {
  readonly policy = "peak_ewma";
  readonly instances: readonly T[];
  readonly #random: () => number;
  readonly #now: () => number;
  readonly #config: ResolvedPolicyConfig["peakEwma"];

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    this.instances = eligible;
    this.#random = deps.random;
    this.#now = deps.now ?? Date.now;
    this.#config = (deps.config ?? resolvePolicyConfig("peak_ewma", {})).peakEwma;
  }

  /** An instance's cost now: latency estimate (ms) × (outstanding + 1) / weight. */
  cost(instance: T, nowMs: number): number {
    const rttMs = instance.rtt?.estimateMs(nowMs, this.#config) ?? this.#config.defaultRttMs;
    return (rttMs * (instance.outstanding + 1)) / instance.weight;
  }

  pick(exclude?: ReadonlySet<string>): T | undefined {
    const left =
      exclude === undefined || exclude.size === 0
        ? this.instances
        : this.instances.filter((instance) => !exclude.has(instance.instanceId));
    const n = left.length;
    if (n <= 1) return left[0];
    const i = randomIndex(this.#random, n);
    let j = randomIndex(this.#random, n - 1);
    if (j >= i) j++;
    const a = left[i] as T;
    const b = left[j] as T;
    const nowMs = this.#now();
    return this.cost(b, nowMs) < this.cost(a, nowMs) ? b : a;
  }
}
