/**
 * Failed probes in a row after which a ready registry reports not ready. As Kubernetes probes'
 * `failureThreshold` (default 3): one probe that missed its deadline is not an outage. A loaded
 * test host (load 15) stalled a registry past its 1 s probe deadline, and `leasehold list` then
 * refused a registry whose ListServices had just answered.
 */
export const PROBE_FAILURE_THRESHOLD = 2;

/**
 * Whether etcd answers, probed every `intervalMs` (timers unref'd, one probe at a time): ready
 * from the first probe that succeeds, not ready from the first probe's failure or after
 * {@link PROBE_FAILURE_THRESHOLD} failures in a row. Drives gRPC health (SERVING only while etcd
 * answers) and the admin `/readyz`.
 */
export class EtcdReadiness {
  readonly #probe: () => Promise<boolean>;
  readonly #intervalMs: number;
  readonly #changed: (isReady: boolean) => void;
  #isReady = false;
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #isClosed = false;

  /**
   * @param probe resolves `true` while etcd answers (must not reject).
   * @param changed called with every change of readiness, and with the first result.
   */
  constructor(options: {
    probe: () => Promise<boolean>;
    intervalMs: number;
    changed: (isReady: boolean) => void;
  }) {
    this.#probe = options.probe;
    this.#intervalMs = options.intervalMs;
    this.#changed = options.changed;
  }

  get isReady(): boolean {
    return this.#isReady;
  }

  /** Probes once now (awaited), then every `intervalMs`. */
  async start(): Promise<void> {
    await this.#tick(true);
  }

  /** Stops probing and reports not ready. Idempotent. */
  close(): void {
    this.#isClosed = true;
    clearTimeout(this.#timer);
    this.#set(false, false);
  }

  async #tick(isFirst: boolean): Promise<void> {
    const isAnswered = await this.#probe();
    if (this.#isClosed) return;
    this.#failures = isAnswered ? 0 : this.#failures + 1;
    const isReady = isAnswered || (this.#isReady && this.#failures < PROBE_FAILURE_THRESHOLD);
    this.#set(isReady, isFirst);
    this.#timer = setTimeout(() => void this.#tick(false), this.#intervalMs).unref();
  }

  #set(isReady: boolean, isFirst: boolean): void {
    if (isReady === this.#isReady && !isFirst) return;
    this.#isReady = isReady;
    this.#changed(isReady);
  }
}
