/**
 * The registry of load-balancing policies by name (like grpc-js `load-balancer.ts`): one picker
 * class per policy, chosen by its standard name.
 */
import { LeastLoadedPicker } from "./least-loaded-picker.js";
import { LeastRequestPicker } from "./least-request-picker.js";
import { PeakEwmaPicker } from "./peak-ewma-picker.js";
import {
  emptyPicker,
  isEligible,
  type Pickable,
  type Picker,
  type PickerDeps,
  type PolicyName,
} from "./picker.js";
import { RandomPicker } from "./random-picker.js";
import { RingHashPicker } from "./ring-hash-picker.js";
import { RoundRobinPicker } from "./round-robin-picker.js";
import { WeightedRandomPicker } from "./weighted-random-picker.js";
import { WeightedRoundRobinPicker } from "./weighted-round-robin-picker.js";
import { ZonePicker } from "./zone-picker.js";

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
  ring_hash: RingHashPicker,
  least_loaded: LeastLoadedPicker,
  peak_ewma: PeakEwmaPicker,
});

/**
 * Builds the picker of `policy` over the eligible subset of `instances` (SERVING, weight > 0,
 * breaker not open; see {@link isEligible}), keeping their order. With `deps.config`: only
 * instances matching its `metadataFilter` (none match: the empty picker, no fallback, as Envoy's
 * subset default), and with its `zone`, zone-aware routing over them (see {@link ZonePicker}).
 * O(n); call it on every membership or breaker change, never per call.
 */
export function createPicker<T extends Pickable>(
  policy: PolicyName,
  instances: readonly T[],
  deps: PickerDeps<T>,
): Picker<T> {
  const filter = deps.config?.metadataFilter;
  const listed = filter === undefined ? instances : instances.filter((i) => matchesMetadata(i, filter));
  const eligible = listed.filter(isEligible);
  const build = (subset: readonly T[], previous: Picker<T> | undefined): Picker<T> =>
    subset.length === 0 ? emptyPicker(policy) : new POLICIES[policy](subset, { ...deps, previous });
  const zone = deps.config?.zone;
  if (policy === "ring_hash" && eligible.length > 0) {
    const members = listed.filter((instance) => instance.isServing && instance.weight > 0);
    return new RingHashPicker(eligible, { ...deps, members });
  }
  if (zone === undefined || eligible.length === 0) return build(eligible, deps.previous);
  return new ZonePicker(
    policy,
    eligible,
    listed,
    { ...deps, zone, zoneCallerPercent: deps.config?.zoneCallerPercent },
    build,
  );
}

/** True when the instance's metadata has every key/value pair of `filter`. */
export function matchesMetadata(instance: Pickable, filter: Readonly<Record<string, string>>): boolean {
  const metadata = instance.metadata ?? {};
  for (const [key, value] of Object.entries(filter)) if (metadata[key] !== value) return false;
  return true;
}
