import type { Etcd3, IWatchResponse, Watcher } from "etcd3";
import type { Logger } from "pino";
import { Backoff } from "../../client/backoff.js";
import type { Delta, Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { decodeInstance, type InstanceKeys } from "./instance-codec.js";

/** What {@link ServicesWatch} reports, always in revision order. */
export interface ServicesWatchListener {
  /** The full membership at `revision`: first after start, then after every re-list. */
  synced(instances: readonly Instance[], revision: bigint): void;
  /** Every change of one etcd revision (never empty). */
  changed(delta: Delta): void;
  /** etcd confirmed there is no change up to `revision`. */
  progressed(revision: bigint): void;
}

/** A full read of every instance and the revision it was read at. */
export interface InstanceList {
  readonly instances: readonly Instance[];
  readonly revision: bigint;
}

/** Retry delays of the re-list loop: full jitter, doubling from 100 ms, capped at 1 s. */
const RELIST_INITIAL_DELAY_MS = 100;
const RELIST_MAX_DELAY_MS = 1000;

/**
 * ONE etcd watch over every instance key, with the etcd3 quirks handled:
 * - after compaction (or any other watcher `error`) etcd3's watcher stays dead, so this re-lists
 *   and watches again from the list revision + 1, retrying with capped backoff;
 * - etcd3 resumes a reconnected watch from the last *announced* revision (the `created` header),
 *   which can skip events not delivered yet, so on `disconnected` the resume point is reset to
 *   the last revision applied here + 1.
 */
export class ServicesWatch {
  readonly #client: Etcd3;
  readonly #keys: InstanceKeys;
  readonly #list: () => Promise<InstanceList>;
  readonly #listener: ServicesWatchListener;
  readonly #logger: Logger;
  #watcher: Watcher | undefined;
  #revision = 0n;
  #retryTimer: NodeJS.Timeout | undefined;
  readonly #relistBackoff = new Backoff({
    initialDelayMs: RELIST_INITIAL_DELAY_MS,
    multiplier: 2,
    maxDelayMs: RELIST_MAX_DELAY_MS,
  });
  #closed = false;

  constructor(options: {
    client: Etcd3;
    keys: InstanceKeys;
    list: () => Promise<InstanceList>;
    listener: ServicesWatchListener;
    logger: Logger;
  }) {
    this.#client = options.client;
    this.#keys = options.keys;
    this.#list = options.list;
    this.#listener = options.listener;
    this.#logger = options.logger;
  }

  /**
   * Lists every instance, reports `synced`, and starts watching.
   * @throws the etcd error when the first list fails (later failures are retried).
   */
  async start(): Promise<void> {
    await this.#sync();
  }

  /** Stops watching and clears the retry timer. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    await this.#dropWatcher();
  }

  async #sync(): Promise<void> {
    const list = await this.#list();
    if (this.#closed) return;
    this.#relistBackoff.reset();
    this.#revision = list.revision;
    this.#listener.synced(list.instances, list.revision);
    const watcher = this.#client
      .watch()
      .prefix(this.#keys.servicesPrefix)
      .startRevision(String(list.revision + 1n))
      .watcher();
    watcher
      .on("data", (response) => this.#onData(response))
      .on("disconnected", () => {
        watcher.request.start_revision = String(this.#revision + 1n);
      })
      .on("error", (error) => {
        this.#logger.warn({ err: error, revision: String(this.#revision) }, "etcd watch failed; re-listing");
        watcher.removeAllListeners();
        if (this.#watcher === watcher) this.#watcher = undefined;
        this.#scheduleSync();
      });
    this.#watcher = watcher;
  }

  #scheduleSync(): void {
    if (this.#closed) return;
    this.#retryTimer = setTimeout(() => {
      this.#sync().catch((error: unknown) => {
        this.#logger.warn({ err: error }, "etcd re-list failed; retrying");
        this.#scheduleSync();
      });
    }, this.#relistBackoff.next());
    this.#retryTimer.unref();
  }

  async #dropWatcher(): Promise<void> {
    const watcher = this.#watcher;
    this.#watcher = undefined;
    if (watcher === undefined) return;
    watcher.removeAllListeners();
    // cancel() waits for etcd's answer: bounded, so close() never hangs on a dead etcd.
    watcher.on("error", () => undefined);
    await Promise.race([watcher.cancel(), new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
  }

  #onData(response: IWatchResponse): void {
    const observedAtUnixMs = String(Date.now());
    const deltas = new Map<bigint, Delta>();
    for (const event of response.events) {
      const revision = BigInt(event.kv.mod_revision);
      const key = this.#keys.parse(event.kv.key.toString());
      if (revision <= this.#revision || key === undefined) continue;
      let delta = deltas.get(revision);
      if (delta === undefined) {
        delta = { upserted: [], removed: [], revision: String(revision), observedAtUnixMs };
        deltas.set(revision, delta);
      }
      const instance =
        event.type === "Put"
          ? decodeInstance(key, event.kv.value.toString(), event.kv.mod_revision)
          : undefined;
      if (instance !== undefined) {
        delta.upserted.push(instance);
      } else {
        if (event.type === "Put")
          this.#logger.warn({ key: event.kv.key.toString() }, "ignoring malformed instance");
        delta.removed.push(key);
      }
    }
    for (const [revision, delta] of deltas) {
      this.#revision = revision;
      this.#listener.changed(delta);
    }
    const headerRevision = BigInt(response.header.revision);
    // Only event-less answers (progress notifications) vouch for their header revision: a batch
    // that catches up may be cut short while its header already says the current revision.
    if (response.events.length === 0 && headerRevision > this.#revision) {
      this.#revision = headerRevision;
      this.#listener.progressed(headerRevision);
    }
  }
}
