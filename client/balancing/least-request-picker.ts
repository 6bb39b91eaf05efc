import type { Pickable, Picker, PickerDeps } from "./picker.js";

/**
 * `least_request`: power of two choices over outstanding calls, weighted. Two distinct instances
 * are drawn at random in proportion to their weights, and the one with fewer outstanding calls per
 * unit of weight (`outstanding / weight`, Envoy's `weight / (active + 1)` ordering) wins; on a tie
 * the first drawn wins. So idle instances share calls by weight, and busy ones are avoided.
 * (A plain `(outstanding + 1) / weight` comparison would send every call of an idle, sequential
 * caller to the heaviest instance.) O(log n) per pick; a retry (non-empty `exclude`) O(n).
 */
export class LeastRequestPicker<T extends Pickable> implements Picker<T> {
  readonly policy = "least_request";
  readonly instances: readonly T[];
  readonly #random: () => number;
  readonly #cumulative: Float64Array;

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    this.instances = eligible;
    this.#random = deps.random;
    this.#cumulative = cumulativeWeights(eligible);
  }

  pick(exclude?: ReadonlySet<string>): T | undefined {
    if (exclude === undefined || exclude.size === 0) return this.#pickAmong(this.instances, this.#cumulative);
    const left = this.instances.filter((instance) => !exclude.has(instance.instanceId));
    return this.#pickAmong(left, cumulativeWeights(left));
  }

  #pickAmong(instances: readonly T[], cumulative: Float64Array): T | undefined {
    const n = instances.length;
    if (n <= 1) return instances[0];
    const total = cumulative[n - 1] as number;
    const i = search(cumulative, this.#random() * total);
    // Second draw without replacement: weighted over the others, by skipping i's span.
    const weightI = instances[i]?.weight ?? 0;
    const before = i === 0 ? 0 : (cumulative[i - 1] as number);
    let target = this.#random() * (total - weightI);
    if (target >= before) target += weightI;
    let j = search(cumulative, target);
    if (j === i) j = (i + 1) % n; // rounding at a span's edge
    const a = instances[i] as T;
    const b = instances[j] as T;
    return b.outstanding / b.weight < a.outstanding / a.weight ? b : a;
  }
}

function cumulativeWeights(instances: readonly Pickable[]): Float64Array {
  const cumulative = new Float64Array(instances.length);
  let total = 0;
  instances.forEach((instance, i) => {
    total += instance.weight;
    cumulative[i] = total;
  });
  return cumulative;
}

/** The first index whose cumulative weight exceeds `target`. */
function search(cumulative: Float64Array, target: number): number {
  let lo = 0;
  let hi = cumulative.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((cumulative[mid] as number) > target) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
