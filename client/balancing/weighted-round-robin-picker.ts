import { fillUnknownWeights } from "./load-report.js";
import type { Pickable, Picker, PickerDeps } from "./picker.js";

/**
 * `weighted_round_robin`: smooth weighted round robin, as in nginx
 * (`ngx_http_upstream_get_peer`): every pick adds each instance's weight to its current weight,
 * picks the highest current weight (first in order on ties) and subtracts the total from it.
 * Deterministic: weights 1:2:3 (a, b, c) give c b a c b c, exactly 1:2:3 over every cycle of 6,
 * interleaved rather than in bursts. O(n) per pick.
 *
 * Current weights are carried over from the previous picker for instances still eligible, so a
 * rebuild caused by an unrelated change (another instance's status, a breaker elsewhere) does not
 * restart the cycle; instances new to the set start at 0. Instances excluded by a retry take no
 * part in that pick (neither gain nor pay), as in nginx's `tried` bitmap.
 *
 * With `config.orca` set (load-based mode, gRFC A58), the weights come from the instances' ORCA
 * load reports instead (`InstanceLoadState.orcaWeight`: qps / (utilization + eps / qps × penalty),
 * with blackout and expiry), instances without one taking the mean of the others; the load
 * balancer rebuilds the picker every `orca.weightUpdatePeriodMs`. A58 schedules by earliest
 * deadline first; smooth WRR gives the same shares, deterministically.
 */
export class WeightedRoundRobinPicker<T extends Pickable> implements Picker<T> {
  readonly policy = "weighted_round_robin";
  readonly instances: readonly T[];
  readonly #weights: Float64Array;
  readonly #current: Float64Array;
  /** In load-based mode: the A58 weight of each instance, by id. */
  readonly effectiveWeights?: ReadonlyMap<string, number>;

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    this.instances = eligible;
    const orca = deps.config?.orca;
    if (orca === undefined) this.#weights = Float64Array.from(eligible, (instance) => instance.weight);
    else {
      const nowMs = (deps.now ?? Date.now)();
      this.#weights = fillUnknownWeights(
        Float64Array.from(eligible, (instance) => instance.load?.orcaWeight(nowMs, orca) ?? 0),
      );
      this.effectiveWeights = new Map(
        eligible.map((instance, i) => [instance.instanceId, this.#weights[i] ?? 0]),
      );
    }
    this.#current = new Float64Array(eligible.length);
    const previous = deps.previous;
    if (previous instanceof WeightedRoundRobinPicker) {
      const carried = previous.currentWeights();
      eligible.forEach((instance, i) => {
        this.#current[i] = carried.get(instance.instanceId) ?? 0;
      });
    }
  }

  /** Current weight per instance id (the smooth WRR state), for carrying over and for tests. */
  currentWeights(): Map<string, number> {
    const weights = new Map<string, number>();
    this.instances.forEach((instance, i) => weights.set(instance.instanceId, this.#current[i] ?? 0));
    return weights;
  }

  pick(exclude?: ReadonlySet<string>): T | undefined {
    const instances = this.instances;
    const weights = this.#weights;
    const current = this.#current;
    const hasExclude = exclude !== undefined && exclude.size > 0;
    let best = -1;
    let bestCurrent = 0;
    let total = 0;
    for (let i = 0; i < instances.length; i++) {
      if (hasExclude && exclude.has((instances[i] as T).instanceId)) continue;
      const weight = weights[i] as number;
      const value = (current[i] as number) + weight;
      current[i] = value;
      total += weight;
      if (best < 0 || value > bestCurrent) {
        best = i;
        bestCurrent = value;
      }
    }
    if (best < 0) return undefined;
    current[best] = bestCurrent - total;
    return instances[best];
  }
}
