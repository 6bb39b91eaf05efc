/**
 * The panic-mode trigger (Eureka's self-preservation threshold, Envoy's panic threshold): did more
 * than `thresholdPercent` of a service's serving instances leave within `windowMs`? Shared by the
 * load balancer (which then keeps them) and `leasehold watch` (which shows it). Pure: the clock is
 * injected.
 */
export interface MassRemovalOptions {
  /** Share of serving instances, 0..100, whose departure within the window is a mass removal. Default 50. */
  readonly thresholdPercent?: number;
  /** How long departures count together, ms. Default 5000. */
  readonly windowMs?: number;
  /** Clock in ms. Default `Date.now`. */
  readonly now?: () => number;
}

export class MassRemovalDetector {
  readonly #thresholdPercent: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  #departuresMs: number[] = [];

  constructor(options: MassRemovalOptions = {}) {
    this.#thresholdPercent = options.thresholdPercent ?? 50;
    this.#windowMs = options.windowMs ?? 5000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Records that `left` serving instances just left while `remaining` stay; true when the
   * departures within the window exceed the threshold share of (remaining + those departures).
   */
  record(left: number, remaining: number): boolean {
    const nowMs = this.#now();
    this.#departuresMs = this.#departuresMs.filter((at) => nowMs - at < this.#windowMs);
    for (let i = 0; i < left; i++) this.#departuresMs.push(nowMs);
    const recent = this.#departuresMs.length;
    return recent > 0 && (100 * recent) / (remaining + recent) > this.#thresholdPercent;
  }
}
