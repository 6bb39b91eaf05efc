/**
 * The `leasehold` name-resolution scheme for grpc-js (DESIGN §5): a channel created with target
 * `leasehold:///SERVICE` (or `leasehold://REGISTRY_HOST:PORT/SERVICE`) gets the live membership of
 * SERVICE from a registry Watch stream, one endpoint per listed instance, plus the membership
 * itself as a resolver attribute so Leasehold's load balancers see weight, status and zone.
 *
 * One Watch stream per (registry, service) is shared by every channel of the process and closed
 * with the last of them. The resolver's service config selects a `leasehold_<policy>` balancer and,
 * by default, a grpc-js `retryPolicy` with `retryThrottling`; a channel that sets its own
 * `grpc.service_config` keeps it.
 */
import {
  experimental,
  Metadata,
  status as Status,
  type ChannelOptions,
  type ServiceConfig,
  type StatusObject,
} from "@grpc/grpc-js";
import { CONTEXT_OPTION, contextOf, type BalancerContext } from "../balancing/balancer-context.js";
import {
  loadBalancerName,
  MEMBERSHIP_ATTRIBUTE,
  METHOD_PICK_INFO,
  STALE_ATTRIBUTE,
} from "../balancing/leasehold-load-balancer.js";
import type { PolicyName } from "../balancing/policies.js";
import { isPolicyName } from "../balancing/policies.js";
import { resolvePolicyConfig } from "../balancing/policy-config.js";
import type { ClientMetrics } from "../metrics/client-metrics.js";
import { connectRegistry } from "../registry-connection.js";
import type { ClientSecurity } from "../tls/tls-files.js";
import type { MembershipSnapshot, MembershipSource } from "./membership.js";
import { MembershipWatcher } from "./membership-watcher.js";

type GrpcUri = experimental.GrpcUri;
type ResolverListener = experimental.ResolverListener;
type MethodConfig = ServiceConfig["methodConfig"][number];

/** A grpc-js `retryPolicy` (gRFC A6), as in a service config's `methodConfig`. */
export type RetryPolicy = NonNullable<ServiceConfig["methodConfig"][number]["retryPolicy"]>;

/** The URI scheme: `leasehold:///SERVICE`. */
export const LEASEHOLD_SCHEME = "leasehold";

/** Channel option: the policy of this channel (a {@link PolicyName}), instead of the default one. */
export const POLICY_OPTION = "leasehold.policy";

/**
 * Channel option: the policy's settings, a `PolicyConfig` object (slow start, zone, metadata
 * filter, ring), put into the `leasehold_<policy>` entry of the resolver's service config.
 */
export const POLICY_CONFIG_OPTION = "leasehold.policy_config";

/** Channel option set by the typed balanced client, which retries and counts calls itself. */
export const TYPED_CLIENT_OPTION = "leasehold.typed_client";

/**
 * Channel option: the id of the TLS files and token this channel's registry Watch uses (see
 * {@link registrySecurityId}); default the `registrySecurity` of `registerLeasehold()`.
 */
export const REGISTRY_SECURITY_OPTION = "leasehold.registry_security";

/** Channel option: the id of an in-process membership source (see {@link shareMembership}). */
export const MEMBERSHIP_SOURCE_OPTION = "leasehold.membership";

/**
 * The default retry policy of `leasehold:///` channels, the example policy of gRPC's service-config
 * docs (gRFC A6): up to 4 attempts on `UNAVAILABLE`, 100 ms then doubling to 1 s (jittered) between
 * them. Each attempt is picked anew. 4 attempts over ~0.7 s (not 3 over ~0.15 s) ride out an
 * instance that is exiting while callers still list it: in the chaos suite's compaction-away, under
 * a loaded CI run, a stock client failed 2 calls `read ECONNRESET` with 7 failed attempts under
 * the old policy (3 attempts, 50 ms then 100 ms apart); cause not traced further.
 */
export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  maxAttempts: 4,
  initialBackoff: "0.1s",
  maxBackoff: "1s",
  backoffMultiplier: 2,
  retryableStatusCodes: [Status.UNAVAILABLE],
});

/**
 * Retry throttling of gRFC A6, so retries cannot storm: each failed attempt takes a token, each
 * success gives 0.1 back, and retries stop while fewer than half of the 100 tokens are left. 100
 * (grpc's examples use 10) lets a burst of in-flight failures, as when instances are killed under
 * load, be retried before throttling starts.
 */
const RETRY_THROTTLING = Object.freeze({ maxTokens: 100, tokenRatio: 0.1 });

