import type { IDuplexStream, ILeaseKeepAliveRequest, ILeaseKeepAliveResponse, LeaseClient } from "etcd3";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import type { UnavailableEpisodes } from "./unavailable-episodes.js";

/**
 * How long one renewal may wait for etcd's answer, in milliseconds. etcd answers in milliseconds;
 * a stalled etcd (SIGSTOP) never answers and its connection is only dropped by gRPC keepalive
 * after ~9 s, so without this bound the holder would wait that long. 2 s is below the smallest
 * keepalive interval of a registrar with the default 10 s TTL (TTL/3).
 */
export const RENEWAL_TIMEOUT_MS = 2000;

/**
 * After the shared etcd stream failed, renewals answer UNAVAILABLE at once for this long (in
 * milliseconds) before a new stream is opened: thousands of holders retrying do not turn into
 * thousands of stream opens against an etcd that is away.
 */
const REOPEN_DELAY_MS = 250;

type EtcdKeepAliveStream = IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>;

interface Waiter {
  resolve(ttlSeconds: number): void;
  reject(error: RegistryError): void;
}

/** The renewals of one lease waiting together: queued (not written yet) or in flight. */
interface Renewals {
  readonly waiters: Waiter[];
  /** When the first waiter queued, or when the renewal was written; Unix ms. */
  sinceMs: number;
}

/**
 * Shared etcd `LeaseKeepAlive` streams of the registry. etcd answers one stream's renewals one
 * after another, so a few streams (not one) keep renewals flowing when etcd is slow to apply, and
 * a stream that fails takes only its share of the leases with it.
 */
export const KEEPALIVE_STREAMS = 8;

/**
 * Renews every lease of the registry over {@link KEEPALIVE_STREAMS} shared etcd `LeaseKeepAlive`
 * streams, a lease always on the same one (by its id), not one stream per caller (about 50 KB each
 * at 10,000 holders). Renewals asked for in the same event-loop turn
 * are written together, once per lease id (a lease already in flight waits for its answer, then
 * is written again), and etcd's answers are matched by lease id, so each renewal costs O(1). Each
 * holder's message is one renewal: the registry never renews on its own schedule, or a holder that
 * stopped (SIGSTOP) with its connection open would keep its lease.
 *
 * When the stream fails (etcd away, the connection dropped, a renewal unanswered for
 * {@link RENEWAL_TIMEOUT_MS}), every queued and in-flight renewal rejects with `unavailable`,
 * later ones for {@link REOPEN_DELAY_MS}, then the next renewal opens a new stream. Failures are
 * logged once per episode through `episodes`, never per lease.
 */
class LeaseKeepAliveStream {
  readonly #leaseClient: LeaseClient;
  readonly #metrics: RegistryMetrics;
  readonly #episodes: UnavailableEpisodes;
  /** Not written yet, by lease id, in order of the first waiter. */
  readonly #queued = new Map<string, Renewals>();
  /** Written and unanswered, by lease id, in order of writing. */
  readonly #inFlight = new Map<string, Renewals>();
  #stream: EtcdKeepAliveStream | undefined;
  #isOpening = false;
  #isFlushScheduled = false;
  #timeoutSweep: NodeJS.Timeout | undefined;
  #failure: RegistryError | undefined;
  #failedAtMs = 0;
  #isClosed = false;

  readonly #answered: (latencyMs: number, sentAtMs: number) => void;
  readonly #recovered: () => void;

  /**
   * No I/O: the etcd stream opens on the first renewal. `answered` hears each answer's latency and
   * when its renewal was sent (ms); `recovered`, the first answer after etcd was unavailable.
   */
  constructor(
    leaseClient: LeaseClient,
    metrics: RegistryMetrics,
    episodes: UnavailableEpisodes,
    answered: (latencyMs: number, sentAtMs: number) => void,
    recovered: () => void,
  ) {
    this.#leaseClient = leaseClient;
    this.#metrics = metrics;
    this.#episodes = episodes;
    this.#answered = answered;
    this.#recovered = recovered;
  }

