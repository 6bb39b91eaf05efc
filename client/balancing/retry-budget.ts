/**
 * A retry budget, as in Finagle's `RetryBudget` and Linkerd's `retryBudget`: retries may add at
 * most `ratio` of the requests made in the last `windowMs`, plus `minPerSecond` retries per second
 * so that a quiet client can still retry. It keeps retries from multiplying load in an outage.
 * Pure: the clock is injected. O(1) per call; counts are kept in one-second buckets.
 */
export interface RetryBudgetOptions {
  /** Retries allowed per request, 0..1. Default 0.2. */
  readonly ratio?: number;
  /** Retries allowed per second whatever the traffic. Default 10. */
  readonly minPerSecond?: number;
  /** Length of the window, ms (rounded to whole seconds). Default 10000. */
  readonly windowMs?: number;
  /** Clock in ms. Default `Date.now`. */
  readonly now?: () => number;
}

export class RetryBudget {
  readonly #ratio: number;
  readonly #minPerSecond: number;
  readonly #now: () => number;
  readonly #requests: Float64Array;
  readonly #retries: Float64Array;
  #second = -1;

  constructor(options: RetryBudgetOptions = {}) {
    this.#ratio = options.ratio ?? 0.2;
    this.#minPerSecond = options.minPerSecond ?? 10;
    this.#now = options.now ?? Date.now;
    const seconds = Math.max(1, Math.round((options.windowMs ?? 10_000) / 1000));
    this.#requests = new Float64Array(seconds);
    this.#retries = new Float64Array(seconds);
    if (!(this.#ratio >= 0 && this.#ratio <= 1))
      throw new RangeError("retry budget ratio must be within 0..1");
    if (!(this.#minPerSecond >= 0)) throw new RangeError("retry budget minPerSecond must be ≥ 0");
  }

  /** Counts a request (a call's first attempt). */
  deposit(): void {
    const index = this.#advance();
    this.#requests[index] = (this.#requests[index] as number) + 1;
  }

  /** Takes one retry from the budget; false when the budget is spent (then do not retry). */
  tryWithdraw(): boolean {
    const index = this.#advance();
    let requests = 0;
    let retries = 0;
    for (let i = 0; i < this.#requests.length; i++) {
      requests += this.#requests[i] as number;
      retries += this.#retries[i] as number;
    }
    if (retries >= this.#ratio * requests + this.#minPerSecond * this.#requests.length) return false;
    this.#retries[index] = (this.#retries[index] as number) + 1;
    return true;
  }

  /** The bucket of this second, clearing the buckets of seconds that passed. */
  #advance(): number {
    const second = Math.floor(this.#now() / 1000);
    const size = this.#requests.length;
    if (this.#second < 0 || second - this.#second >= size) {
      this.#requests.fill(0);
      this.#retries.fill(0);
    } else {
      for (let s = this.#second + 1; s <= second; s++) {
        this.#requests[s % size] = 0;
        this.#retries[s % size] = 0;
      }
    }
    if (second > this.#second) this.#second = second;
    return this.#second % size;
  }
}