/** What the resolver uses for targets that do not say otherwise. */
export interface ResolverDefaults {
  /** Registry address(es) for `leasehold:///SERVICE`, `host:port[,host:port]`; none: an authority is required. */
  readonly registry: string | undefined;
  readonly policy: PolicyName;
  /** grpc-js retry policy for every method; `undefined`: no retries. */
  readonly retryPolicy: RetryPolicy | undefined;
  /** grpc-js options of the channels to the registry. */
  readonly registryChannelOptions: ChannelOptions;
  /** TLS and bearer token toward the registry; undefined = plaintext, anonymous. */
  readonly registrySecurity?: ClientSecurity | undefined;
}

let defaults: ResolverDefaults = Object.freeze({
  registry: undefined,
  policy: "round_robin",
  retryPolicy: DEFAULT_RETRY_POLICY,
  registryChannelOptions: {},
});

/** The defaults in force. */
export function resolverDefaults(): ResolverDefaults {
  return defaults;
}

/** Replaces the defaults of resolvers created from now on. */
export function setResolverDefaults(next: ResolverDefaults): void {
  defaults = Object.freeze({ ...next });
}

// ---- membership sources, shared by the channels of a process ----

interface SharedWatcher {
  readonly watcher: MembershipWatcher;
  readonly close: () => Promise<void>;
  refs: number;
}

const watchers = new Map<string, SharedWatcher>();
const securities = new Map<string, ClientSecurity>();
const securityIds = new WeakMap<ClientSecurity, string>();

/** The {@link REGISTRY_SECURITY_OPTION} value of `security` (one id per object, kept for the process). */
export function registrySecurityId(security: ClientSecurity): string {
  let id = securityIds.get(security);
  if (id === undefined) {
    id = `security-${securities.size + 1}`;
    securityIds.set(security, id);
    securities.set(id, security);
  }
  return id;
}
const sources = new Map<string, MembershipSource>();
let nextSourceId = 1;

/**
 * Makes a membership source (e.g. `staticMembership`) usable by channels: give them channel option
 * `{ [MEMBERSHIP_SOURCE_OPTION]: id }`. Returns the id and the function that forgets it.
 */
export function shareMembership(source: MembershipSource): { id: string; forget: () => void } {
  const id = `source-${nextSourceId++}`;
  sources.set(id, source);
  return { id, forget: () => sources.delete(id) };
}

const metricsIds = new WeakMap<ClientMetrics, number>();
let nextMetricsId = 1;

/**
 * The shared watcher of (registry, service, metrics registry), counted; the last release closes
 * it. Channels exporting to different metrics each get their own, so each exports membership.
 */
function acquireWatcher(
  registry: string,
  service: string,
  context: BalancerContext,
  securityId: string | undefined,
): { watcher: MembershipWatcher; release: () => void } {
  const metrics = context.metrics;
  let metricsId = 0;
  if (metrics !== undefined) {
    metricsId = metricsIds.get(metrics) ?? nextMetricsId++;
    metricsIds.set(metrics, metricsId);
  }
  const key = `${registry}\n${service}\n${metricsId}\n${securityId ?? ""}`;
  let shared = watchers.get(key);
  if (shared === undefined) {
    const security =
      securityId === undefined ? defaults.registrySecurity : (securities.get(securityId) ?? undefined);
    const client = connectRegistry(registry, defaults.registryChannelOptions, security);
    const watcher = new MembershipWatcher({ registry: client, service, metrics, logger: context.logger });
    watcher.start();
    shared = { watcher, close: () => watcher.close().finally(() => client.close()), refs: 0 };
    watchers.set(key, shared);
  }
  const entry = shared;
  entry.refs++;
  let isReleased = false;
  return {
    watcher: entry.watcher,
    release: () => {
      if (isReleased) return;
      isReleased = true;
      if (--entry.refs > 0) return;
      watchers.delete(key);
      void entry.close();
    },
  };
}

/** DNS-1123 label (DESIGN §2). */
const SERVICE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** Counts each call once, with the status the application saw (after grpc-js retries). */
class CallOutcomeFilter extends experimental.BaseFilter {
  readonly #metrics: ClientMetrics;
  readonly #labels: { service: string; method: string };

  constructor(metrics: ClientMetrics, labels: { service: string; method: string }) {
    super();
    this.#metrics = metrics;
    this.#labels = labels;
  }

  override receiveTrailers(status: StatusObject): StatusObject {
    this.#metrics.countCall(this.#labels.service, this.#labels.method, status.code);
    return status;
  }
}

