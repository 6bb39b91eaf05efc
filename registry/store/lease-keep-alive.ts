import type { IDuplexStream, ILeaseKeepAliveRequest, ILeaseKeepAliveResponse, LeaseClient } from "etcd3";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import { fromEtcdError } from "./etcd-errors.js";
import type { UnavailableEpisodes } from "./unavailable-episodes.js";

interface PendingRenewal {
  resolve(ttlSeconds: number): void;
  reject(error: RegistryError): void;
  /** Stops the duration metric and the renewal's timeout. */
  stopTimer(): void;
}

/**
 * How long one renewal may wait for etcd's answer, in milliseconds. etcd answers in milliseconds;
 * a stalled etcd (SIGSTOP) never answers and its connection is only dropped by gRPC keepalive
 * after ~9 s, so without this bound the holder would wait that long. 2 s is below the smallest
 * keepalive interval of a registrar with the default 10 s TTL (TTL/3).
 */
export const RENEWAL_TIMEOUT_MS = 2000;

/**
 * One etcd `LeaseKeepAlive` stream that renews arbitrary lease ids, for one caller's KeepAlive
 * stream. etcd answers a stream's requests in order, so answers are matched first in, first out.
 * Once the etcd stream fails every pending and later renewal rejects with `unavailable` (a
 * broken stream is always etcd being away or the connection dropping, never an internal fault);
 * the caller opens a new one. A renewal unanswered for {@link RENEWAL_TIMEOUT_MS} fails the stream
 * the same way. Failures are logged once per episode through `episodes`.
 */
export class LeaseKeepAlive {
  readonly #leaseClient: LeaseClient;
  readonly #metrics: RegistryMetrics;
  readonly #pending: PendingRenewal[] = [];
  readonly #episodes: UnavailableEpisodes;
  #stream: Promise<IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>> | undefined;
  #failure: RegistryError | undefined;

  constructor(leaseClient: LeaseClient, metrics: RegistryMetrics, episodes: UnavailableEpisodes) {
    this.#leaseClient = leaseClient;
    this.#metrics = metrics;
    this.#episodes = episodes;
  }

  /**
   * Renews `leaseId` (decimal) once.
   * @returns the remaining TTL in seconds as etcd reports it; `0` when the lease no longer exists.
   * @throws RegistryError `unavailable` when the etcd stream failed or was closed.
   */
  renew(leaseId: string): Promise<number> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    const stream = (this.#stream ??= this.#open());
    return new Promise<number>((resolve, reject) => {
      const stopDuration = this.#metrics.etcdRequestDuration.startTimer({ op: "keepalive" });
      const timeout = setTimeout(() => {
        const error = new RegistryError(
          "unavailable",
          `etcd did not answer a keepalive within ${RENEWAL_TIMEOUT_MS} ms`,
        );
        this.#episodes.failed("keepalive", error);
        this.#fail(error);
        this.#endStream();
      }, RENEWAL_TIMEOUT_MS);
      timeout.unref();
      const stopTimer = () => {
        clearTimeout(timeout);
        stopDuration();
      };
      this.#pending.push({ resolve, reject, stopTimer });
      stream.then(
        (opened) => opened.write({ ID: leaseId }),
        () => undefined, // #open already failed every pending renewal
      );
    });
  }

  /** Ends the etcd stream; pending renewals reject with `unavailable`. Idempotent. */
  close(): void {
    if (this.#failure !== undefined) return;
    this.#fail(new RegistryError("unavailable", "keepalive stream closed"));
    this.#endStream();
  }

  #endStream(): void {
    void this.#stream?.then(
      (opened) => opened.end(),
      () => undefined, // never opened: nothing to end
    );
  }

  async #open(): Promise<IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>> {
    try {
      const stream = await this.#leaseClient.leaseKeepAlive();
      stream
        .on("data", (response) => {
          const renewal = this.#pending.shift();
          this.#episodes.recovered();
          renewal?.stopTimer();
          renewal?.resolve(Math.max(0, Number(response.TTL)));
        })
        .on("error", (error) => this.#fail(this.#streamFailure(error)))
        .on("end", () => this.#fail(new RegistryError("unavailable", "etcd ended the keepalive stream")));
      return stream;
    } catch (error) {
      this.#fail(this.#streamFailure(error));
      throw error;
    }
  }

  /** Whatever broke the etcd stream, its renewals answer UNAVAILABLE: the holder retries. */
  #streamFailure(error: unknown): RegistryError {
    const normalised = fromEtcdError(error);
    if (normalised.code === "not_found") return normalised;
    if (this.#pending.length > 0 || this.#failure === undefined) this.#episodes.failed("keepalive", error);
    return new RegistryError("unavailable", "etcd is unavailable; keep alive again shortly", {
      cause: error,
    });
  }

  #fail(error: RegistryError): void {
    this.#failure ??= error;
    for (const renewal of this.#pending.splice(0)) {
      renewal.stopTimer();
      renewal.reject(this.#failure);
    }
  }
}
