import { LeastRequestPicker } from "./least-request-picker.js";
import type { Pickable, PickerDeps } from "./picker.js";
import { resolvePolicyConfig, type ResolvedPolicyConfig } from "./policy-config.js";

/**
 * `peak_ewma`: power of two choices by latency × load, as Finagle's `Balancers.p2cPeakEwma`
 * (finagle-core `loadbalancer/PeakEwma.scala`, `decayTime` 10 s) and Linkerd's balancer (tower
 * `src/load/peak_ewma.rs`; linkerd2-proxy sets `EWMA_DECAY` 10 s, `EWMA_DEFAULT_RTT` 30 ms). An instance's cost is `rtt × (outstanding + 1)`,
 * `rtt` being the peak-sensitive EWMA of its latency (see `PeakEwma`: decay time τ =
 * `peakEwma.decayMs`, default 10 s as in both; an instance with no answer yet counts
 * `peakEwma.defaultRttMs`, default 30 ms, Linkerd's `DEFAULT_EWMA_DEFAULT_RTT`). Two distinct
 * instances are drawn in proportion to their weights (as `least_request` does) and the cheaper
 * wins, the first drawn on a tie, so equally fast idle instances share calls by weight. A slow
 * instance is avoided while fast ones are free, and tried again once its estimate has decayed
 * (e^(−t/τ)) or the others queue up. Costs are read live at each pick (`outstanding` and the EWMA
 * change per call). O(log n) per pick; a retry (non-empty `exclude`) O(n).
 */
export class PeakEwmaPicker<T extends Pickable> extends LeastRequestPicker<T> {
  override readonly policy = "peak_ewma";
  readonly #now: () => number;
  readonly #config: ResolvedPolicyConfig["peakEwma"];

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    super(eligible, deps);
    this.#now = deps.now ?? Date.now;
    this.#config = (deps.config ?? resolvePolicyConfig("peak_ewma", {})).peakEwma;
  }

  /** An instance's cost at `nowMs`: its latency estimate (ms) × (outstanding + 1). */
  cost(instance: T, nowMs: number): number {
    const rttMs = instance.rtt?.estimateMs(nowMs, this.#config) ?? this.#config.defaultRttMs;
    return rttMs * (instance.outstanding + 1);
  }

  protected override isBetter(b: T, _weightB: number, a: T): boolean {
    const nowMs = this.#now();
    return this.cost(b, nowMs) < this.cost(a, nowMs);
  }
}
