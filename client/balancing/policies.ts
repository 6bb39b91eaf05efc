/**
 * The registry of load-balancing policies by name (like grpc-js `load-balancer.ts`): one picker
 * class per policy, chosen by its standard name.
 */
import { LeastRequestPicker } from "./least-request-picker.js";
import {
  emptyPicker,
  isEligible,
  type Pickable,
  type Picker,
  type PickerDeps,
  type PolicyName,
} from "./picker.js";
import { RandomPicker } from "./random-picker.js";
import { RoundRobinPicker } from "./round-robin-picker.js";
import { WeightedRandomPicker } from "./weighted-random-picker.js";
import { WeightedRoundRobinPicker } from "./weighted-round-robin-picker.js";

export {
  isEligible,
  isPolicyName,
  POLICY_NAMES,
  type Pickable,
  type Picker,
  type PickerDeps,
  type PolicyName,
} from "./picker.js";

type PickerConstructor = new <T extends Pickable>(eligible: readonly T[], deps: PickerDeps<T>) => Picker<T>;

const POLICIES: Readonly<Record<PolicyName, PickerConstructor>> = Object.freeze({
  random: RandomPicker,
  round_robin: RoundRobinPicker,
  weighted_random: WeightedRandomPicker,
  weighted_round_robin: WeightedRoundRobinPicker,
  least_request: LeastRequestPicker,
});

/**
 * Builds the picker of `policy` over the eligible subset of `instances` (SERVING, weight > 0,
 * breaker not open; see {@link isEligible}), keeping their order. O(n); call it on every
 * membership or breaker change, never per call.
 */
export function createPicker<T extends Pickable>(
  policy: PolicyName,
  instances: readonly T[],
  deps: PickerDeps<T>,
): Picker<T> {
  const eligible = instances.filter(isEligible);
  if (eligible.length === 0) return emptyPicker(policy);
  return new POLICIES[policy](eligible, deps);
}
