import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { collectProcessMetrics } from "../client/metrics/process-metrics.js";
import { type CounterTally, HistogramTally, writeCounter, writeHistogram } from "../client/metrics/tally.js";

/** The `service` label value of the services beyond the label cap. */
const OTHER = "other";

/** Upper bounds of `leasehold_registry_etcd_request_duration_seconds`, in seconds. */
const ETCD_DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** etcd operations timed by `leasehold_registry_etcd_request_duration_seconds{op}`. */
export type EtcdOperation =
  | "lease_grant"
  | "lease_revoke"
  | "lease_time_to_live"
  | "keepalive"
  | "txn"
  | "range"
  | "probe"
  /** The periodic linearizable read that confirms the etcd watch is current. */
  | "watch_check";

/**
 * The registry metrics of DESIGN §7, registered in an injected registry (never the global one).
 * Default process metrics and `leasehold_build_info` are added once per registry.
 */
export class RegistryMetrics {
  readonly instances: Gauge<"service">;
  readonly watchStreams: Gauge;
  /** `leasehold_registry_registrations_total` series by result, written at each scrape. */
  readonly #registrations = new Map<string, CounterTally<"result">>();
  /** `leasehold_registry_etcd_request_duration_seconds` series by op, written at each scrape. */
  readonly #etcdDurations = new Map<EtcdOperation, HistogramTally<"op">>();
  /** Refusals by quota (registry/registry-limits.ts), by `limit`. */
  readonly limited: Counter<"limit">;
  readonly #maxServiceLabels: number;
  readonly #beforeCollect: (() => void)[] = [];
  /** Services with their own `service` label value. */
  readonly #labelledServices = new Set<string>();
  /** Instance counts of the services summed under `service="other"`. */
  readonly #otherServices = new Map<string, number>();
  #otherInstances = 0;
  /** Reads this replica's projected renewals/s for the gauge (see {@link projectRenewalsWith}). */
  #projectedRenewals: () => number = () => 0;

  /**
   * @param maxServiceLabels distinct `service` values of `leasehold_registry_instances` (default
   * 1000); the instances of later services are summed under `service="other"`, so callers cannot
   * grow the registry's series without bound.
   */
  constructor(registry: Registry, maxServiceLabels = 1000) {
    this.#maxServiceLabels = maxServiceLabels;
    const registers = [registry];
    collectProcessMetrics(registry, "registry");
    this.instances = new Gauge({
      name: "leasehold_registry_instances",
      help: 'Instances registered per service, as seen by this replica\'s watch-fed cache; services beyond the label cap (--max-service-labels, default 1000) are summed under service="other".',
      labelNames: ["service"],
      registers,
      // Counts set lazily (once per event-loop turn) are brought up to date before every scrape.
      collect: () => {
        for (const flush of this.#beforeCollect) flush();
      },
    });
    this.watchStreams = new Gauge({
      name: "leasehold_registry_watch_streams",
      help: "Open Watch streams on this replica.",
      registers,
    });
    const registrations = this.#registrations;
    new Counter({
      name: "leasehold_registry_registrations_total",
      help: "Register calls by result: ok, adopted (a retry of the same registration id took over its own key) or the error code (e.g. already_exists, invalid_argument).",
      labelNames: ["result"],
      registers,
      collect() {
        writeCounter(this, registrations.values());
      },
    });
    // Observed in plain numbers (client/metrics/tally.ts): prom-client's `observe` hashed the label
    // set on each of the ~1.1 etcd requests per Register (issue 10, Register profile).
    const etcdDurations = this.#etcdDurations;
    new Histogram({
      name: "leasehold_registry_etcd_request_duration_seconds",
      help: "Duration of etcd requests made by the registry, by operation, in seconds.",
      labelNames: ["op"],
      buckets: ETCD_DURATION_BUCKETS,
      registers,
      collect() {
        writeHistogram(this, etcdDurations.values());
      },
    });
    const projectedRenewals = () => this.#projectedRenewals();
    new Gauge({
      name: "leasehold_registry_projected_renewals_per_second",
      help: "Renewals per second this replica's leases will cost (sum of 3/TTL over held leases and admitted Registers); Registers that would take it over --max-renewals-per-second are refused.",
      registers,
      collect() {
        this.set(projectedRenewals());
      },
    });
    this.limited = new Counter({
      name: "leasehold_registry_limited_total",
      help: "Requests refused with RESOURCE_EXHAUSTED by a registry quota: instances_per_service, watch_streams_per_connection, keepalive_rate, resume_rate, renewals_per_second (projected renewal capacity), overload_* (load shedding).",
      labelNames: ["limit"],
      registers,
    });
  }

  /** Sets what `leasehold_registry_projected_renewals_per_second` reads at each scrape. */
  projectRenewalsWith(read: () => number): void {
    this.#projectedRenewals = read;
  }

  /** Runs `request` and observes its duration (successful or not) under `op`. */
  async timeEtcd<T>(op: EtcdOperation, request: () => Promise<T>): Promise<T> {
    const startedMs = performance.now();
    try {
      return await request();
    } finally {
      this.observeEtcd(op, (performance.now() - startedMs) / 1000);
    }
  }

  /** Counts one Register by `result`: `ok`, `adopted` or the error code. */
  countRegistration(result: string): void {
    let tally = this.#registrations.get(result);
    if (tally === undefined) this.#registrations.set(result, (tally = { labels: { result }, value: 0 }));
    tally.value += 1;
  }

  /** Observes one etcd request of `op` that took `seconds`. */
  observeEtcd(op: EtcdOperation, seconds: number): void {
    let tally = this.#etcdDurations.get(op);
    if (tally === undefined)
      this.#etcdDurations.set(op, (tally = new HistogramTally({ op }, ETCD_DURATION_BUCKETS)));
    tally.observe(seconds);
  }

  /**
   * Sets a service's instance count; a service with none left loses its series (and its label
   * slot). Past the label cap, and for a service named `other`, the count goes into `other`.
   */
  /**
   * Runs `flush` before every scrape of `leasehold_registry_instances`, so a caller that sets
   * counts lazily ({@link setInstances} at the end of an event-loop turn) is never seen behind.
   */
  beforeInstancesCollect(flush: () => void): void {
    this.#beforeCollect.push(flush);
  }

  setInstances(service: string, count: number): void {
    const hasLabel =
      this.#labelledServices.has(service) ||
      (service !== OTHER && count > 0 && this.#labelledServices.size < this.#maxServiceLabels);
    if (hasLabel) {
      if (count > 0) {
        this.#labelledServices.add(service);
        this.instances.set({ service }, count);
      } else {
        this.#labelledServices.delete(service);
        this.instances.remove({ service });
      }
      return;
    }
    this.#otherInstances += count - (this.#otherServices.get(service) ?? 0);
    if (count > 0) this.#otherServices.set(service, count);
    else this.#otherServices.delete(service);
    if (this.#otherServices.size > 0) this.instances.set({ service: OTHER }, this.#otherInstances);
    else this.instances.remove({ service: OTHER });
  }
}
