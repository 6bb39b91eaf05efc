import type { Logger } from "pino";

/**
 * Logs etcd being unreachable once per episode instead of once per request, lease or stream:
 * the first failure of an episode is a warning (with the error's message, no stack), later ones
 * are silent until a request succeeds again, which logs the recovery once.
 */
export class UnavailableEpisodes {
  readonly #logger: Logger;
  #failingSinceMs: number | undefined;
  #failures = 0;

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /** True between the first failure of an episode and the next success. */
  get isFailing(): boolean {
    return this.#failingSinceMs !== undefined;
  }

  /** Records one failure of `op` because etcd did not answer. */
  failed(op: string, error: unknown): void {
    this.#failures += 1;
    if (this.#failingSinceMs !== undefined) return;
    this.#failingSinceMs = Date.now();
    this.#logger.warn(
      { op, reason: error instanceof Error ? error.message : String(error) },
      "etcd is unavailable; requests answer UNAVAILABLE until it is back (logged once per episode)",
    );
  }

  /** Records a success: ends the episode, if any. */
  recovered(): void {
    if (this.#failingSinceMs === undefined) return;
    this.#logger.info(
      { failures: this.#failures, unavailableMs: Date.now() - this.#failingSinceMs },
      "etcd is available again",
    );
    this.#failingSinceMs = undefined;
    this.#failures = 0;
  }
}
