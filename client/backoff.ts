/** Options of {@link Backoff}; every duration in milliseconds. */
export interface BackoffOptions {
  /** First delay; default 100. */
  readonly initialDelayMs?: number;
  /** Growth per failed attempt; default 1.6 (as in grpc-js). */
  readonly multiplier?: number;
  /** Cap on the delay; default 5000. */
  readonly maxDelayMs?: number;
  /** Random source in [0, 1); default Math.random. Injected by tests. */
  readonly random?: () => number;
}

/**
 * Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS architecture blog):
 * each delay is uniform in [0, min(cap, initial × multiplier^attempt)]. Call {@link reset} only after
 * real progress (a registration that succeeded, a watch message received), never on a mere connect.
 */
export class Backoff {
  readonly #initialDelayMs: number;
  readonly #multiplier: number;
  readonly #maxDelayMs: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.#initialDelayMs = options.initialDelayMs ?? 100;
    this.#multiplier = options.multiplier ?? 1.6;
    this.#maxDelayMs = options.maxDelayMs ?? 5000;
    this.#random = options.random ?? Math.random;
    if (!(this.#initialDelayMs > 0 && this.#multiplier >= 1 && this.#maxDelayMs >= this.#initialDelayMs)) {
      throw new RangeError("backoff needs initialDelayMs > 0, multiplier >= 1, maxDelayMs >= initialDelayMs");
    }
  }

  /** The delay before the next attempt, in ms; grows with every call until {@link reset}. */
  next(): number {
    const ceiling = Math.min(this.#maxDelayMs, this.#initialDelayMs * this.#multiplier ** this.#attempt);
    this.#attempt += 1;
    return this.#random() * ceiling;
  }

  /** Starts over from the initial delay. */
  reset(): void {
    this.#attempt = 0;
  }
}

/**
 * Resolves after `ms` milliseconds, or at once when `signal` aborts (never rejects).
 *
 * The timer is ref'd: a reconnect or backoff wait is what a long-lived process is doing while its
 * registry is away, so it must keep the process alive (an unref'd one let `leasehold watch` exit
 * 0.5 s after its registry went). Pass a `signal` and abort it on shutdown so the process can exit.
 */
export async function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return;
  await new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener("abort", done, { once: true });
  });
}
