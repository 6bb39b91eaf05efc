import { type Pickable, type Picker, type PickerDeps, randomIndex } from "./picker.js";

/**
 * `round_robin`: each eligible instance in turn, ignoring weights. Starts at a random index so
 * that many clients built from the same membership do not herd onto the same instance (grpc-js).
 */
export class RoundRobinPicker<T extends Pickable> implements Picker<T> {
  readonly policy = "round_robin";
  readonly instances: readonly T[];
  #next: number;

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    this.instances = eligible;
    this.#next = eligible.length === 0 ? 0 : randomIndex(deps.random, eligible.length);
  }

  pick(exclude?: ReadonlySet<string>): T | undefined {
    const instances = this.instances;
    const n = instances.length;
    for (let step = 0; step < n; step++) {
      const index = (this.#next + step) % n;
      const instance = instances[index];
      if (instance === undefined) continue;
      if (exclude !== undefined && exclude.has(instance.instanceId)) continue;
      this.#next = (index + 1) % n;
      return instance;
    }
    return undefined;
  }
}