/**
 * A config selector (gRFC A31) that applies `methodConfig` to every method, names the method for
 * the balancer's per-instance metrics, and, with `metrics`, counts calls apart from attempts.
 */
function configSelectorOf(
  service: string,
  methodConfig: readonly MethodConfig[],
  metrics: ClientMetrics | undefined,
): experimental.ConfigSelector {
  const cache = new Map<string, ReturnType<experimental.ConfigSelector["invoke"]>>();
  return {
    invoke(methodName) {
      let config = cache.get(methodName);
      if (config === undefined) {
        const method = methodName.slice(methodName.lastIndexOf("/") + 1);
        const labels = { service, method };
        config = {
          methodConfig: methodConfig[0] ?? { name: [] },
          pickInformation: { [METHOD_PICK_INFO]: method },
          status: Status.OK,
          dynamicFilterFactories:
            metrics === undefined ? [] : [{ createFilter: () => new CallOutcomeFilter(metrics, labels) }],
        };
        if (cache.size < 1000) cache.set(methodName, config);
      }
      return config;
    },
    unref() {
      cache.clear();
    },
  };
}

/**
 * grpc-js resolver of `leasehold://[REGISTRY]/SERVICE`. Constructed by grpc-js; registered by
 * `registerLeasehold()`.
 */
export class LeaseholdResolver implements experimental.Resolver {
  readonly #listener: ResolverListener;
  readonly #service: string;
  readonly #registry: string | undefined;
  readonly #sourceId: string | undefined;
  readonly #securityId: string | undefined;
  readonly #serviceConfig: ServiceConfig | null;
  readonly #configSelector: experimental.ConfigSelector | undefined;
  readonly #targetError: StatusObject | undefined;
  readonly #context: BalancerContext;
  #source: MembershipSource | undefined;
  #hasSnapshot: () => boolean = () => true;
  #isStale: () => boolean = () => false;
  #release: () => void = () => undefined;
  #unsubscribe: () => void = () => undefined;
  #lastError: StatusObject | undefined;
  #isScheduled = false;
  #isDestroyed = false;

