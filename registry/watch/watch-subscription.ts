import type { Delta, WatchResponse } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";

/** Where a subscription writes: a server stream, seen through what backpressure needs. */
export interface WatchSink {
  /** Writes one message; `false` asks the writer to wait for `drain` (grpc-js `write()`). */
  write(message: WatchResponse): boolean;
  once(event: "drain", listener: () => void): unknown;
  /** Ends the stream: OK without `error`, else with the error's status. Called at most once. */
  end(error?: RegistryError): void;
}

/**
 * One Watch stream's view of the hub: filters deltas to its service and to revisions after the
 * one it already has, and honours backpressure. Messages wait in a queue while the sink is not
 * draining; a stream whose queue passes `maxQueuedMessages` has fallen too far behind and is ended
 * with `RESOURCE_EXHAUSTED` (the caller resumes from its last revision and catches up from history,
 * which costs the hub nothing while the slow stream is gone).
 */
export class WatchSubscription {
  /** Service watched; `undefined` watches every service. */
  readonly service: string | undefined;
  readonly #sink: WatchSink;
  readonly #maxQueuedMessages: number;
  readonly #closed: (subscription: WatchSubscription) => void;
  readonly #queue: WatchResponse[] = [];
  /** Revision the caller has everything up to; earlier deltas are not sent again. */
  #revision: bigint;
  #isBlocked = false;
  #isClosed = false;

  constructor(options: {
    sink: WatchSink;
    service: string | undefined;
    revision: bigint;
    maxQueuedMessages: number;
    closed: (subscription: WatchSubscription) => void;
  }) {
    this.service = options.service;
    this.#sink = options.sink;
    this.#revision = options.revision;
    this.#maxQueuedMessages = options.maxQueuedMessages;
    this.#closed = options.closed;
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  /** Sends the part of `delta` this stream watches, unless the caller already has its revision. */
  deliver(delta: Delta): void {
    const revision = BigInt(delta.revision);
    if (revision <= this.#revision) return;
    this.#revision = revision;
    const own = this.service === undefined ? delta : deltaOfService(delta, this.service);
    if (own !== undefined) this.send({ event: { $case: "delta", value: own } });
  }

  /** Tells the caller nothing it watches changed up to `revision`; skipped while it is not draining. */
  progress(revision: bigint): void {
    if (revision > this.#revision) this.#revision = revision;
    if (this.#isBlocked || this.#queue.length > 0) return;
    this.send({ event: { $case: "progress", value: { revision: String(this.#revision), stale: false } } });
  }

  /** Sends one message now, or queues it while the sink is not draining. */
  send(message: WatchResponse): void {
    if (this.#isClosed) return;
    if (this.#isBlocked) {
      this.#queue.push(message);
      if (this.#queue.length > this.#maxQueuedMessages) {
        this.close(
          new RegistryError(
            "resource_exhausted",
            `watch stream fell more than ${this.#maxQueuedMessages} messages behind; resume with start_revision`,
          ),
        );
      }
      return;
    }
    this.#write(message);
  }

  /** Ends the stream (OK, or with `error`'s status) and leaves the hub. Idempotent. */
  close(error?: RegistryError): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#queue.length = 0;
    this.#closed(this);
    this.#sink.end(error);
  }

  #write(message: WatchResponse): void {
    if (!this.#sink.write(message)) {
      this.#isBlocked = true;
      this.#sink.once("drain", () => this.#drain());
    }
  }

  #drain(): void {
    this.#isBlocked = false;
    while (!this.#isBlocked && !this.#isClosed) {
      const message = this.#queue.shift();
      if (message === undefined) return;
      this.#write(message);
    }
  }
}

/** The part of `delta` about `service`, or `undefined` when it has none. */
export function deltaOfService(delta: Delta, service: string): Delta | undefined {
  const upserted = delta.upserted.filter((instance) => instance.service === service);
  const removed = delta.removed.filter((key) => key.service === service);
  if (upserted.length === 0 && removed.length === 0) return undefined;
  return { upserted, removed, revision: delta.revision, observedAtUnixMs: delta.observedAtUnixMs };
}
