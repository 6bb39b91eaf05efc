/**
 * The Leasehold client library: what a service imports to register itself, and what a caller
 * imports to discover and balance over instances. See README.md "Use the library".
 */
export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  createBalancedClient,
  LATENCY_SAMPLES,
  type BalancedCallOptions,
  type BalancerChange,
  type BalancedClient,
  type BalancedClientOptions,
  type BalancedMethod,
  type BalancedMethods,
  type InstanceStats,
  type RequestOf,
  type Requests,
  type ResponseOf,
} from "./balancing/balanced-client.js";
export type { RetryBudgetOptions } from "./balancing/retry-budget.js";
export { EXCLUDE_METADATA, loadBalancerName } from "./balancing/leasehold-load-balancer.js";
export { POLICY_NAMES, isPolicyName, type PolicyName } from "./balancing/policies.js";
export {
  DEFAULT_HASH_HEADER,
  type LeastLoadedConfig,
  type PolicyConfig,
  type RingHashConfig,
  type SlowStartConfig,
} from "./balancing/policy-config.js";
export type { OrcaWeightConfig, PeakEwmaConfig } from "./balancing/load-report.js";
export {
  DEFAULT_BREAKER_OPTIONS,
  type BreakerOptions,
  type BreakerState,
  type ResolvedBreakerOptions,
} from "./breaker/instance-breaker.js";
export { LEASEHOLD_SCHEME, POLICY_CONFIG_OPTION, POLICY_OPTION } from "./discovery/leasehold-resolver.js";
export {
  registerLeasehold,
  DEFAULT_RETRY_POLICY,
  type LeaseholdOptions,
  type RetryPolicy,
} from "./leasehold.js";
export {
  MembershipWatcher,
  type MembershipChange,
  type MembershipListener,
  type MembershipWatcherOptions,
} from "./discovery/membership-watcher.js";
export {
  getServicePage,
  listServiceInstances,
  type ListServiceInstancesOptions,
  type ServiceInstances,
} from "./discovery/list-service-instances.js";
export { staticMembership, type MembershipSnapshot, type MembershipSource } from "./discovery/membership.js";
export {
  LeaseholdError,
  type LeaseholdErrorCode,
  type LeaseholdErrorOptions,
  type StatusCodeName,
  metricCodeLabel,
} from "./errors.js";
export { ClientMetrics, type InstanceLoad } from "./metrics/client-metrics.js";
export { collectProcessMetrics } from "./metrics/process-metrics.js";
export { CALLER_SERVICE, startCallerEntry, type CallerEntryOptions } from "./registration/caller-entry.js";
export {
  Registrar,
  type InstanceRegistration,
  type RegistrarOptions,
  type RegistrarState,
} from "./registration/registrar.js";
export {
  followRedirect,
  REDIRECT_METADATA_KEY,
  type FollowRedirectOptions,
  type RedirectInterceptor,
} from "./redirect/follow-redirect.js";
export { connectRegistry, REGISTRY_CHANNEL_OPTIONS } from "./registry-connection.js";
export {
  bearerTokenInterceptor,
  channelCredentials,
  clientSecurityFromEnv,
  readTokenFile,
  serverCredentials,
  tlsFilesFromEnv,
  TlsConfigError,
  type ClientSecurity,
  type TlsFiles,
} from "./tls/tls-files.js";
export {
  Instance,
  InstanceStatus,
  RegistryServiceClient,
  type InstanceKey,
} from "../proto/gen/leasehold/registry/v1/registry.js";
/** The registry's wire types (ts-proto), for calls made with `RegistryServiceClient`. */
export * as registryV1 from "../proto/gen/leasehold/registry/v1/registry.js";
export { instrumentService } from "./server/grpc-server-metrics.js";
