import { type Pickable, type Picker, type PickerDeps, randomIndex } from "./picker.js";

/** `random`: uniform over the eligible instances, ignoring weights. */
export class RandomPicker<T extends Pickable> implements Picker<T> {
  readonly policy = "random";
  readonly instances: readonly T[];
  readonly #random: () => number;

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    this.instances = eligible;
    this.#random = deps.random;
  }

  pick(exclude?: ReadonlySet<string>): T | undefined {
    const instances = this.instances;
    if (instances.length === 0) return undefined;
    const first = instances[randomIndex(this.#random, instances.length)];
    if (
      exclude === undefined ||
      exclude.size === 0 ||
      (first !== undefined && !exclude.has(first.instanceId))
    ) {
      return first;
    }
    // A retry: draw uniformly among the instances not tried yet.
    let left = 0;
    for (const instance of instances) if (!exclude.has(instance.instanceId)) left++;
    if (left === 0) return undefined;
    let k = randomIndex(this.#random, left);
    for (const instance of instances) {
      if (exclude.has(instance.instanceId)) continue;
      if (k-- === 0) return instance;
    }
    return undefined;
  }
}
