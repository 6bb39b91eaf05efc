import type { Logger } from "pino";
import {
  InstanceStatus,
  type Delta,
  type Instance,
  type InstanceKey,
  type ServiceSummary,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import type { RegistryMetrics } from "../registry-metrics.js";
import { instanceBytes } from "../store/instance-codec.js";
import type { ServicesWatchListener } from "../store/services-watch.js";
import {
  DeltaParts,
  MIN_BEHIND_CHECKS,
  WATCH_MESSAGE_BYTES,
  WatchSubscription,
  type WatchSink,
  type WatchStreamLimits,
} from "./watch-subscription.js";

/** Resolved options of {@link WatchHub}. */
export interface WatchHubOptions {
  /** Deltas kept for resumes (`start_revision`); older resumes are answered from etcd. */
  readonly historyMaxDeltas: number;
  /** When a stream that is behind is ended; see {@link WatchStreamLimits}. */
  readonly streamLimits: WatchStreamLimits;
  /** Interval of `progress` messages, in milliseconds. */
  readonly progressIntervalMs: number;
  /**
   * Least time between two deltas sent to the streams, in milliseconds (a debounce, as Istio's
   * pilot debounces pushes to Envoys): a change that comes at least this long after the last send
   * goes out as without it (see `WatchHub.#unsent`); one that comes sooner waits for the rest of
   * the interval, with every other change until then, in one delta. 0: no wait.
   */
  readonly minSendIntervalMs: number;
  /** Reads the instances of a service (or all) at a past revision; `undefined` when compacted. */
  readonly listAt: (
    revision: bigint,
    service: string | undefined,
  ) => Promise<readonly Instance[] | undefined>;
  readonly metrics: RegistryMetrics;
  readonly logger: Logger;
  /** Clock in ms; default `Date.now`. */
  readonly now?: () => number;
}

/**
 * The watch-fed cache and fan-out: fed by the ONE etcd watch ({@link ServicesWatchListener}), it
 * serves GetService/ListServices, and streams a snapshot then every delta, in revision order, to
 * every subscribed Watch stream.
 *
 * Resume (`start_revision` = R > 0): etcd is asked for the membership at R first; if R was
 * compacted the stream starts with a `reset` snapshot. Otherwise deltas after R are replayed from
 * the bounded history, or — when R is older than the history (e.g. after this replica started) —
 * answered with one catch-up delta at the current revision that takes R's membership to the
 * current one (intermediate revisions folded, as compaction would). Never a silent gap.
 *
 * Staleness: every `progress` says whether the etcd watch is live and current (`stale`, from
 * {@link ServicesWatchListener.staleChanged}). A flip is sent to every stream at once, then with
 * every progress interval.
 */
export class WatchHub implements ServicesWatchListener {
  readonly #options: WatchHubOptions;
  /** service → instance id → instance */
  readonly #services = new Map<string, Map<string, Instance>>();
  /** service → its instances sorted by id, built on demand, dropped when the service changes. */
  readonly #sorted = new Map<string, readonly Instance[]>();
  /** Services whose instance gauge is set at the end of this event-loop turn. */
  readonly #uncountedServices = new Set<string>();
  readonly #subscriptions = new Set<WatchSubscription>();
  /** The same subscriptions by the service they watch (`undefined`: every service). */
  readonly #byService = new Map<string | undefined, Set<WatchSubscription>>();
  /** Every delta after `#historyFloor` up to `#revision`, oldest first. */
  readonly #history: Delta[] = [];
  #historyFloor = 0n;
  #revision = 0n;
  #isSynced = false;
  #isStale = false;
  #isClosed = false;
  /**
   * Changes applied to the cache but not yet sent to the streams, sent as ONE delta at the latest
   * revision: while the hub is busy (see `#isBusy`), by a `setImmediate`, so a burst read from etcd
   * in one event-loop turn costs each stream one write, not one per revision; when it is idle, by
   * a microtask, once the etcd watch response that brought them is applied (the revisions of one
   * response still share a delta). Earlier when a change touches an instance already in it (no
   * version is merged away) or a progress is about to be sent.
   */
  #unsent: UnsentChanges | undefined;
  #isSendScheduled = false;
  /**
   * True from a send until an event-loop turn passes without one. An idle hub sends a change at
   * once rather than at the end of the turn: a `setImmediate` waits for the rest of the turn's I/O
   * (issue 10, push benchmark, load ~10: 0.06 ms at p50 but 1–4 ms at p99 with 1 stream, 20–29 ms
   * with 100; the batching it buys matters only while changes keep coming).
   */
  #isBusy = false;
  #hasSentSinceTurnCheck = false;
  /** The debounce timer (see `minSendIntervalMs`), cleared by close(). */
  #sendTimer: NodeJS.Timeout | undefined;
  /** When changes were last sent, from `#now`. */
  #lastSentAtMs = Number.NEGATIVE_INFINITY;
  #progressTimer: NodeJS.Timeout | undefined;
  #behindTimer: NodeJS.Timeout | undefined;
  readonly #now: () => number;

  constructor(options: WatchHubOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    options.metrics.beforeInstancesCollect(() => this.#setInstanceGauges());
  }

  /** Revision the cache is at (decimal-safe bigint); 0 before the first sync. */
  get revision(): bigint {
    return this.#revision;
  }

  /** True while the etcd watch is not confirmed live and current; progress says `stale`. */
  get isStale(): boolean {
    return this.#isStale;
  }

  /** Open Watch streams (the `leasehold_registry_watch_streams` gauge). */
  get streamCount(): number {
    return this.#subscriptions.size;
  }

  /**
   * Starts the `progress` timer and the check of streams that are behind (every `maxBehindMs` /
   * {@link MIN_BEHIND_CHECKS}, at least 10 ms). Timers are unref'd.
   */
  start(): void {
    this.#progressTimer ??= setInterval(
      () => this.#broadcastProgress(),
      this.#options.progressIntervalMs,
    ).unref();
    const checkMs = Math.max(10, Math.floor(this.#options.streamLimits.maxBehindMs / MIN_BEHIND_CHECKS));
    this.#behindTimer ??= setInterval(() => this.checkStreamsBehind(), checkMs).unref();
  }

  /**
   * Ends the streams that have been behind without draining for too long (see
   * {@link WatchSubscription.checkBehind}). Called by the timer `start()` sets; public so tests
   * can drive it with an injected clock.
   */
  checkStreamsBehind(): void {
    for (const subscription of [...this.#subscriptions]) subscription.checkBehind();
  }

  /** Ends every Watch stream with `UNAVAILABLE` and stops the timers. Idempotent. */
  close(): void {
    this.#sendUnsent();
    this.#isClosed = true;
    clearTimeout(this.#sendTimer);
    clearInterval(this.#progressTimer);
    clearInterval(this.#behindTimer);
    for (const subscription of [...this.#subscriptions]) {
      subscription.close(new RegistryError("unavailable", "registry is shutting down; reconnect and resume"));
    }
  }

  /** Instances of `service` (or of every service), sorted by service then instance id. */
  instances(service?: string): Instance[] {
    const services = service === undefined ? [...this.#services.keys()].sort() : [service];
    return services.flatMap((name) => this.sortedInstances(name));
  }

  /** Instances of one service sorted by instance id: a shared array, never to be changed. */
  sortedInstances(service: string): readonly Instance[] {
    let sorted = this.#sorted.get(service);
    if (sorted === undefined) {
      sorted = [...(this.#services.get(service)?.values() ?? [])].sort((a, b) =>
        compare(a.instanceId, b.instanceId),
      );
      if (sorted.length > 0) this.#sorted.set(service, sorted);
    }
    return sorted;
  }

  /** How many instances `service` has in the cache, and whether `instanceId` is one of them; O(1). */
  instanceCount(service: string, instanceId?: string): { count: number; isListed: boolean } {
    const instances = this.#services.get(service);
    return {
      count: instances?.size ?? 0,
      isListed: instanceId !== undefined && instances?.has(instanceId) === true,
    };
  }

  /** Every service with its instance counts, sorted by name. */
  summaries(): ServiceSummary[] {
    return [...this.#services.entries()]
      .sort(([a], [b]) => compare(a, b))
      .map(([service, instances]) => {
        let draining = 0;
        for (const instance of instances.values()) {
          if (instance.status === InstanceStatus.INSTANCE_STATUS_DRAINING) draining += 1;
        }
        return { service, instances: instances.size, serving: instances.size - draining, draining };
      });
  }

  /**
   * Subscribes a Watch stream: a snapshot (`startRevision` 0) or a resume, then live deltas and
   * progress until `signal` aborts (the caller cancelled), the hub closes, or the stream falls
   * too far behind.
   * @throws RegistryError `out_of_range` (revision ahead of etcd), `unavailable` (etcd unreachable
   * for a resume, or the hub closed).
   */
  async subscribe(
    sink: WatchSink,
    request: { service: string | undefined; startRevision: bigint; splitSnapshots?: boolean },
    signal: AbortSignal,
  ): Promise<void> {
    const { service, startRevision } = request;
    const past = startRevision === 0n ? undefined : await this.#options.listAt(startRevision, service);
    if (signal.aborted) return;
    if (this.#isClosed || !this.#isSynced)
      throw new RegistryError("unavailable", "registry is not serving watches");
    // The waiting changes go out first: the new stream starts at the current revision, so a delta
    // sent later would hold changes it already has.
    this.#sendUnsent();
    const subscription = new WatchSubscription({
      sink,
      service,
      revision: startRevision === 0n || past === undefined ? this.#revision : startRevision,
      limits: this.#options.streamLimits,
      now: this.#now,
      closed: (closed) => this.#unsubscribe(closed),
    });
    // Counted before the first write: however it ends from here on (even during replay), it leaves.
    this.#subscriptions.add(subscription);
    let group = this.#byService.get(service);
    if (group === undefined) this.#byService.set(service, (group = new Set()));
    group.add(subscription);
    this.#options.metrics.watchStreams.set(this.#subscriptions.size);
    signal.addEventListener("abort", () => subscription.close(), { once: true });
    if (startRevision === 0n || past === undefined) {
      const reset = startRevision !== 0n;
      if (reset)
        this.#options.logger.info({ startRevision: String(startRevision) }, "resume revision compacted");
      const instances = this.instances(service);
      const parts = request.splitSnapshots === true ? splitBySize(instances) : [instances];
      const revision = String(this.#revision);
      const observedAtUnixMs = String(this.#now());
      subscription.sendSnapshot(
        parts.map((part, index) => ({
          event: {
            $case: "snapshot",
            value: { instances: part, revision, reset, observedAtUnixMs, hasMore: index < parts.length - 1 },
          },
        })),
      );
    } else if (startRevision >= this.#historyFloor) {
      for (const delta of this.#history) subscription.deliver(new DeltaParts([delta]));
    } else {
      const catchUp = this.#diff(past, service);
      if (catchUp !== undefined) subscription.deliver(new DeltaParts([catchUp]));
    }
    if (this.#isStale) subscription.progress(this.#revision, true);
    if (signal.aborted) subscription.close();
  }

  /** @internal ServicesWatchListener: full membership (first sync, or re-list after a watch failure). */
  synced(instances: readonly Instance[], revision: bigint): void {
    if (!this.#isSynced) {
      this.#isSynced = true;
      for (const instance of instances) this.#put(instance);
      for (const service of this.#services.keys()) this.#countInstances(service);
      this.#revision = revision;
      this.#historyFloor = revision;
      return;
    }
    const byKey = new Map(instances.map((instance) => [keyOf(instance), instance]));
    const upserted = instances.filter(
      (instance) =>
        this.#services.get(instance.service)?.get(instance.instanceId)?.revision !== instance.revision,
    );
    const removed: InstanceKey[] = this.instances()
      .filter((instance) => !byKey.has(keyOf(instance)))
      .map(({ service, instanceId }) => ({ service, instanceId }));
    if (upserted.length > 0 || removed.length > 0) {
      this.changed({ upserted, removed, revision: String(revision), observedAtUnixMs: String(this.#now()) });
    } else {
      this.progressed(revision);
    }
    // The folded delta is right for streams that followed this cache, not for a caller resuming from
    // a revision it learned from another replica: older resumes must diff against etcd (listAt).
    this.#history.length = 0;
    this.#historyFloor = revision;
  }

  /** @internal ServicesWatchListener: every change of one revision, in revision order. */
  changed(delta: Delta): void {
    const touched = new Set<string>();
    for (const key of delta.removed) {
      this.#services.get(key.service)?.delete(key.instanceId);
      touched.add(key.service);
    }
    for (const instance of delta.upserted) {
      this.#put(instance);
      touched.add(instance.service);
    }
    for (const service of touched) this.#countInstances(service);
    this.#revision = BigInt(delta.revision);
    this.#history.push(delta);
    if (this.#history.length > this.#options.historyMaxDeltas) {
      const dropped = this.#history.shift();
      if (dropped !== undefined) this.#historyFloor = BigInt(dropped.revision);
    }
    this.#addUnsent(delta);
  }

  /**
   * Sends `delta` to the streams with the other changes of this event-loop turn (see `#unsent`).
   * Versions are never merged: a change to an instance already waiting sends the waiting ones first.
   */
  #addUnsent(delta: Delta): void {
    const changed = [...delta.removed, ...delta.upserted];
    const keys = changed.map(keyOf);
    if (this.#unsent !== undefined && keys.some((key) => this.#unsent?.keys.has(key) === true)) {
      this.#sendUnsent();
    }
    if (this.#unsent === undefined) {
      this.#unsent = { deltas: [], keys: new Set(), services: new Set() };
      if (!this.#isSendScheduled) {
        this.#isSendScheduled = true;
        const send = (): void => {
          this.#isSendScheduled = false;
          this.#sendUnsent();
        };
        const waitMs = this.#lastSentAtMs + this.#options.minSendIntervalMs - this.#now();
        if (waitMs > 0) this.#sendTimer = setTimeout(send, waitMs);
        else if (this.#isBusy) setImmediate(send);
        else queueMicrotask(send);
      }
    }
    this.#unsent.deltas.push(delta);
    for (const key of keys) this.#unsent.keys.add(key);
    for (const { service } of changed) this.#unsent.services.add(service);
  }

  /** Sends the changes waiting in `#unsent` to every stream (each its service's part, see {@link DeltaParts}). */
  #sendUnsent(): void {
    const unsent = this.#unsent;
    if (unsent === undefined) return;
    this.#unsent = undefined;
    this.#lastSentAtMs = this.#now();
    this.#hasSentSinceTurnCheck = true;
    if (!this.#isBusy) {
      this.#isBusy = true;
      setImmediate(this.#checkTurn);
    }
    // Sent early (a second version, a progress, a subscriber): the next change schedules afresh.
    clearTimeout(this.#sendTimer);
    this.#isSendScheduled = false;
    const parts = new DeltaParts(unsent.deltas);
    // Only the streams of the services changed, and those of every service: a stream of another
    // service learns the revision from the next progress. No copy of a set: a subscription that
    // closes meanwhile is deleted, which iteration allows.
    for (const service of [...unsent.services, undefined]) {
      const group = this.#byService.get(service);
      if (group !== undefined) for (const subscription of group) subscription.deliver(parts);
    }
  }

  /** At the end of each turn while busy: the hub stays busy until a whole turn passes without a send. */
  readonly #checkTurn = (): void => {
    if (this.#hasSentSinceTurnCheck) {
      this.#hasSentSinceTurnCheck = false;
      setImmediate(this.#checkTurn);
    } else {
      this.#isBusy = false;
    }
  };

  /** @internal ServicesWatchListener: nothing changed up to `revision`. */
  progressed(revision: bigint): void {
    if (revision > this.#revision) this.#revision = revision;
  }

  /** @internal ServicesWatchListener: the etcd watch stopped (or resumed) being live and current. */
  staleChanged(isStale: boolean): void {
    if (isStale === this.#isStale) return;
    this.#isStale = isStale;
    this.#broadcastProgress();
  }

  #broadcastProgress(): void {
    this.#sendUnsent(); // a progress at the current revision must not overtake its deltas
    for (const subscription of [...this.#subscriptions]) subscription.progress(this.#revision, this.#isStale);
  }

  #put(instance: Instance): void {
    let instances = this.#services.get(instance.service);
    if (instances === undefined)
      this.#services.set(instance.service, (instances = new Map<string, Instance>()));
    instances.set(instance.instanceId, instance);
  }

  #countInstances(service: string): void {
    this.#sorted.delete(service);
    if (this.#services.get(service)?.size === 0) this.#services.delete(service);
    // The gauge is set once per service per event-loop turn, not per change: a labelled
    // prom-client set showed in Register profiles (issue 10) at thousands of changes a second.
    if (this.#uncountedServices.size === 0) setImmediate(() => this.#setInstanceGauges());
    this.#uncountedServices.add(service);
  }

  #setInstanceGauges(): void {
    for (const service of this.#uncountedServices) {
      this.#options.metrics.setInstances(service, this.#services.get(service)?.size ?? 0);
    }
    this.#uncountedServices.clear();
  }

  /** One delta at the current revision taking `past` (a membership read from etcd) to the cache's. */
  #diff(past: readonly Instance[], service: string | undefined): Delta | undefined {
    const pastByKey = new Map(past.map((instance) => [keyOf(instance), instance]));
    const current = this.instances(service);
    const currentKeys = new Set(current.map(keyOf));
    const delta: Delta = {
      upserted: current.filter((instance) => pastByKey.get(keyOf(instance))?.revision !== instance.revision),
      removed: past
        .filter((instance) => !currentKeys.has(keyOf(instance)))
        .map(({ service: name, instanceId }) => ({ service: name, instanceId })),
      revision: String(this.#revision),
      observedAtUnixMs: String(this.#now()),
    };
    return delta.upserted.length > 0 || delta.removed.length > 0 ? delta : undefined;
  }

  #unsubscribe(subscription: WatchSubscription): void {
    this.#subscriptions.delete(subscription);
    const group = this.#byService.get(subscription.service);
    group?.delete(subscription);
    if (group?.size === 0) this.#byService.delete(subscription.service);
    this.#options.metrics.watchStreams.set(this.#subscriptions.size);
  }
}

/** Changes of one event-loop turn not sent to the streams yet (see `WatchHub.#unsent`). */
interface UnsentChanges {
  readonly deltas: Delta[];
  /** `service/instance_id` of every instance the deltas touch. */
  readonly keys: Set<string>;
  /** Every service the deltas touch. */
  readonly services: Set<string>;
}

/** Consecutive runs of `instances` of about {@link WATCH_MESSAGE_BYTES} each; at least one (maybe empty). */
function splitBySize(instances: readonly Instance[]): Instance[][] {
  const parts: Instance[][] = [[]];
  let bytes = 0;
  for (const instance of instances) {
    const size = instanceBytes(instance);
    const part = parts.at(-1) as Instance[];
    if (part.length > 0 && bytes + size > WATCH_MESSAGE_BYTES) {
      parts.push([instance]);
      bytes = size;
    } else {
      part.push(instance);
      bytes += size;
    }
  }
  return parts;
}

function keyOf(instance: InstanceKey): string {
  return `${instance.service}/${instance.instanceId}`;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