  constructor(target: GrpcUri, listener: ResolverListener, options: ChannelOptions) {
    this.#listener = listener;
    this.#service = target.path.replace(/^\/+/, "");
    this.#registry =
      target.authority !== undefined && target.authority !== "" ? target.authority : defaults.registry;
    this.#context = contextOf(options[CONTEXT_OPTION]);
    const sourceId: unknown = options[MEMBERSHIP_SOURCE_OPTION];
    this.#sourceId = typeof sourceId === "string" ? sourceId : undefined;
    const securityId: unknown = options[REGISTRY_SECURITY_OPTION];
    this.#securityId = typeof securityId === "string" ? securityId : undefined;
    const policy: unknown = options[POLICY_OPTION] ?? defaults.policy;
    let configError: string | undefined;
    if (!SERVICE_NAME.test(this.#service)) {
      this.#targetError = unavailable(
        `leasehold: "${this.#service}" in target leasehold:///${this.#service} is not a service name (a DNS-1123 label)`,
      );
    } else if (typeof policy !== "string" || !isPolicyName(policy)) {
      this.#targetError = unavailable(
        `leasehold: unknown policy "${String(policy)}" in channel option ${POLICY_OPTION}`,
      );
    } else if ((configError = policyConfigError(policy, options[POLICY_CONFIG_OPTION])) !== undefined) {
      this.#targetError = unavailable(`leasehold: channel option ${POLICY_CONFIG_OPTION}: ${configError}`);
    } else if (this.#sourceId === undefined && this.#registry === undefined) {
      this.#targetError = unavailable(
        `leasehold: no registry for ${this.#service}: call registerLeasehold({ registry }) or use leasehold://HOST:PORT/${this.#service}`,
      );
    }
    if (options["grpc.service_config"] !== undefined || this.#targetError !== undefined) {
      // The channel's own service config (parsed and validated by grpc-js) stays in force.
      this.#serviceConfig = null;
      this.#configSelector = undefined;
    } else {
      const retryPolicy = defaults.retryPolicy;
      const methodConfig: MethodConfig[] = retryPolicy === undefined ? [] : [{ name: [{}], retryPolicy }];
      this.#serviceConfig = {
        loadBalancingConfig: [
          {
            [loadBalancerName(policy as PolicyName)]:
              (options[POLICY_CONFIG_OPTION] as object | undefined) ?? {},
          },
        ],
        methodConfig,
        ...(retryPolicy === undefined ? {} : { retryThrottling: RETRY_THROTTLING }),
      };
      // The typed client counts its own calls (each of its attempts is a grpc-js call).
      const countsCalls = options[TYPED_CLIENT_OPTION] === undefined;
      this.#configSelector = configSelectorOf(
        this.#service,
        methodConfig,
        countsCalls ? this.#context.metrics : undefined,
      );
    }
  }

  static getDefaultAuthority(target: GrpcUri): string {
    return target.path.replace(/^\/+/, "");
  }

  updateResolution(): void {
    if (this.#isDestroyed) this.#isDestroyed = false;
    if (this.#source === undefined && this.#targetError === undefined) this.#subscribe();
    this.#schedule();
  }

  destroy(): void {
    this.#isDestroyed = true;
    this.#unsubscribe();
    this.#release();
    this.#source = undefined;
    this.#unsubscribe = () => undefined;
    this.#release = () => undefined;
  }

  #subscribe(): void {
    if (this.#sourceId !== undefined) {
      const source = sources.get(this.#sourceId);
      if (source === undefined) {
        this.#lastError = unavailable(
          `leasehold: membership source ${this.#sourceId} is gone (its client was closed)`,
        );
        return;
      }
      this.#source = source;
      this.#hasSnapshot = () => source.hasSnapshot ?? true;
    } else {
      const registry = this.#registry as string;
      const { watcher, release } = acquireWatcher(registry, this.#service, this.#context, this.#securityId);
      this.#source = watcher;
      this.#release = release;
      this.#hasSnapshot = () => watcher.hasSnapshot;
      this.#isStale = () => watcher.isStale;
      const stopErrors = watcher.onStreamError((error) => {
        if (watcher.hasSnapshot) return; // the last membership stays in use (DESIGN §5)
        this.#lastError = unavailable(
          `leasehold: cannot watch service ${this.#service} at registry ${registry}: ${messageOf(error)}`,
        );
        this.#schedule();
      });
      const stopChanges = watcher.subscribe(() => this.#schedule());
      this.#unsubscribe = () => {
        stopErrors();
        stopChanges();
      };
      return;
    }
    this.#unsubscribe = this.#source.subscribe(() => this.#schedule());
  }

  /** Reports the latest state to grpc-js, never synchronously (the Resolver contract). */
  #schedule(): void {
    if (this.#isScheduled) return;
    this.#isScheduled = true;
    process.nextTick(() => {
      this.#isScheduled = false;
      if (!this.#isDestroyed) this.#report();
    });
  }

  #report(): void {
    const error = this.#targetError ?? (this.#hasSnapshot() ? undefined : this.#lastError);
    if (error !== undefined) {
      this.#listener({ ok: false, error }, {}, null, "");
      return;
    }
    const source = this.#source;
    if (source === undefined || !this.#hasSnapshot()) return; // calls wait for the first snapshot
    const snapshot: MembershipSnapshot = source.current();
    const endpoints: experimental.Endpoint[] = [];
    for (const instance of snapshot.instances) {
      const hostPort = experimental.splitHostPort(instance.address);
      if (hostPort?.port === undefined) continue;
      endpoints.push({ addresses: [{ host: hostPort.host, port: hostPort.port }] });
    }
    const attributes: Record<string, unknown> = {
      [MEMBERSHIP_ATTRIBUTE]: snapshot,
      [STALE_ATTRIBUTE]: this.#isStale(),
    };
    if (this.#configSelector !== undefined)
      attributes[experimental.CHANNEL_ARGS_CONFIG_SELECTOR_KEY] = this.#configSelector;
    this.#listener(
      { ok: true, value: endpoints },
      attributes,
      this.#serviceConfig === null ? null : { ok: true, value: this.#serviceConfig },
      `service ${this.#service} at revision ${snapshot.revision}`,
    );
  }
}

function unavailable(details: string): StatusObject {
  return { code: Status.UNAVAILABLE, details, metadata: new Metadata() };
}

function messageOf(error: unknown): string {
  if (error instanceof Error) return (error as { details?: string }).details ?? error.message;
  return String(error);
}

let isRegistered = false;

/** Registers the `leasehold` scheme with the application's grpc-js. Idempotent. */
export function registerResolver(): void {
  if (isRegistered) return;
  isRegistered = true;
  experimental.registerResolver(LEASEHOLD_SCHEME, LeaseholdResolver);
}

/** Why a policy config is refused, or undefined when it is valid. */
function policyConfigError(policy: string, config: unknown): string | undefined {
  try {
    resolvePolicyConfig(policy, config);
    return undefined;
  } catch (error) {
    return messageOf(error);
  }
}
