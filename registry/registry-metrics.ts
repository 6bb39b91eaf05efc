import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { collectProcessMetrics } from "../client/metrics/process-metrics.js";

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
  readonly registrations: Counter<"result">;
  readonly etcdRequestDuration: Histogram<"op">;

  constructor(registry: Registry) {
    const registers = [registry];
    collectProcessMetrics(registry, "registry");
    this.instances = new Gauge({
      name: "leasehold_registry_instances",
      help: "Instances registered per service, as seen by this replica's watch-fed cache.",
      labelNames: ["service"],
      registers,
    });
    this.watchStreams = new Gauge({
      name: "leasehold_registry_watch_streams",
      help: "Open Watch streams on this replica.",
      registers,
    });
    this.registrations = new Counter({
      name: "leasehold_registry_registrations_total",
      help: "Register calls by result: ok, adopted (a retry of the same registration id took over its own key) or the error code (e.g. already_exists, invalid_argument).",
      labelNames: ["result"],
      registers,
    });
    this.etcdRequestDuration = new Histogram({
      name: "leasehold_registry_etcd_request_duration_seconds",
      help: "Duration of etcd requests made by the registry, by operation, in seconds.",
      labelNames: ["op"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
  }

  /** Runs `request` and observes its duration (successful or not) under `op`. */
  async timeEtcd<T>(op: EtcdOperation, request: () => Promise<T>): Promise<T> {
    const stopTimer = this.etcdRequestDuration.startTimer({ op });
    try {
      return await request();
    } finally {
      stopTimer();
    }
  }

  /** Sets a service's instance count; a service with none left loses its series. */
  setInstances(service: string, count: number): void {
    if (count > 0) this.instances.set({ service }, count);
    else this.instances.remove({ service });
  }
}