  /**
   * Renews `leaseId` (decimal) once.
   * @returns the remaining TTL in seconds as etcd reports it; `0` when the lease no longer exists.
   * @throws RegistryError `unavailable` when the etcd stream failed, did not answer within
   * {@link RENEWAL_TIMEOUT_MS}, or was closed.
   */
  renew(leaseId: string): Promise<number> {
    if (this.#failure !== undefined && (this.#isClosed || Date.now() - this.#failedAtMs < REOPEN_DELAY_MS)) {
      return Promise.reject(this.#failure);
    }
    return new Promise<number>((resolve, reject) => {
      const queued = this.#queued.get(leaseId);
      if (queued === undefined)
        this.#queued.set(leaseId, { waiters: [{ resolve, reject }], sinceMs: Date.now() });
      else queued.waiters.push({ resolve, reject });
      this.#scheduleFlush();
    });
  }

  /** How long the oldest queued or in-flight renewal has waited, in ms; 0 when none waits. */
  lagMs(nowMs: number): number {
    return Math.max(0, nowMs - Math.min(firstSince(this.#inFlight), firstSince(this.#queued)));
  }

  /** Ends the etcd stream; queued and in-flight renewals reject with `unavailable`. Idempotent. */
  close(): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#fail(new RegistryError("unavailable", "keepalive stream closed"));
  }

  #scheduleFlush(): void {
    if (this.#isFlushScheduled) return;
    this.#isFlushScheduled = true;
    setImmediate(() => {
      this.#isFlushScheduled = false;
      this.#flush();
    });
  }

  /** Writes every queued lease that is not in flight; opens the stream first if needed. */
  #flush(): void {
    if (this.#queued.size === 0 || this.#isClosed) return;
    this.#startTimeoutSweep();
    const stream = this.#stream;
    if (stream === undefined) {
      this.#open();
      return;
    }
    const nowMs = Date.now();
    for (const [leaseId, renewals] of this.#queued) {
      if (this.#inFlight.has(leaseId)) continue; // written again once its answer arrives
      this.#queued.delete(leaseId);
      renewals.sinceMs = nowMs;
      this.#inFlight.set(leaseId, renewals);
      stream.write({ ID: leaseId });
    }
  }

  #open(): void {
    if (this.#isOpening) return;
    this.#isOpening = true;
    this.#failure = undefined;
    this.#leaseClient.leaseKeepAlive().then(
      (stream) => {
        this.#isOpening = false;
        if (this.#isClosed) {
          stream.end();
          return;
        }
        this.#stream = stream;
        stream
          .on("data", (response) => {
            if (stream === this.#stream) this.#answer(response); // not a replaced stream's late answer
          })
          .on("error", (error) => this.#streamFailed(stream, error))
          .on("end", () => this.#streamFailed(stream, new Error("etcd ended the keepalive stream")));
        this.#flush();
      },
      (error: unknown) => {
        this.#isOpening = false;
        this.#streamFailed(undefined, error);
      },
    );
  }

  #answer(response: ILeaseKeepAliveResponse): void {
    const renewals = this.#inFlight.get(response.ID);
    if (renewals === undefined) return; // answered already (a failure rejected it)
    this.#inFlight.delete(response.ID);
    if (this.#episodes.isFailing) {
      this.#episodes.recovered();
      this.#recovered();
    }
    const latencyMs = Date.now() - renewals.sinceMs;
    this.#metrics.observeEtcd("keepalive", latencyMs / 1000);
    this.#answered(latencyMs, renewals.sinceMs);
    const ttlSeconds = Math.max(0, Number(response.TTL));
    for (const waiter of renewals.waiters) waiter.resolve(ttlSeconds);
    if (this.#queued.has(response.ID)) this.#scheduleFlush();
  }

  /** Whatever broke the etcd stream, its renewals answer UNAVAILABLE: the holders retry. */
  #streamFailed(stream: EtcdKeepAliveStream | undefined, error: unknown): void {
    if (stream !== this.#stream) return; // an earlier stream, already replaced
    this.#episodes.failed("keepalive", error);
    this.#fail(
      new RegistryError("unavailable", "etcd is unavailable; keep alive again shortly", { cause: error }),
    );
  }

  #fail(error: RegistryError): void {
    this.#failure = error;
    this.#failedAtMs = Date.now();
    const stream = this.#stream;
    this.#stream = undefined;
    stream?.end();
    clearInterval(this.#timeoutSweep);
    this.#timeoutSweep = undefined;
    const failed = [...this.#inFlight.values(), ...this.#queued.values()];
    this.#inFlight.clear();
    this.#queued.clear();
    for (const renewals of failed) for (const waiter of renewals.waiters) waiter.reject(error);
  }

  /** One timer checks the oldest queued and in-flight renewal, whatever the number of leases. */
  #startTimeoutSweep(): void {
    if (this.#timeoutSweep !== undefined) return;
    const isOverdue = () =>
      Date.now() - Math.min(firstSince(this.#inFlight), firstSince(this.#queued)) >= RENEWAL_TIMEOUT_MS;
    this.#timeoutSweep = setInterval(() => {
      if (!isOverdue()) return;
      // After our own event loop stalled, timers run before the I/O that waited: etcd's answer
      // may be read already. setImmediate runs after that I/O, so only a real silence fails.
      setImmediate(() => {
        if (!isOverdue() || this.#timeoutSweep === undefined) return;
        const error = new RegistryError(
          "unavailable",
          `etcd did not answer a keepalive within ${RENEWAL_TIMEOUT_MS} ms`,
        );
        this.#episodes.failed("keepalive", error);
        this.#fail(error);
      });
    }, RENEWAL_TIMEOUT_MS / 4);
    // Only bounds waits that something else (a caller's stream) keeps the process alive for.
    this.#timeoutSweep.unref();
  }
}

/** Window of the slowest renewal answer {@link SharedLeaseKeepAlive.lagMs} remembers, ms (half the default TTL). */
const SLOW_ANSWER_WINDOW_MS = 5000;

/** `sinceMs` of a map's first (oldest) entry; Infinity when empty. */
function firstSince(renewals: ReadonlyMap<string, Renewals>): number {
  for (const first of renewals.values()) return first.sinceMs;
  return Number.POSITIVE_INFINITY;
}

/** One caller's use of the shared keepalive streams (`EtcdStore.openKeepAlive`). */
export interface LeaseKeepAlive {
  /** Renews `leaseId` once; see {@link SharedLeaseKeepAlive.renew}. */
  renew(leaseId: string): Promise<number>;
  /** Stops this caller's renewals (the shared streams stay). Idempotent. */
  close(): void;
}

/** The registry's keepalive streams, each lease on one of them; see {@link LeaseKeepAliveStream}. */
export class SharedLeaseKeepAlive {
  readonly #streams: readonly LeaseKeepAliveStream[];
  /** The slowest answer of the current and the previous {@link SLOW_ANSWER_WINDOW_MS}, ms. */
  #slowest = { currentMs: 0, previousMs: 0, windowStartMs: Date.now() };
  /** When etcd last answered again after being unavailable (ms); earlier renewals are not load. */
  #recoveredAtMs = 0;

  /** No I/O: each etcd stream opens on its first renewal. */
  constructor(leaseClient: LeaseClient, metrics: RegistryMetrics, episodes: UnavailableEpisodes) {
    const answered = (latencyMs: number, sentAtMs: number) => {
      // A renewal that waited out an etcd outage says nothing about load: after a stall, the
      // instances that lost leases must re-register at once, not be shed (chaos etcd-sigstop).
      if (sentAtMs < this.#recoveredAtMs) return;
      this.#turnWindow(Date.now());
      this.#slowest.currentMs = Math.max(this.#slowest.currentMs, latencyMs);
    };
    const recovered = () => {
      const nowMs = Date.now();
      this.#recoveredAtMs = nowMs;
      this.#slowest = { currentMs: 0, previousMs: 0, windowStartMs: nowMs };
    };
    this.#streams = Array.from(
      { length: KEEPALIVE_STREAMS },
      () => new LeaseKeepAliveStream(leaseClient, metrics, episodes, answered, recovered),
    );
  }

  #turnWindow(nowMs: number): void {
    const slowest = this.#slowest;
    if (nowMs - slowest.windowStartMs < SLOW_ANSWER_WINDOW_MS) return;
    // A window with no answer at all passed: the previous one is forgotten too.
    const isAdjacent = nowMs - slowest.windowStartMs < 2 * SLOW_ANSWER_WINDOW_MS;
    this.#slowest = { currentMs: 0, previousMs: isAdjacent ? slowest.currentMs : 0, windowStartMs: nowMs };
  }

  /**
   * Renews `leaseId` (decimal) once, on the stream its id picks.
   * @returns the remaining TTL in seconds as etcd reports it; `0` when the lease no longer exists.
   * @throws RegistryError `unavailable` when that etcd stream failed, did not answer within
   * {@link RENEWAL_TIMEOUT_MS}, or was closed.
   */
  renew(leaseId: string): Promise<number> {
    // The last two decimal digits of the id: etcd's ids differ there from one grant to the next.
    const digits = Number(leaseId.slice(-2));
    return this.#streams[(Number.isFinite(digits) ? digits : 0) % KEEPALIVE_STREAMS]!.renew(leaseId);
  }

  /**
   * How far behind etcd's renewals are, in ms: how long the oldest renewal waiting for etcd
   * (queued or in flight, on any stream) has waited, or the slowest answer of the last 5–10 s
   * ({@link SLOW_ANSWER_WINDOW_MS}), whichever is longer; 0 when none waits and none was slow.
   * The answered part keeps an overload visible between batches, when nothing happens to wait.
   * O({@link KEEPALIVE_STREAMS}).
   */
  lagMs(nowMs = Date.now()): number {
    this.#turnWindow(nowMs);
    let lagMs = Math.max(this.#slowest.currentMs, this.#slowest.previousMs);
    for (const stream of this.#streams) lagMs = Math.max(lagMs, stream.lagMs(nowMs));
    return lagMs;
  }

  /** Ends every etcd stream; pending renewals reject with `unavailable`. Idempotent. */
  close(): void {
    for (const stream of this.#streams) stream.close();
  }
}
