import { hostname } from "node:os";
import type { Logger } from "pino";
import type { RegistryServiceClient } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { Registrar } from "./registrar.js";

/**
 * The service under which callers list their `/metrics` endpoint in the registry, so the
 * registry's `/sd/prometheus` (Prometheus HTTP service discovery) covers callers as well as
 * instances. Its entries have weight 0 and are never called: the entry exists for discovery only.
 */
export const CALLER_SERVICE = "leasehold-caller";

/** Options of {@link startCallerEntry}. */
export interface CallerEntryOptions {
  readonly registry: RegistryServiceClient;
  /** host:port of the caller's `/metrics`, as Prometheus can dial it (not a wildcard host). */
  readonly metricsAddress: string;
  /** The service this caller calls; listed as the entry's metadata `calls`. */
  readonly calls: string;
  /** The entry's instance id; default `<hostname>-<pid>` (characters outside `[A-Za-z0-9._-]` become `-`; leading `-` and `.` are dropped). */
  readonly callerId?: string | undefined;
  /** Lease TTL in seconds; default 10. */
  readonly ttlSeconds?: number | undefined;
  readonly logger?: Logger | undefined;
}

/**
 * Registers a caller's `/metrics` endpoint as an instance of {@link CALLER_SERVICE} (weight 0,
 * metadata `calls=<service>`) and keeps its lease alive, like any instance. `close()` the returned
 * registrar to deregister. Resolves once registered.
 * @throws ServiceError when the registry refuses the entry for good (INVALID_ARGUMENT ...).
 */
export async function startCallerEntry(options: CallerEntryOptions): Promise<Registrar> {
  const callerId = (options.callerId ?? `${hostname()}-${process.pid}`)
    .replace(/[^A-Za-z0-9._-]/g, "-")
    .replace(/^[-.]+/, "") // the registry refuses ids ".", ".." and a leading "-"
    .slice(0, 128);
  const registrar = new Registrar({
    registry: options.registry,
    instance: {
      service: CALLER_SERVICE,
      instanceId: callerId,
      address: options.metricsAddress,
      weight: 0,
      metadata: { calls: options.calls },
      metricsAddress: options.metricsAddress,
    },
    ttlSeconds: options.ttlSeconds,
    logger: options.logger,
  });
  await registrar.start();
  return registrar;
}
