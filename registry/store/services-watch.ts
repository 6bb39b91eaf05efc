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
  /**
   * The watch stopped (`true`) or started again (`false`) being live and current; see
   * {@link ServicesWatch}. Called only on a change.
   */
  staleChanged(isStale: boolean): void;
}

/** A full read of every instance and the revision it was read at. */
export interface InstanceList {
  readonly instances: readonly Instance[];
  readonly revision: bigint;
  /** Keys under the watched prefix at `revision`, well-formed instances or not. */
  readonly keyCount: number;
}

/** A linearizable read of the watched prefix: what a current watch must have seen. */
export interface WatchedRangeState {
  /** etcd's revision when it answered. */
  readonly revision: bigint;
  /** Keys under the prefix at `revision`. */
  readonly keyCount: number;
  /** Highest mod revision of those keys (0 when none). */
  readonly maxModRevision: bigint;
}

/** How {@link ServicesWatch} checks that it is current. */
export interface CurrencyCheckOptions {
  /** A linearizable read of the watched prefix that rejects after its own deadline. */
  readonly read: () => Promise<WatchedRangeState>;
  /** Pause between two reads, in milliseconds (registry default 1000). */
  readonly intervalMs: number;
  /**
   * The watch is stale once no read confirmed it for this long, in milliseconds (registry
   * default 3000: three reads, so one slow read under load does not flap it). With the 1 s
   * interval, a 1 s read deadline and a check every 250 ms, a stall is flagged within ~4.5 s.
   */
  readonly staleAfterMs: number;
}

/** How often staleness is evaluated, in milliseconds (independent of slow reads). */
const STALENESS_CHECK_MS = 250;

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
 *
 * Currency ("is this watch live and current?"): etcd 3.4's progress request is unreliable and
 * etcd3 does not expose it, so a periodic linearizable read of the watched prefix stands in. A
 * read answered at revision R confirms the watch once the watch has delivered everything up to R:
 * at once when it already has, or when nothing under the prefix changed after the last delivered
 * revision (same key count, no mod revision above it; then R is also reported as progress), or
 * later when events up to R arrive. The watch is stale while disconnected, or when nothing
 * confirmed it for `staleAfterMs`.
 */
