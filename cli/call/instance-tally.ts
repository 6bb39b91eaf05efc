import type { InstanceStats } from "../../client/balancing/balanced-client.js";

/**
 * Per-instance totals over a whole `leasehold call` run. A balanced client's stats describe the
 * instances listed now, each since it was (re)added: an instance that leaves and comes back starts
 * again at 0 calls. The tally keeps every lifetime: it banks the final stats of each instance as it
 * leaves (the client's `onChange` reports them) and adds the running lifetime at the end.
 */
export class InstanceTally {
  /** Calls and errors of lifetimes that ended, per instance. */
  readonly #ended = new Map<string, { calls: number; errors: number }>();
  /** Latest stats per instance, also of instances that left (weight, latency, breaker to show). */
  readonly #last = new Map<string, InstanceStats>();

  /** Instances that just left, with their final stats. */
  left(removed: readonly InstanceStats[]): void {
    for (const instance of removed) {
      const ended = this.#ended.get(instance.instanceId) ?? { calls: 0, errors: 0 };
      this.#ended.set(instance.instanceId, {
        calls: ended.calls + instance.calls,
        errors: ended.errors + instance.errors,
      });
      this.#last.set(instance.instanceId, instance);
    }
  }

  /**
   * Every instance ever seen, in `instanceId` order, with calls and errors summed over its
   * lifetimes; weight, latency and breaker are from its latest stats. `current` are the client's
   * stats now (the lifetimes still running).
   */
  totals(current: readonly InstanceStats[]): InstanceStats[] {
    const running = new Map(current.map((instance) => [instance.instanceId, instance]));
    for (const instance of current) this.#last.set(instance.instanceId, instance);
    return [...this.#last.values()]
      .map((last) => {
        const ended = this.#ended.get(last.instanceId) ?? { calls: 0, errors: 0 };
        const live = running.get(last.instanceId) ?? { calls: 0, errors: 0 };
        return { ...last, calls: ended.calls + live.calls, errors: ended.errors + live.errors };
      })
      .sort((a, b) => a.instanceId.localeCompare(b.instanceId));
  }
}
