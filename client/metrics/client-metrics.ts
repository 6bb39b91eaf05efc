import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { metricCodeLabel, type StatusCodeName } from "../errors.js";
import { type CounterTally, HistogramTally, writeCounter, writeHistogram } from "./tally.js";

/** One instance's attempts in flight, as a balancer reports them. */
export interface InstanceLoad {
  readonly service: string;
  readonly instanceId: string;
  readonly outstanding: number;
  /** Its last ORCA-reported utilization (fraction) while fresh; undefined when none or stale. */
  readonly utilization?: number | undefined;
  /** The weight its picker uses now (a load-aware policy's, else the registered one × slow start; 0 when not pickable). */
  readonly effectiveWeight?: number | undefined;
}

type AttemptLabel = "service" | "instance_id" | "method";

/** The attempt series of one instance's method: its duration, and its count per code label. */
interface AttemptSeries {
  readonly duration: HistogramTally<AttemptLabel>;
  readonly requests: Map<string, CounterTally<AttemptLabel | "code">>;
}

type CallTally = CounterTally<"service" | "method" | "code">;

const REQUEST_DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** The map under `key` in `map`, made empty on first use. */
function entry<V>(map: Map<string, Map<string, V>>, key: string): Map<string, V> {
  let value = map.get(key);
  if (value === undefined) map.set(key, (value = new Map<string, V>()));
  return value;
}

/**
 * The caller-side metrics of DESIGN §7, registered in an injected registry (never the global one).
 * Labels are never named `instance` or `job`: Prometheus would rename them.
 */
export class ClientMetrics {
  readonly requests: Counter<"service" | "instance_id" | "method" | "code">;
  readonly requestDuration: Histogram<"service" | "instance_id" | "method">;
  readonly breakerState: Gauge<"service" | "instance_id">;
  readonly breakerRejections: Counter<"service" | "instance_id">;
  readonly outstanding: Gauge<"service" | "instance_id">;
  readonly reportedUtilization: Gauge<"service" | "instance_id">;
  readonly effectiveWeight: Gauge<"service" | "instance_id">;
  readonly instances: Gauge<"service" | "status">;
  readonly instanceWeight: Gauge<"service" | "instance_id">;
  readonly membershipEvents: Counter<"service" | "type">;
  readonly membershipStale: Gauge<"service">;
  readonly membershipPropagation: Histogram<"service">;
  readonly panicMode: Gauge<"service">;
  readonly calls: Counter<"service" | "method" | "code">;
  readonly retries: Counter<"service" | "method">;

  constructor(registry: Registry) {
    const registers = [registry];
    // Per-call series are plain-number tallies (./tally.ts), written into prom-client when scraped.
    const attempts = this.#attempts;
    const allAttempts = function* (): Generator<AttemptSeries> {
      for (const ofService of attempts.values())
        for (const ofInstance of ofService.values()) yield* ofInstance.values();
    };
    this.requests = new Counter({
      name: "leasehold_client_requests_total",
      help: "Attempts made by balanced clients (retries included), by instance, method and gRPC status code name.",
      labelNames: ["service", "instance_id", "method", "code"],
      registers,
      collect() {
        writeCounter(
          this,
          Array.from(allAttempts()).flatMap((series) => [...series.requests.values()]),
        );
      },
    });
    this.requestDuration = new Histogram({
      name: "leasehold_client_request_duration_seconds",
      help: "Duration of calls made by balanced clients, in seconds.",
      labelNames: ["service", "instance_id", "method"],
      buckets: REQUEST_DURATION_BUCKETS,
      registers,
      collect() {
        writeHistogram(
          this,
          Array.from(allAttempts(), (series) => series.duration),
        );
      },
    });
    this.breakerState = new Gauge({
      name: "leasehold_client_breaker_state",
      help: "Circuit breaker state per instance: 0 closed, 1 half-open, 2 open.",
      labelNames: ["service", "instance_id"],
      registers,
    });
    this.breakerRejections = new Counter({
      name: "leasehold_client_breaker_rejections_total",
      help:
        "Picks an instance's breaker refused: half-open with its one trial call taken. (An open breaker's " +
        "instance is not offered to picks at all while under the max-ejection cap.)",
      labelNames: ["service", "instance_id"],
      registers,
    });
    const loadSources = this.#loadSources;
    this.outstanding = new Gauge({
      name: "leasehold_client_outstanding_requests",
      help: "Attempts in flight per instance (started, not yet ended), summed over the channels of this process.",
      labelNames: ["service", "instance_id"],
      registers,
      // Read when scraped, from every balancer's own counts: nothing to do per call.
      collect() {
        this.reset();
        for (const source of loadSources)
          for (const { service, instanceId, outstanding } of source())
            this.inc({ service, instance_id: instanceId }, outstanding);
      },
    });
    // Both read when scraped, like the outstanding counts (several channels of one process: the last wins).
    this.reportedUtilization = new Gauge({
      name: "leasehold_client_instance_utilization",
      help:
        "The utilization an instance last reported in its ORCA load report (application_utilization if set, " +
        "else cpu_utilization; a fraction, may exceed 1), while fresh (leastLoaded.maxReportAgeMs, default 10 s).",
      labelNames: ["service", "instance_id"],
      registers,
      collect() {
        this.reset();
        for (const source of loadSources)
          for (const { service, instanceId, utilization } of source())
            if (utilization !== undefined) this.set({ service, instance_id: instanceId }, utilization);
      },
    });
    this.effectiveWeight = new Gauge({
      name: "leasehold_client_instance_effective_weight",
      help:
        "The weight the caller's picker uses per instance now: least_loaded's capacity (weight / utilization), " +
        "weighted_round_robin+orca's gRFC A58 weight, else the registered weight × slow start; 0 when not pickable.",
      labelNames: ["service", "instance_id"],
      registers,
      collect() {
        this.reset();
        for (const source of loadSources)
          for (const { service, instanceId, effectiveWeight } of source())
            if (effectiveWeight !== undefined)
              this.set({ service, instance_id: instanceId }, effectiveWeight);
      },
    });
    this.instances = new Gauge({
      name: "leasehold_client_instances",
      help: "Instances a caller knows, by status (SERVING, DRAINING).",
      labelNames: ["service", "status"],
      registers,
    });
    this.instanceWeight = new Gauge({
      name: "leasehold_client_instance_weight",
      help: "The weight picking uses per instance (its registered weight; 0 while DRAINING): expected share = weight / sum.",
      labelNames: ["service", "instance_id"],
      registers,
    });
    this.membershipEvents = new Counter({
      name: "leasehold_client_membership_events_total",
      help: "Membership events applied by callers, by type (snapshot, reset, added, updated, removed).",
      labelNames: ["service", "type"],
      registers,
    });
    this.membershipStale = new Gauge({
      name: "leasehold_client_membership_stale_seconds",
      help: "Seconds since the caller's membership stream last heard from the registry (0 while connected).",
      labelNames: ["service"],
      registers,
    });
    this.membershipPropagation = new Histogram({
      name: "leasehold_client_membership_propagation_seconds",
      help:
        "Time from the registry receiving an etcd change (Delta.observed_at_unix_ms, registry clock) to " +
        "the caller applying it, in seconds; clock skew between hosts shifts it (negative values count as 0).",
      labelNames: ["service"],
      // Sub-millisecond (same host) to 10 s (a stream that was behind, or a stalled caller).
      buckets: [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
      ],
      registers,
    });
    const calls = this.#calls;
    this.calls = new Counter({
      name: "leasehold_client_calls_total",
      help: "Calls made by balanced clients, by the outcome the application saw (after retries).",
      labelNames: ["service", "method", "code"],
      registers,
      collect() {
        writeCounter(
          this,
          Array.from(calls.values()).flatMap((ofService) =>
            Array.from(ofService.values()).flatMap((ofMethod) => [...ofMethod.values()]),
          ),
        );
      },
    });
    this.retries = new Counter({
      name: "leasehold_client_retries_total",
      help: "Attempts made by balanced clients after a call's first one.",
      labelNames: ["service", "method"],
      registers,
    });
    this.panicMode = new Gauge({
      name: "leasehold_client_panic_mode",
      help: "1 while the caller keeps routing over instances that left the membership at once (panic mode), else 0.",
      labelNames: ["service"],
      registers,
    });
  }

