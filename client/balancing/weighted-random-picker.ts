import type { Pickable, Picker, PickerDeps } from "./picker.js";

/**
 * `weighted_random`: instance i with probability weight_i / Σ weight. O(log n) per pick by binary
 * search over cumulative weights; a retry (non-empty `exclude`) scans the instances left, O(n).
 */
export class WeightedRandomPicker<T extends Pickable> implements Picker<T> {
  readonly policy = "weighted_random";
  readonly instances: readonly T[];
  readonly #random: () => number;
  /** cumulative[i] = Σ weight of instances 0..i. */
  readonly #cumulative: Float64Array;
  readonly #total: number;

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    this.instances = eligible;
    this.#random = deps.random;
    this.#cumulative = new Float64Array(eligible.length);
    let total = 0;
    eligible.forEach((instance, i) => {
      total += instance.weight;
      this.#cumulative[i] = total;
    });
    this.#total = total;
  }

  pick(exclude?: ReadonlySet<string>): T | undefined {
    const instances = this.instances;
    if (instances.length === 0) return undefined;
    if (exclude === undefined || exclude.size === 0) {
      const target = this.#random() * this.#total;
      const cumulative = this.#cumulative;
      let lo = 0;
      let hi = instances.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if ((cumulative[mid] ?? 0) > target) hi = mid;
        else lo = mid + 1;
      }
      return instances[lo];
    }
    let total = 0;
    for (const instance of instances) if (!exclude.has(instance.instanceId)) total += instance.weight;
    if (total === 0) return undefined;
    let target = this.#random() * total;
    let last: T | undefined;
    for (const instance of instances) {
      if (exclude.has(instance.instanceId)) continue;
      last = instance;
      target -= instance.weight;
      if (target < 0) return instance;
    }
    return last; // rounding: random() close to 1
  }
}
