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
  readonly policy: "least_request" | "least_loaded" | "peak_ewma" = "least_request";
  readonly instances: readonly T[];
  readonly #random: () => number;
  readonly #cumulative: Float64Array;
  /** The weight of each instance (in `instances` order) that draws and comparisons use. */
  protected readonly weights: Float64Array;

  /** @param weights per instance in `eligible` order; default their `weight` (`least_loaded` passes capacities). */
  constructor(eligible: readonly T[], deps: PickerDeps<T>, weights?: Float64Array) {
    this.instances = eligible;
    this.#random = deps.random;
    this.weights = weights ?? Float64Array.from(eligible, (instance) => instance.weight);
    this.#cumulative = cumulativeWeights(this.weights);
  }

  pick(exclude?: ReadonlySet<string>): T | undefined {
    if (exclude === undefined || exclude.size === 0)
      return this.#pickAmong(this.instances, this.weights, this.#cumulative);
    const left: T[] = [];
    const weights: number[] = [];
    this.instances.forEach((instance, i) => {
      if (exclude.has(instance.instanceId)) return;
      left.push(instance);
      weights.push(this.weights[i] as number);
    });
    const leftWeights = Float64Array.from(weights);
    return this.#pickAmong(left, leftWeights, cumulativeWeights(leftWeights));
  }

  #pickAmong(instances: readonly T[], weights: Float64Array, cumulative: Float64Array): T | undefined {
    const n = instances.length;
    if (n <= 1) return instances[0];
    const total = cumulative[n - 1] as number;
    const i = search(cumulative, this.#random() * total);
    // Second draw without replacement: weighted over the others, by skipping i's span.
    const weightI = weights[i] ?? 0;
    const before = i === 0 ? 0 : (cumulative[i - 1] as number);
    let target = this.#random() * (total - weightI);
    if (target >= before) target += weightI;
    let j = search(cumulative, target);
    if (j === i) j = (i + 1) % n; // rounding at a span's edge
    const a = instances[i] as T;
    const b = instances[j] as T;
    return this.isBetter(b, weights[j] as number, a, weights[i] as number) ? b : a;
  }

  /** True when `b` (the second drawn) should win over `a`: fewer outstanding calls per unit of weight. */
  protected isBetter(b: T, weightB: number, a: T, weightA: number): boolean {
    return b.outstanding / weightB < a.outstanding / weightA;
  }
}

function cumulativeWeights(weights: Float64Array): Float64Array {
  const cumulative = new Float64Array(weights.length);
  let total = 0;
  weights.forEach((weight, i) => {
    total += weight;
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
