/**
 * `registerLeasehold()`: the one call that lets any grpc-js client in the process use Leasehold
 * (DESIGN §5). It registers the `leasehold` resolver scheme and the `leasehold_<policy>` load
 * balancers with the application's own grpc-js (a peer dependency), and sets the defaults of
 * `leasehold:///SERVICE` channels.
 *
 * ```ts
 * registerLeasehold({ registry: "127.0.0.1:7100", policy: "weighted_round_robin" });
 * const calculator = new CalculatorServiceClient("leasehold:///calculator", credentials.createInsecure());
 * ```
 */
import type { ChannelOptions } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { setDefaultContext } from "./balancing/balancer-context.js";
import { registerLoadBalancers } from "./balancing/leasehold-load-balancer.js";
import { isPolicyName, type PolicyName } from "./balancing/policies.js";
import type { BreakerOptions } from "./breaker/instance-breaker.js";
import {
  DEFAULT_RETRY_POLICY,
  registerResolver,
  setResolverDefaults,
  type RetryPolicy,
} from "./discovery/leasehold-resolver.js";
import { LeaseholdError } from "./errors.js";
import type { ClientMetrics } from "./metrics/client-metrics.js";
import { parseRegistryAddresses } from "./registry-connection.js";
import type { ClientSecurity } from "./tls/tls-files.js";

/** Options of {@link registerLeasehold}; all optional. */
export interface LeaseholdOptions {
  /**
   * Registry address(es), `host:port[,host:port]`, for `leasehold:///SERVICE` targets. Without it,
   * targets must name one: `leasehold://HOST:PORT/SERVICE`.
   */
  readonly registry?: string;
  /**
   * Policy of channels that set no `grpc.service_config` and no `leasehold.policy` channel option.
   * Default `round_robin`. In a service config: `{"loadBalancingConfig":[{"leasehold_weighted_round_robin":{}}]}`.
   */
  readonly policy?: PolicyName;
  /** Retry policy put in the resolver's service config; `false` for none. Default {@link DEFAULT_RETRY_POLICY}. */
  readonly retryPolicy?: RetryPolicy | false;
  /** Caller-side metrics (DESIGN §7) of every channel; none recorded when absent. */
  readonly metrics?: ClientMetrics;
  /** Breaker tuning of every instance; see `DEFAULT_BREAKER_OPTIONS`. */
  readonly breaker?: BreakerOptions;
  /** At most this share of instances is ejected by open breakers, never all. Default 50. */
  readonly maxEjectionPercent?: number;
  /** Panic mode starts when more than this share of serving instances leaves at once. Default 50. */
  readonly panicThresholdPercent?: number;
  /** How long panic mode keeps instances that left, ms. Default 2 × the largest lease TTL seen. */
  readonly panicGraceMs?: number;
  /**
   * Floor of the stall threshold, ms: an instance with attempts in flight that answers none for
   * max(this, 3 × its p99) while the others answer 16 is skipped by picks (and the typed client
   * moves attempts parked on it). Default 75; `Infinity` turns it off.
   */
  readonly stallFloorMs?: number;
  /** pino logger for membership and breaker transitions. Default silent. */
  readonly logger?: Logger;
  /** grpc-js options of the channels to the registry (keepalive is already set). */
  readonly registryChannelOptions?: ChannelOptions;
  /**
   * TLS files and bearer token of the registry Watch of every `leasehold:///` channel (the
   * channel's own credentials reach the instances). Default plaintext, anonymous.
   */
  readonly registrySecurity?: ClientSecurity;
}

export { DEFAULT_RETRY_POLICY, type RetryPolicy };

/**
 * Registers the `leasehold` scheme and the `leasehold_<policy>` balancers with grpc-js, and sets
 * the defaults of channels created from now on. Call it again to change them; channels already
 * open keep theirs.
 *
 * @throws LeaseholdError `INVALID_ARGUMENT` for a malformed registry address or unknown policy.
 */
export function registerLeasehold(options: LeaseholdOptions = {}): void {
  const policy = options.policy ?? "round_robin";
  if (!isPolicyName(policy))
    throw new LeaseholdError("INVALID_ARGUMENT", `unknown policy "${String(policy)}"`);
  if (options.registry !== undefined) {
    try {
      parseRegistryAddresses(options.registry);
    } catch (error) {
      throw new LeaseholdError("INVALID_ARGUMENT", error instanceof Error ? error.message : String(error));
    }
  }
  setDefaultContext({
    metrics: options.metrics,
    breaker: options.breaker,
    logger: options.logger,
    maxEjectionPercent: options.maxEjectionPercent,
    panicThresholdPercent: options.panicThresholdPercent,
    panicGraceMs: options.panicGraceMs,
    stallFloorMs: options.stallFloorMs,
  });
  setResolverDefaults({
    registry: options.registry,
    policy,
    retryPolicy: options.retryPolicy === false ? undefined : (options.retryPolicy ?? DEFAULT_RETRY_POLICY),
    registryChannelOptions: options.registryChannelOptions ?? {},
    registrySecurity: options.registrySecurity,
  });
  registerResolver();
  registerLoadBalancers();
}
