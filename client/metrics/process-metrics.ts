import { collectDefaultMetrics, Gauge, type Registry } from "prom-client";
import { packageVersion } from "../package-version.js";

/**
 * Adds prom-client's default process metrics and `leasehold_build_info{version,component,node_version}`
 * (always 1; the Prometheus build-info convention) to `registry`, once per registry: a second call,
 * say a caller and a service sharing one registry, changes nothing.
 *
 * @param component which Leasehold process serves this registry: `registry`, `service` or `caller`.
 */
export function collectProcessMetrics(
  registry: Registry,
  component: "registry" | "service" | "caller",
): void {
  if (registry.getSingleMetric("leasehold_build_info") !== undefined) return;
  if (registry.getSingleMetric("process_cpu_user_seconds_total") === undefined)
    collectDefaultMetrics({ register: registry });
  new Gauge({
    name: "leasehold_build_info",
    help: "Leasehold's version, the component serving these metrics and the Node.js version; always 1.",
    labelNames: ["version", "component", "node_version"],
    registers: [registry],
  }).set({ version: packageVersion(), component, node_version: process.version }, 1);
}