  readonly #loadSources = new Set<() => Iterable<InstanceLoad>>();

  /**
   * Adds a source of per-instance outstanding counts for `leasehold_client_outstanding_requests`,
   * read at each scrape. Returns the function that removes it (call it when the balancer goes).
   */
  addLoadSource(source: () => Iterable<InstanceLoad>): () => void {
    this.#loadSources.add(source);
    return () => this.#loadSources.delete(source);
  }

  /** The attempt series: service → instance id → method. */
  readonly #attempts = new Map<string, Map<string, Map<string, AttemptSeries>>>();

  /**
   * Counts one finished attempt on an instance and observes its duration in seconds. `code` is a
   * status number or name; the label is written in Go's spelling ({@link metricCodeLabel}).
   * Costs map lookups and additions: prom-client sees the totals only when scraped.
   */
  recordCall(
    service: string,
    instanceId: string,
    method: string,
    status: number | StatusCodeName,
    seconds: number,
  ): void {
    const code = metricCodeLabel(status);
    const ofInstance = entry(entry(this.#attempts, service), instanceId);
    let series = ofInstance.get(method);
    if (series === undefined) {
      const labels = { service, instance_id: instanceId, method };
      series = { duration: new HistogramTally(labels, REQUEST_DURATION_BUCKETS), requests: new Map() };
      ofInstance.set(method, series);
    }
    let requests = series.requests.get(code);
    if (requests === undefined) {
      requests = { labels: { service, instance_id: instanceId, method, code }, value: 0 };
      series.requests.set(code, requests);
    }
    requests.value++;
    series.duration.observe(seconds);
  }

  /** The series of `leasehold_client_calls_total`: service → method → code label. */
  readonly #calls = new Map<string, Map<string, Map<string, CallTally>>>();

  /** Counts one call by the outcome the application saw (after retries), in `leasehold_client_calls_total`. */
  countCall(service: string, method: string, status: number | StatusCodeName): void {
    const code = metricCodeLabel(status);
    const ofService = entry(this.#calls, service);
    let ofMethod = ofService.get(method);
    if (ofMethod === undefined) {
      ofService.set(method, (ofMethod = new Map<string, CallTally>()));
      // A method's retries series exists from its first call (at 0), so "retries per second" and
      // ratios over it are 0, not absent, until a retry happens.
      this.retries.inc({ service, method }, 0);
    }
    let calls = ofMethod.get(code);
    if (calls === undefined) ofMethod.set(code, (calls = { labels: { service, method, code }, value: 0 }));
    calls.value++;
  }

  /** Removes every series of an instance that left, so dashboards do not show ghosts. */
  forgetInstance(service: string, instanceId: string): void {
    // Its attempt series go with its tallies (the next scrape rewrites both metrics from them).
    this.#attempts.get(service)?.delete(instanceId);
    this.breakerState.remove({ service, instance_id: instanceId });
    this.breakerRejections.remove({ service, instance_id: instanceId });
  }
}
