import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import type { Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";
import type { HostPort } from "../registry-options.js";

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
}

/** A running admin HTTP server. */
export interface AdminServer {
  /** host:port it is bound to (real port). */
  readonly address: string;
  /** Stops listening and closes open connections. Idempotent. */
  close(): Promise<void>;
}

/**
 * Serves `/metrics` (Prometheus text), `/healthz` (200 while the process runs), `/readyz` (200
 * while etcd answers, else 503) and `/sd/prometheus` (HTTP SD JSON) on `listen`.
 */
export async function startAdminServer(listen: HostPort, sources: AdminSources): Promise<AdminServer> {
  let address = "";
  const server = createServer((request, response) => {
    handle(request, response, sources, address).catch(() => {
      if (!response.headersSent) response.writeHead(500);
      response.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(listen.port, listen.host.replace(/^\[(.*)\]$/, "$1"), () => {
      server.off("error", reject);
      resolve();
    });
  });
  address = `${listen.host}:${(server.address() as AddressInfo).port}`;
  let closing: Promise<void> | undefined;
  return {
    address,
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}

async function handle(
  request: IncomingMessage,
  response: ServerResponse,
  sources: AdminSources,
  selfAddress: string,
): Promise<void> {
  const path = new URL(request.url ?? "/", "http://admin").pathname;
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { allow: "GET, HEAD" }).end();
    return;
  }
  switch (path) {
    case "/metrics": {
      const body = await sources.metricsRegistry.metrics();
      response.writeHead(200, { "content-type": sources.metricsRegistry.contentType }).end(body);
      return;
    }
    case "/healthz":
      response.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return;
    case "/readyz": {
      const isReady = sources.isReady();
      response
        .writeHead(isReady ? 200 : 503, { "content-type": "text/plain" })
        .end(isReady ? "ready\n" : "etcd unreachable\n");
      return;
    }
    case "/sd/prometheus":
      response
        .writeHead(200, { "content-type": "application/json" })
        .end(JSON.stringify(prometheusTargets(sources.instances(), selfAddress)));
      return;
    default:
      response.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  }
}