export class ServicesWatch {
  readonly #client: Etcd3;
  readonly #keys: InstanceKeys;
  readonly #list: () => Promise<InstanceList>;
  readonly #listener: ServicesWatchListener;
  readonly #logger: Logger;
  #watcher: Watcher | undefined;
  #revision = 0n;
  #keyCount = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  readonly #currency: CurrencyCheckOptions;
  readonly #now: () => number;
  /** When a read that the watch has caught up with was sent (ms). */
  #confirmedAtMs = 0;
  /** Reads answered at revisions the watch had not reached yet, oldest first. */
  #unconfirmedReads: { sentAtMs: number; revision: bigint }[] = [];
  #isDisconnected = false;
  #isStale = false;
  #readTimer: NodeJS.Timeout | undefined;
  #stalenessTimer: NodeJS.Timeout | undefined;
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
    currency: CurrencyCheckOptions;
    now?: () => number;
  }) {
    this.#currency = options.currency;
    this.#now = options.now ?? Date.now;
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
    this.#scheduleRead();
    this.#stalenessTimer = setInterval(() => this.#evaluateStaleness(), STALENESS_CHECK_MS).unref();
  }

  /** True while the watch is not confirmed live and current. */
  get isStale(): boolean {
    return this.#isStale;
  }

  /** Stops watching and clears every timer. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#readTimer);
    clearInterval(this.#stalenessTimer);
    await this.#dropWatcher();
  }

  #scheduleRead(): void {
    if (this.#closed) return;
    this.#readTimer = setTimeout(() => void this.#checkCurrency(), this.#currency.intervalMs).unref();
  }

  async #checkCurrency(): Promise<void> {
    const sentAtMs = this.#now();
    try {
      const state = await this.#currency.read();
      if (this.#closed) return;
      if (state.revision <= this.#revision) {
        this.#confirm(sentAtMs);
      } else if (state.maxModRevision <= this.#revision && state.keyCount === this.#keyCount) {
        // Nothing under the prefix changed after what the watch delivered: it is current at R.
        this.#revision = state.revision;
        this.#confirm(sentAtMs);
        this.#listener.progressed(state.revision);
      } else {
        this.#unconfirmedReads.push({ sentAtMs, revision: state.revision });
        if (this.#unconfirmedReads.length > 16) this.#unconfirmedReads.shift();
      }
    } catch {
      // etcd did not answer in time: no confirmation. Logged once per episode by the flip below.
    } finally {
      this.#evaluateStaleness();
      this.#scheduleRead();
    }
  }

  #confirm(sentAtMs: number): void {
    if (this.#isDisconnected) return;
    if (sentAtMs > this.#confirmedAtMs) this.#confirmedAtMs = sentAtMs;
    this.#evaluateStaleness();
  }

  /** Confirms the newest read the watch has now caught up with. */
  #confirmReadsUpTo(revision: bigint): void {
    while (this.#unconfirmedReads.length > 0 && (this.#unconfirmedReads[0]?.revision ?? 0n) <= revision) {
      const read = this.#unconfirmedReads.shift();
      if (read !== undefined) this.#confirm(read.sentAtMs);
    }
  }

  #evaluateStaleness(): void {
    if (this.#closed) return;
    const isStale = this.#isDisconnected || this.#now() - this.#confirmedAtMs > this.#currency.staleAfterMs;
    if (isStale === this.#isStale) return;
    this.#isStale = isStale;
    if (isStale) {
      this.#logger.warn(
        { revision: String(this.#revision), disconnected: this.#isDisconnected },
        "etcd watch is not confirmed current; Watch streams are told they are stale",
      );
    } else {
      this.#logger.info({ revision: String(this.#revision) }, "etcd watch is current again");
    }
    this.#listener.staleChanged(isStale);
  }

  async #sync(): Promise<void> {
    const list = await this.#list();
    if (this.#closed) return;
    this.#relistBackoff.reset();
    this.#revision = list.revision;
    this.#keyCount = list.keyCount;
    this.#unconfirmedReads = [];
    this.#isDisconnected = false;
    this.#confirmedAtMs = this.#now(); // the list was a linearizable read at this revision
    this.#listener.synced(list.instances, list.revision);
    const watcher = this.#client
      .watch()
      .prefix(this.#keys.servicesPrefix)
      .startRevision(String(list.revision + 1n))
      .watcher();
    watcher
      .on("data", (response) => this.#onData(response))
      .on("connected", () => {
        // Connected is not current: the next confirmed read says so.
        this.#isDisconnected = false;
      })
      .on("disconnected", () => {
        watcher.request.start_revision = String(this.#revision + 1n);
        this.#isDisconnected = true;
        this.#unconfirmedReads = [];
        this.#evaluateStaleness();
      })
      .on("error", (error) => {
        this.#logger.warn({ err: error, revision: String(this.#revision) }, "etcd watch failed; re-listing");
        watcher.removeAllListeners();
        if (this.#watcher === watcher) this.#watcher = undefined;
        this.#isDisconnected = true;
        this.#evaluateStaleness();
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
      if (revision <= this.#revision) continue;
      // Every key under the prefix counts, well-formed or not, as in the currency read.
      if (event.type === "Put" && event.kv.version === "1") this.#keyCount += 1;
      else if (event.type === "Delete") this.#keyCount -= 1;
      if (key === undefined) continue;
      let delta = deltas.get(revision);
      if (delta === undefined) {
        delta = { upserted: [], removed: [], revision: String(revision), observedAtUnixMs };
        deltas.set(revision, delta);
      }
      const instance =
        event.type === "Put" ? decodeInstance(key, event.kv.value.toString(), event.kv) : undefined;
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
    this.#confirmReadsUpTo(this.#revision);
  }
}
