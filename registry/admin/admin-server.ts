import type { Registry } from "prom-client";
import { splitHostPort, type HostPort } from "../../client/server/host-port.js";
import {
  metricsRoute,
  startHttpEndpoints,
  type HttpAnswer,
  type HttpHandler,
  type HttpEndpoints,
  type HttpRoutes,
} from "../../client/server/http-endpoints.js";
import { routableHost } from "../../client/server/routable-host.js";
import type { Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";
import type { TlsFiles } from "../../client/tls/tls-files.js";

/** One target group of Prometheus HTTP service discovery. */
export interface PrometheusTargetGroup {
  targets: string[];
  labels: Record<string, string>;
}

/**
 * Prometheus HTTP SD groups: one per instance that has a `metrics_address` (labels `service`,
 * `instance_id`, `zone`; never `instance` or `job`, which Prometheus owns), then the registry's
 * own admin address with `service="leasehold-registry"`.
 */
export function prometheusTargets(
  instances: readonly Instance[],
  selfAddress: string,
): PrometheusTargetGroup[] {
  return [
    ...instances
      .filter((instance) => instance.metricsAddress !== "")
      .map((instance) => ({
        targets: [instance.metricsAddress],
        labels: { service: instance.service, instance_id: instance.instanceId, zone: instance.zone },
      })),
    { targets: [selfAddress], labels: { service: "leasehold-registry" } },
  ];
}

/** What the admin endpoints show. */
export interface AdminSources {
  readonly metricsRegistry: Registry;
  /** True while etcd answers (`/readyz`). */
  isReady(): boolean;
  /** Every instance, for `/sd/prometheus`. */
  instances(): readonly Instance[];
  /** More GET routes served beside these (the web console's `/ui`). */
  readonly routes?: HttpRoutes;
  /** Takes requests before the routes (the HTTP API under `/leasehold.registry.v1.RegistryService/`). */
  readonly handler?: HttpHandler;
  /** HTTPS instead of HTTP (mTLS with a CA); see `startHttpEndpoints`. */
  readonly tls?: TlsFiles | undefined;
}

/**
 * Serves `/metrics` (Prometheus text), `/healthz` (200 while the process runs), `/readyz` (200
 * while etcd answers, else 503), `/sd/prometheus` (HTTP SD JSON), `sources.routes` and
 * `sources.handler` on `listen`.
 */
export async function startAdminServer(listen: HostPort, sources: AdminSources): Promise<HttpEndpoints> {
  let selfAddress = "";
  const text = (status: number, body: string): HttpAnswer => ({ status, contentType: "text/plain", body });
  const endpoints = await startHttpEndpoints(
    listen,
    {
      ...sources.routes,
      "/metrics": metricsRoute(sources.metricsRegistry),
      "/healthz": () => text(200, "ok\n"),
      "/readyz": () => (sources.isReady() ? text(200, "ready\n") : text(503, "etcd unreachable\n")),
      "/sd/prometheus": () => ({
        status: 200,
        contentType: "application/json",
        body: JSON.stringify(prometheusTargets(sources.instances(), selfAddress)),
      }),
    },
    sources.tls,
    sources.handler,
  );
  // A wildcard bind (0.0.0.0) is listed as the address others dial, as instances list theirs.
  const { host, port } = splitHostPort(endpoints.address);
  selfAddress = `${routableHost(host)}:${port}`;
  return endpoints;
}
