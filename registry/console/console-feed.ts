import type { ServerResponse } from "node:http";
import type { Logger } from "pino";
import { MassRemovalDetector } from "../../client/balancing/mass-removal-detector.js";
import type { HttpStream } from "../../client/server/http-endpoints.js";
import {
  InstanceStatus,
  WatchResponse,
  type Instance,
  type InstanceKey,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import type { WatchHub } from "../watch/watch-hub.js";
import type { WatchSink } from "../watch/watch-subscription.js";
import { counterRate, readScrapedCounters } from "./instance-scrape.js";
import { fetchMetricsOverHttp, type MetricsFetch } from "./metrics-fetch.js";

/** What the console reads from the registry. */
export interface ConsoleSources {
  /** The registry's watch hub: membership as snapshot, deltas and progress (with `stale`), and its cache. */
  readonly hub: Pick<WatchHub, "subscribe" | "instances">;
  /** True while etcd answers (`/readyz`). */
  isReady(): boolean;
  /** The lease of an instance key now, from etcd; `undefined` when gone. */
  leaseTimeToLive(
    key: InstanceKey,
  ): Promise<{ grantedTtlSeconds: number; remainingTtlSeconds: number } | undefined>;
  readonly logger: Logger;
  /** How `/metrics` is read; default plain HTTP ({@link fetchMetricsOverHttp}). */
  readonly fetchMetrics?: MetricsFetch | undefined;
}

/** Options of {@link ConsoleFeed}; every field has a default. */
export interface ConsoleFeedOptions {
  /** How often instances are scraped and leases read while a console is open, ms. Default 2000. */
  readonly refreshIntervalMs?: number;
  /** Timeout of one `/metrics` scrape, ms. Default 1000. */
  readonly scrapeTimeoutMs?: number;
  /** Instances scraped (and leases read) at once. Default 4. */
  readonly refreshConcurrency?: number;
  /** Clock in ms. Default `Date.now`. */
  readonly now?: () => number;
}

/** Per instance (`service/instance_id`), what the last refresh saw. */
export interface InstanceObservation {
  /** Calls served per second (rate of `grpc_server_handled_total` between two scrapes). */
  callsPerSecond?: number;
  /** Why the scrape failed, when it did. */
  scrapeError?: string;
  leaseGrantedSeconds?: number;
  /** Remaining TTL as etcd reports it, whole seconds. */
  leaseRemainingSeconds?: number;
}

/** A mass removal the registry saw: callers with default settings enter panic mode for it. */
export interface ConsolePanic {
  readonly service: string;
  readonly sinceUnixMs: number;
  /** When callers' default grace ends (2 × the largest lease TTL of the service). */
  readonly untilUnixMs: number;
}

/** The `health` event: banners. */
export interface ConsoleHealth {
  /** etcd answers the registry (`/readyz`). */
  ready: boolean;
  panics: ConsolePanic[];
  /** Services some caller reports being in panic mode for (`leasehold_client_panic_mode` = 1), with the number of callers. */
  callersInPanic: Record<string, number>;
}

const DEFAULT_TTL_SECONDS = 10;

/**
 * The web console's live feed (`/ui/events`, server-sent events). Each connection subscribes to the
 * watch hub: events `snapshot`, `delta` and `progress` carry the Watch API's messages as proto JSON
 * (a reconnect starts with a fresh snapshot). While at least one console is open, every
 * `refreshIntervalMs` the registry scrapes the `/metrics` of each listed instance that has a
 * `metrics_address` (at most `refreshConcurrency` at once, each within `scrapeTimeoutMs`) and reads
 * its lease from etcd, and sends `observations` (served calls per second, lease granted/remaining
 * TTL) and `health` (etcd readiness, panics). The registry scrapes rather than the page, because
 * instance metrics addresses are rarely reachable from an operator's browser (and cross-origin).
 *
 * Panic banner: at each refresh the feed runs the callers' own trigger ({@link MassRemovalDetector}:
 * more than 50 % of a service's serving instances left within 5 s) over the membership, and shows
 * what callers with default settings do then: keep routing over the departed for 2 × the largest
 * TTL. (It reads the hub's cache rather than holding a Watch stream of its own, so
 * `leasehold_registry_watch_streams` counts only real streams: callers' and open consoles'.)
 * Callers that list their `/metrics` (`leasehold-caller` entries) also report their real panic state.
 */
export class ConsoleFeed {
  readonly #sources: ConsoleSources;
  readonly #refreshIntervalMs: number;
  readonly #scrapeTimeoutMs: number;
  readonly #refreshConcurrency: number;
  readonly #now: () => number;
  readonly #clients = new Set<ServerResponse>();
  readonly #observations = new Map<string, InstanceObservation>();
  readonly #lastTotals = new Map<string, { total: number; atMs: number }>();
  /** Serving instance ids per service at the previous refresh; empty while no console is open. */
  #serving = new Map<string, Set<string>>();
  readonly #maxTtlSeconds = new Map<string, number>();
  readonly #detectors = new Map<string, MassRemovalDetector>();
  #panics: ConsolePanic[] = [];
  #callersInPanic: Record<string, number> = {};
  readonly #stop = new AbortController();
  #refreshTimer: NodeJS.Timeout | undefined;
  #isRefreshing = false;

  constructor(sources: ConsoleSources, options: ConsoleFeedOptions = {}) {
    this.#sources = sources;
    this.#refreshIntervalMs = options.refreshIntervalMs ?? 2000;
    this.#scrapeTimeoutMs = options.scrapeTimeoutMs ?? 1000;
    this.#refreshConcurrency = options.refreshConcurrency ?? 4;
    this.#now = options.now ?? Date.now;
  }

  /** Ends every console stream and stops the refresh. Idempotent. */
  close(): void {
    this.#stop.abort();
    clearTimeout(this.#refreshTimer);
    for (const client of this.#clients) client.end();
    this.#clients.clear();
  }

  /** The `/ui/events` route. */
  readonly route = (): HttpStream => ({
    status: 200,
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      "x-accel-buffering": "no",
    },
    open: (response, signal) => this.#open(response, signal),
  });

  #open(response: ServerResponse, signal: AbortSignal): void {
    if (this.#stop.signal.aborted) {
      response.end();
      return;
    }
    // EventSource reconnects after `retry` ms when the stream ends (registry restart, stream limits).
    response.write("retry: 1000\n\n");
    this.#clients.add(response);
    signal.addEventListener("abort", () => this.#clients.delete(response), { once: true });
    const sink: WatchSink = {
      write: (message) => {
        const name = message.event?.$case;
        if (name === undefined) return true;
        const json = WatchResponse.toJSON(message) as Record<string, unknown>;
        return response.write(event(name, json[name] ?? {}));
      },
      once: (name, listener) => response.once(name, listener),
      end: () => response.end(),
    };
    this.#sources.hub
      .subscribe(
        sink,
        // Parts of ~1 MiB: the page shows the snapshot once the part without hasMore arrives.
        { service: undefined, startRevision: 0n, splitSnapshots: true },
        signal,
      )
      .then(
        () => {
          response.write(event("health", this.#health()));
          response.write(event("observations", this.#observationsJson()));
        },
        (error: unknown) => {
          this.#sources.logger.debug({ err: error }, "console stream not served");
          response.end();
        },
      );
    this.#scheduleRefresh(0);
  }

  #scheduleRefresh(delayMs: number): void {
    if (this.#refreshTimer !== undefined || this.#stop.signal.aborted) return;
    if (this.#clients.size === 0) {
      this.#serving.clear(); // departures are counted between refreshes that a console saw
      return;
    }
    // unref: a console refresh must never keep the registry alive.
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = undefined;
      void this.#refresh()
        .catch((error: unknown) => this.#sources.logger.warn({ err: error }, "console refresh failed"))
        .finally(() => this.#scheduleRefresh(this.#refreshIntervalMs));
    }, delayMs).unref();
  }

  async #refresh(): Promise<void> {
    if (this.#isRefreshing) return;
    this.#isRefreshing = true;
    try {
      const instances = this.#sources.hub.instances();
      const keys = new Set(instances.map(keyOf));
      for (const key of [...this.#observations.keys()]) if (!keys.has(key)) this.#observations.delete(key);
      for (const key of [...this.#lastTotals.keys()]) if (!keys.has(key)) this.#lastTotals.delete(key);
      const callersInPanic: Record<string, number> = {};
      let next = 0;
      const worker = async (): Promise<void> => {
        for (let instance = instances[next++]; instance !== undefined; instance = instances[next++]) {
          const panicServices = await this.#observe(instance);
          for (const service of panicServices) callersInPanic[service] = (callersInPanic[service] ?? 0) + 1;
        }
      };
      await Promise.all(Array.from({ length: this.#refreshConcurrency }, worker));
      this.#callersInPanic = callersInPanic;
      const nowMs = this.#now();
      this.#followMembership(instances, nowMs);
      this.#panics = this.#panics.filter((panic) => panic.untilUnixMs > nowMs);
      this.#broadcast("observations", this.#observationsJson());
      this.#broadcast("health", this.#health());
    } finally {
      this.#isRefreshing = false;
    }
  }

  /** Scrapes one instance and reads its lease; returns the services its caller reports in panic. */
  async #observe(instance: Instance): Promise<readonly string[]> {
    const key = keyOf(instance);
    const observation: InstanceObservation = {};
    let panicServices: readonly string[] = [];
    const scrape = async (): Promise<void> => {
      if (instance.metricsAddress === "") return;
      try {
        const text = await (this.#sources.fetchMetrics ?? fetchMetricsOverHttp)(
          instance.metricsAddress,
          instance.service,
          AbortSignal.any([AbortSignal.timeout(this.#scrapeTimeoutMs), this.#stop.signal]),
        );
        const counters = readScrapedCounters(text);
        panicServices = counters.panicServices;
        if (counters.handledTotal !== undefined) {
          const atMs = this.#now();
          observation.callsPerSecond = counterRate(this.#lastTotals.get(key), counters.handledTotal, atMs);
          this.#lastTotals.set(key, { total: counters.handledTotal, atMs });
        }
      } catch (error) {
        observation.scrapeError = describe(error);
        this.#lastTotals.delete(key);
      }
    };
    const readLease = async (): Promise<void> => {
      const lease = await this.#sources.leaseTimeToLive(instance).catch(() => undefined);
      if (lease === undefined) return;
      observation.leaseGrantedSeconds = lease.grantedTtlSeconds;
      observation.leaseRemainingSeconds = lease.remainingTtlSeconds;
    };
    await Promise.all([scrape(), readLease()]);
    this.#observations.set(key, observation);
    return panicServices;
  }

  /**
   * Runs the callers' panic trigger over the membership seen at each refresh: serving instances
   * that left since the previous refresh are departures (an instance that drained first is not).
   */
  #followMembership(instances: readonly Instance[], nowMs: number): void {
    const serving = new Map<string, Set<string>>();
    for (const instance of instances) {
      const ttlSeconds = Number(instance.ttlSeconds);
      if (ttlSeconds > (this.#maxTtlSeconds.get(instance.service) ?? 0)) {
        this.#maxTtlSeconds.set(instance.service, ttlSeconds);
      }
      if (instance.status === InstanceStatus.INSTANCE_STATUS_DRAINING) continue;
      let ids = serving.get(instance.service);
      if (ids === undefined) serving.set(instance.service, (ids = new Set()));
      ids.add(instance.instanceId);
    }
    const present = new Set(instances.map(keyOf));
    for (const [service, before] of this.#serving) {
      const left = [...before].filter((id) => !present.has(`${service}/${id}`)).length;
      if (left === 0) continue;
      let detector = this.#detectors.get(service);
      if (detector === undefined) {
        detector = new MassRemovalDetector({ now: this.#now });
        this.#detectors.set(service, detector);
      }
      if (!detector.record(left, serving.get(service)?.size ?? 0)) continue;
      const graceMs = 2000 * (this.#maxTtlSeconds.get(service) ?? DEFAULT_TTL_SECONDS);
      this.#panics = [
        ...this.#panics.filter((panic) => panic.service !== service),
        { service, sinceUnixMs: nowMs, untilUnixMs: nowMs + graceMs },
      ];
    }
    this.#serving = serving;
  }

  #health(): ConsoleHealth {
    return { ready: this.#sources.isReady(), panics: this.#panics, callersInPanic: this.#callersInPanic };
  }

  #observationsJson(): { observedAtUnixMs: number; instances: Record<string, InstanceObservation> } {
    return { observedAtUnixMs: this.#now(), instances: Object.fromEntries(this.#observations) };
  }

  /** Writes to every console that keeps up; one that is behind (not drained) skips this event. */
  #broadcast(name: string, data: unknown): void {
    const text = event(name, data);
    for (const client of this.#clients) if (!client.writableNeedDrain) client.write(text);
  }
}

/** One server-sent event (WHATWG HTML §9.2): `event:` then one `data:` line of JSON. */
function event(name: string, data: unknown): string {
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}

function keyOf(instance: InstanceKey): string {
  return `${instance.service}/${instance.instanceId}`;
}

function describe(error: unknown): string {
  if (error instanceof Error && error.name === "TimeoutError") return "timed out";
  const cause = error instanceof Error ? (error.cause as { code?: string } | undefined) : undefined;
  return cause?.code ?? (error instanceof Error ? error.message : String(error));
}
