import { LeastRequestPicker } from "./least-request-picker.js";
import type { Pickable, PickerDeps } from "./picker.js";
import { resolvePolicyConfig } from "./policy-config.js";

/** Utilizations below this count as this much (an idle instance must not get unbounded capacity). */
const MIN_UTILIZATION = 0.01;

/**
 * `least_loaded`: power of two choices by server-reported load (ORCA, gRFC A51). Each instance's
 * capacity is `weight / utilization`, its utilization being `application_utilization` if set, else
 * `cpu_utilization`, from its last report (at least {@link MIN_UTILIZATION}). A report older than
 * `leastLoaded.maxReportAgeMs` (default 10 s), or one stating 0, is unknown, and the instance counts at the mean
 * utilization of the known ones (gRFC A58 treats weightless endpoints the same way); with none
 * known, capacity is the registered weight, i.e. plain `least_request`.
 *
 * Two distinct instances are drawn in proportion to capacity; the first drawn takes the call
 * unless the second, given this call too, would still carry fewer outstanding calls per unit of
 * capacity than the first carries now (`(o₂ + 1) / c₂ < o₁ / c₁`). So instances share calls in
 * inverse proportion to their utilization (20 %, 50 %, 90 % get 5 : 2 : 1.1), and one that queues
 * up is avoided. The plain `o₂ / c₂ < o₁ / c₁` of `least_request` skews those shares under
 * concurrency (at 4 callers in flight: 63 / 22 / 15 %; a count of one or two flips comparisons);
 * comparing raw utilizations would starve the busiest instance entirely (2/3, 1/3, 0 for three)
 * and herd every caller onto the least busy while reports lag, which is what P2C exists to prevent. Capacities are fixed per picker; the load balancer rebuilds it every
 * `leastLoaded.updatePeriodMs` (default 1 s) from the latest reports. O(n) to build, O(log n) per pick.
 */
export class LeastLoadedPicker<T extends Pickable> extends LeastRequestPicker<T> {
  override readonly policy = "least_loaded";
  /** instance id → the capacity it is picked by (weight / utilization), for the effective-weight gauge. */
  readonly effectiveWeights: ReadonlyMap<string, number>;

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    const config = (deps.config ?? resolvePolicyConfig("least_loaded", {})).leastLoaded;
    const nowMs = (deps.now ?? Date.now)();
    // A utilization of 0 is no signal (a report that sets neither field), as a 0 weight is in A58.
    const utilizations = eligible.map((instance) => {
      const utilization = instance.load?.freshUtilization(nowMs, config.maxReportAgeMs);
      return utilization !== undefined && utilization > 0 ? utilization : undefined;
    });
    const known = utilizations
      .filter((u): u is number => u !== undefined)
      .map((u) => Math.max(u, MIN_UTILIZATION));
    const mean = known.length === 0 ? 1 : known.reduce((sum, u) => sum + u, 0) / known.length;
    const capacities = Float64Array.from(
      eligible,
      (instance, i) => instance.weight / Math.max(utilizations[i] ?? mean, MIN_UTILIZATION),
    );
    super(eligible, deps, capacities);
    this.effectiveWeights = new Map(
      eligible.map((instance, i) => [instance.instanceId, capacities[i] as number]),
    );
  }

  protected override isBetter(b: T, capacityB: number, a: T, capacityA: number): boolean {
    return (b.outstanding + 1) / capacityB < a.outstanding / capacityA;
  }
}
