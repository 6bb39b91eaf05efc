import type { Pickable, Picker, PickerDeps, PolicyName } from "./picker.js";

/**
 * Zone-aware routing, after Envoy's (`zone_aware_lb_config`): the caller's zone is preferred while
 * it has enough healthy capacity, and the excess spills over to the other zones in proportion to
 * their capacity.
 *
 * Capacity is Σ weight of the eligible instances. Let `localShare` be the caller's zone's part of
 * it and `callerShare` the part of all callers expected in that zone (`zoneCallerPercent`, or by
 * default 1 / the number of zones among the listed instances). While `localShare ≥ callerShare`
 * every call stays in the zone; below, a fraction `localShare / callerShare` stays and the rest
 * goes to the other zones (Envoy's residual routing), picked there by the same policy, so by weight
 * for weighted policies. If every caller zone does the same, each instance ends up with load in
 * proportion to its weight. A zone with no eligible instance sends everything out; a retry that
 * finds its side exhausted tries the other side.
 */
export class ZonePicker<T extends Pickable> implements Picker<T> {
  readonly policy: PolicyName;
  readonly instances: readonly T[];
  /** Share of calls kept in the caller's zone, 0..1. */
  readonly localFraction: number;
  readonly local: Picker<T>;
  readonly remote: Picker<T>;
  readonly #random: () => number;

  /**
   * @param listed every listed instance (eligible or not): their zones are the zones of callers.
   * @param build the policy's picker over a subset, given the subset's previous picker.
   */
  constructor(
    policy: PolicyName,
    eligible: readonly T[],
    listed: readonly T[],
    deps: PickerDeps<T> & { readonly zone: string; readonly zoneCallerPercent: number | undefined },
    build: (subset: readonly T[], previous: Picker<T> | undefined) => Picker<T>,
  ) {
    this.policy = policy;
    this.instances = eligible;
    this.#random = deps.random;
    const previous = deps.previous instanceof ZonePicker ? deps.previous : undefined;
    const local = eligible.filter((instance) => (instance.zone ?? "") === deps.zone);
    const remote = eligible.filter((instance) => (instance.zone ?? "") !== deps.zone);
    this.local = build(local, previous?.local);
    this.remote = build(remote, previous?.remote);
    const capacity = (subset: readonly T[]): number => subset.reduce((sum, i) => sum + i.weight, 0);
    const total = capacity(eligible);
    const localShare = total === 0 ? 0 : capacity(local) / total;
    const zones = new Set(listed.map((instance) => instance.zone ?? ""));
    zones.add(deps.zone);
    const callerShare = deps.zoneCallerPercent === undefined ? 1 / zones.size : deps.zoneCallerPercent / 100;
    this.localFraction = remote.length === 0 ? 1 : Math.min(1, localShare / callerShare);
  }

  /** The load-aware weights of both sides (`least_loaded`, `weighted_round_robin` with `orca`). */
  get effectiveWeights(): ReadonlyMap<string, number> | undefined {
    const local = this.local.effectiveWeights;
    const remote = this.remote.effectiveWeights;
    return local === undefined && remote === undefined
      ? undefined
      : new Map([...(local ?? []), ...(remote ?? [])]);
  }

  pick(exclude?: ReadonlySet<string>, hash?: bigint): T | undefined {
    const isLocal =
      this.localFraction >= 1 || (this.localFraction > 0 && this.#random() < this.localFraction);
    const [first, second] = isLocal ? [this.local, this.remote] : [this.remote, this.local];
    return first.pick(exclude, hash) ?? second.pick(exclude, hash);
  }
}
