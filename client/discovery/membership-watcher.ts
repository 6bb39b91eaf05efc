import type { ClientReadableStream } from "@grpc/grpc-js";
import type { Logger } from "pino";
import {
  InstanceStatus,
  type Instance,
  type RegistryServiceClient,
  type WatchResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { Backoff, sleep, type BackoffOptions } from "../backoff.js";
import { LeaseholdError } from "../errors.js";
import type { ClientMetrics } from "../metrics/client-metrics.js";
import type { MembershipSnapshot, MembershipSource } from "./membership.js";

/** One change a watcher applied, in revision order. */
export type MembershipChange =
  | {
      /** The first snapshot of the stream, or a `reset` one after the resume revision was compacted. */
      readonly type: "snapshot";
      readonly instances: readonly Instance[];
      readonly revision: string;
      readonly reset: boolean;
    }
  | {
      readonly type: "added" | "updated" | "removed";
      /** For `removed`, the instance as it was last known. */
      readonly instance: Instance;
      readonly revision: string;
    };

/**
 * Called after every applied change, and with no changes (`[]`) when {@link MembershipWatcher.isStale}
 * flips, so a listener that re-reads `isStale` at that point sees the new value.
 */
export type MembershipListener = (snapshot: MembershipSnapshot, changes: readonly MembershipChange[]) => void;

/** Options of {@link MembershipWatcher}. */
export interface MembershipWatcherOptions {
  readonly registry: RegistryServiceClient;
  /** Service to watch; "" watches every service. */
  readonly service: string;
  readonly metrics?: ClientMetrics | undefined;
  readonly logger?: Logger | undefined;
  /** Reconnect backoff; default 100 ms × 1.6 up to 5 s, full jitter. */
  readonly backoff?: BackoffOptions | undefined;
  /** A stream silent this long is presumed dead and reopened; default 15000 (3 × the registry's 5 s progress interval). */
  readonly idleTimeoutMs?: number | undefined;
  /** Clock in ms; default Date.now. */
  readonly now?: (() => number) | undefined;
}

const keyOf = (instance: { service: string; instanceId: string }): string =>
  `${instance.service}/${instance.instanceId}`;

/**
 * Keeps a service's membership from the registry's `Watch` stream: snapshot, then deltas; after any
 * break it resumes from the last applied revision with jittered backoff, and a `reset` snapshot
 * (revision compacted meanwhile) is diffed against what it knew, so listeners still see each
 * addition and removal. While the registry is unreachable the last membership stays in use and
 * `leasehold_client_membership_stale_seconds` grows.
 *
 * Staleness: the membership is stale while no stream is open, and while the registry says its own
 * view of etcd is not current (`Progress.stale`, sent within ~5 s of an etcd stall). The stale
 * gauge counts seconds from the last message that proved the membership fresh. Every flip of
 * {@link isStale} is told to {@link onStaleChange} listeners and to {@link subscribe} listeners
 * (with no changes). Each applied delta observes `leasehold_client_membership_propagation_seconds`:
 * now − the registry's `observed_at_unix_ms`.
 *
 * Lifecycle: construct (no I/O) → {@link start} → {@link ready} → {@link close} (idempotent).
 */
export class MembershipWatcher implements MembershipSource {
  readonly #options: Required<Omit<MembershipWatcherOptions, "metrics" | "logger" | "backoff">> &
    Pick<MembershipWatcherOptions, "metrics" | "logger">;
  readonly #backoff: Backoff;
  readonly #instances = new Map<string, Instance>();
  readonly #listeners = new Set<MembershipListener>();
  readonly #errorListeners = new Set<(error: unknown) => void>();
  readonly #staleListeners = new Set<(isStale: boolean) => void>();
  readonly #closing = new AbortController();
  #snapshot: MembershipSnapshot;
  #hasSnapshot = false;
  /** Where a new stream resumes: the last revision applied, advanced by progress messages too. */
  #resumeRevision = "0";
  #isConnected = false;
  /** Broken streams since the last message: the first is a warning, the rest debug lines. */
  #failedAttempts = 0;
  /** The registry's last word on its own view of etcd (`Progress.stale`). */
  #isRegistryStale = false;
  /** The value of `isStale` listeners were last told (starts stale: nothing heard yet). */
  #wasStale = true;
  /** When a message last proved the membership fresh (ms), 0 before the first. */
  #lastFreshAtMs = 0;
  #call: ClientReadableStream<WatchResponse> | undefined;
  /** Instances of a split snapshot received so far (until the part without `has_more`). */
  #snapshotParts: Instance[] | undefined;
  #loop: Promise<void> | undefined;
  #staleTimer: NodeJS.Timeout | undefined;
  readonly #ready: Promise<void>;
  #resolveReady: () => void = () => undefined;
  #rejectReady: (error: Error) => void = () => undefined;

  constructor(options: MembershipWatcherOptions) {
    this.#options = {
      registry: options.registry,
      service: options.service,
      metrics: options.metrics,
      logger: options.logger,
      idleTimeoutMs: options.idleTimeoutMs ?? 15_000,
      now: options.now ?? Date.now,
    };
    this.#backoff = new Backoff(options.backoff);
    this.#snapshot = Object.freeze({ service: options.service, instances: [], revision: "0" });
    this.#ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    this.#ready.catch(() => undefined); // rejected by close(); only ready() callers care
  }

  /** Opens the stream. Idempotent. */
  start(): void {
    if (this.#loop !== undefined || this.#closing.signal.aborted) return;
    this.#loop = this.#run();
    this.#staleTimer = setInterval(() => this.#exportStaleness(), 1000);
    this.#staleTimer.unref();
  }

  /**
   * Resolves once the first snapshot is applied.
   * @throws Error when `timeoutMs` (default 10000) passes first, or the watcher is closed.
   */
  async ready(timeoutMs = 10_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new Error(`no membership snapshot of "${this.#options.service}" within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([this.#ready, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  current(): MembershipSnapshot {
    return this.#snapshot;
  }

  /** True once the first snapshot is applied. */
  get hasSnapshot(): boolean {
    return this.#hasSnapshot;
  }

  /**
   * True while the membership may be out of date: no stream is open to the registry, or the
   * registry said (`Progress.stale`) that it cannot see etcd. The last membership stays in use.
   */
  get isStale(): boolean {
    return !this.#isConnected || this.#isRegistryStale;
  }

  /** Calls `listener` after every change, and with `[]` when `isStale` flips; returns the unsubscribe function. */
  subscribe(listener: MembershipListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Calls `listener` with the new value whenever {@link isStale} flips; returns the unsubscribe function. */
  onStaleChange(listener: (isStale: boolean) => void): () => void {
    this.#staleListeners.add(listener);
    return () => this.#staleListeners.delete(listener);
  }

  /** Calls `listener` with the error of every broken stream (before it resumes); returns the unsubscribe function. */
  onStreamError(listener: (error: unknown) => void): () => void {
    this.#errorListeners.add(listener);
    return () => this.#errorListeners.delete(listener);
  }

  /** Cancels the stream and clears timers; the last membership stays readable. Idempotent. */
  async close(): Promise<void> {
    this.#closing.abort();
    this.#rejectReady(new Error("membership watcher closed"));
    clearInterval(this.#staleTimer);
    this.#call?.cancel();
    await this.#loop;
    this.#listeners.clear();
    this.#errorListeners.clear();
    this.#staleListeners.clear();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #run(): Promise<void> {
    while (!this.#closing.signal.aborted) {
      try {
        await this.#streamOnce();
      } catch (error) {
        if (this.#closing.signal.aborted) break;
        for (const listener of this.#errorListeners) listener(error);
        // One warning per outage, not per reconnect attempt; the rest at debug.
        this.#failedAttempts++;
        // The code and message, no stack: a registry restart is an expected event, not a bug.
        const log = this.#options.logger;
        const { code, message } = LeaseholdError.from(error);
        const fields = { code, reason: message, service: this.#options.service };
        if (this.#failedAttempts === 1) log?.warn(fields, "membership stream broke; resuming");
        else log?.debug(fields, "membership stream still down");
      }
      this.#isConnected = false;
      this.#noticeStaleness();
      await sleep(this.#backoff.next(), this.#closing.signal);
    }
  }

  /** One Watch stream, from open to end; resolves on a clean end, rejects on an error. */
  async #streamOnce(): Promise<void> {
    this.#snapshotParts = undefined; // a snapshot cut short by a broken stream is dropped
    const call = this.#options.registry.watch({
      service: this.#options.service,
      startRevision: this.#hasSnapshot ? this.#resumeRevision : "0",
      // Several Snapshot messages, each under grpc's default 4 MiB receive limit, so a service
      // of any size can be watched (a registry older than the field sends one message).
      splitSnapshots: true,
    });
    this.#call = call;
    let idleTimer: NodeJS.Timeout | undefined;
    const armIdleTimer = (): void => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => call.cancel(), this.#options.idleTimeoutMs);
      idleTimer.unref();
    };
    armIdleTimer();
    try {
      await new Promise<void>((resolve, reject) => {
        call.on("data", (message: WatchResponse) => {
          armIdleTimer();
          this.#isConnected = true;
          this.#backoff.reset();
          if (this.#failedAttempts > 0) {
            this.#options.logger?.info(
              { service: this.#options.service, failedAttempts: this.#failedAttempts },
              "membership stream resumed",
            );
            this.#failedAttempts = 0;
          }
          try {
            this.#apply(message);
            this.#noticeStaleness();
          } catch (error) {
            call.cancel();
            reject(error instanceof Error ? error : new Error(String(error)));
          }
        });
        call.on("error", reject);
        call.on("end", resolve);
      });
    } finally {
      clearTimeout(idleTimer);
      call.removeAllListeners();
      call.on("error", () => undefined); // a late CANCELLED must not crash the process
      call.cancel();
    }
  }

  #apply(message: WatchResponse): void {
    const event = message.event;
    if (event === undefined) return;
    if (event.$case === "progress") {
      this.#isRegistryStale = event.value.stale;
      if (!event.value.stale) this.#lastFreshAtMs = this.#options.now();
      // A quiet service's resume point keeps up with etcd, so a reconnect after a compaction of
      // other services' revisions resumes instead of needing a reset snapshot.
      if (this.#hasSnapshot && BigInt(event.value.revision) > BigInt(this.#resumeRevision)) {
        this.#resumeRevision = event.value.revision;
      }
      return;
    }
    // Changes come from a live etcd watch; they prove freshness unless the registry said otherwise.
    if (!this.#isRegistryStale) this.#lastFreshAtMs = this.#options.now();
    const changes: MembershipChange[] = [];
    if (event.$case === "snapshot") {
      const { revision, reset, hasMore } = event.value;
      if (hasMore || this.#snapshotParts !== undefined) {
        this.#snapshotParts ??= [];
        for (const instance of event.value.instances) this.#snapshotParts.push(instance);
        if (hasMore) return; // applied once whole: never a partial membership
      }
      const instances = this.#snapshotParts ?? event.value.instances;
      this.#snapshotParts = undefined;
      const next = new Map(instances.map((instance) => [keyOf(instance), instance]));
      if (!this.#hasSnapshot) {
        changes.push({ type: "snapshot", instances, revision, reset });
      } else {
        for (const [key, old] of this.#instances) {
          if (!next.has(key)) changes.push({ type: "removed", instance: old, revision });
        }
        for (const [key, instance] of next) {
          const old = this.#instances.get(key);
          if (old === undefined) changes.push({ type: "added", instance, revision });
          else if (old.revision !== instance.revision) changes.push({ type: "updated", instance, revision });
        }
      }
      this.#instances.clear();
      for (const [key, instance] of next) this.#instances.set(key, instance);
      this.#commit(revision, changes, reset ? "reset" : "snapshot");
      return;
    }
    if (this.#snapshotParts !== undefined) throw new Error("a delta arrived inside a split snapshot");
    const { upserted, removed, revision, observedAtUnixMs } = event.value;
    this.#observePropagation(observedAtUnixMs);
    for (const key of removed) {
      const old = this.#instances.get(keyOf(key));
      if (old === undefined) continue;
      this.#instances.delete(keyOf(key));
      changes.push({ type: "removed", instance: old, revision });
    }
    for (const instance of upserted) {
      const isNew = !this.#instances.has(keyOf(instance));
      this.#instances.set(keyOf(instance), instance);
      changes.push({ type: isNew ? "added" : "updated", instance, revision });
    }
    this.#commit(revision, changes, undefined);
  }

  #commit(revision: string, changes: readonly MembershipChange[], snapshotType: string | undefined): void {
    const instances = [...this.#instances.values()].sort(
      (a, b) => a.service.localeCompare(b.service) || a.instanceId.localeCompare(b.instanceId),
    );
    this.#snapshot = Object.freeze({ service: this.#options.service, instances, revision });
    this.#resumeRevision = revision;
    const firstSnapshot = !this.#hasSnapshot;
    this.#hasSnapshot = true;
    this.#exportMembership(changes, snapshotType);
    if (firstSnapshot) this.#resolveReady();
    for (const listener of this.#listeners) listener(this.#snapshot, changes);
  }

  #exportMembership(changes: readonly MembershipChange[], snapshotType: string | undefined): void {
    const metrics = this.#options.metrics;
    if (metrics === undefined) return;
    const label = this.#options.service;
    if (snapshotType !== undefined) metrics.membershipEvents.inc({ service: label, type: snapshotType });
    for (const change of changes) {
      if (change.type !== "snapshot") {
        metrics.membershipEvents.inc({ service: change.instance.service, type: change.type });
      }
    }
    const counts = new Map<string, { serving: number; draining: number }>();
    for (const instance of this.#snapshot.instances) {
      const count = counts.get(instance.service) ?? { serving: 0, draining: 0 };
      if (instance.status === InstanceStatus.INSTANCE_STATUS_DRAINING) count.draining += 1;
      else count.serving += 1;
      counts.set(instance.service, count);
    }
    for (const change of changes) {
      if (change.type !== "snapshot" && !counts.has(change.instance.service)) {
        counts.set(change.instance.service, { serving: 0, draining: 0 });
      }
    }
    for (const [service, count] of counts) {
      metrics.instances.set({ service, status: "SERVING" }, count.serving);
      metrics.instances.set({ service, status: "DRAINING" }, count.draining);
    }
    this.#exportWeights(metrics, changes, snapshotType !== undefined);
  }

  /** Instances whose weight series this watcher wrote, as `service/instance_id` → labels. */
  readonly #weightSeries = new Map<string, { service: string; instance_id: string }>();

  /**
   * `leasehold_client_instance_weight`: the weight picking uses per instance (0 while DRAINING), so
   * a dashboard can draw each instance's expected share. Series of instances that left are removed.
   */
  #exportWeights(metrics: ClientMetrics, changes: readonly MembershipChange[], isWhole: boolean): void {
    const write = (instance: Instance): void => {
      const labels = { service: instance.service, instance_id: instance.instanceId };
      this.#weightSeries.set(`${instance.service}/${instance.instanceId}`, labels);
      const isDraining = instance.status === InstanceStatus.INSTANCE_STATUS_DRAINING;
      metrics.instanceWeight.set(labels, isDraining ? 0 : instance.weight);
    };
    const forget = (key: string): void => {
      const labels = this.#weightSeries.get(key);
      if (labels === undefined) return;
      metrics.instanceWeight.remove(labels);
      this.#weightSeries.delete(key);
    };
    if (isWhole) {
      const listed = new Set(
        this.#snapshot.instances.map((instance) => `${instance.service}/${instance.instanceId}`),
      );
      for (const key of [...this.#weightSeries.keys()]) if (!listed.has(key)) forget(key);
      for (const instance of this.#snapshot.instances) write(instance);
      return;
    }
    for (const change of changes) {
      if (change.type === "snapshot") continue;
      if (change.type === "removed") forget(`${change.instance.service}/${change.instance.instanceId}`);
      else write(change.instance);
    }
  }

  /** Observes the propagation lag of one delta; `0` (an older registry) is not observed. */
  #observePropagation(observedAtUnixMs: string): void {
    const metrics = this.#options.metrics;
    const observedAtMs = Number(observedAtUnixMs);
    if (metrics === undefined || !(observedAtMs > 0)) return;
    const seconds = Math.max(0, this.#options.now() - observedAtMs) / 1000;
    metrics.membershipPropagation.observe({ service: this.#options.service }, seconds);
  }

  /** Exports the stale gauge and tells listeners when `isStale` flipped. */
  #noticeStaleness(): void {
    this.#exportStaleness();
    const isStale = this.isStale;
    if (isStale === this.#wasStale) return;
    this.#wasStale = isStale;
    this.#options.logger?.info(
      { service: this.#options.service, stale: isStale },
      "membership staleness changed",
    );
    for (const listener of this.#staleListeners) listener(isStale);
    for (const listener of this.#listeners) listener(this.#snapshot, []);
  }

  #exportStaleness(): void {
    const seconds =
      !this.isStale || this.#lastFreshAtMs === 0 ? 0 : (this.#options.now() - this.#lastFreshAtMs) / 1000;
    this.#options.metrics?.membershipStale.set({ service: this.#options.service }, seconds);
  }
}
