/**
 * The Leasehold client library: what a service imports to register itself, and what a caller
 * imports to discover and balance over instances. See README.md "Use the library".
 */
export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  createBalancedClient,
  type BalancedCallOptions,
  type BalancedClient,
  type BalancedClientOptions,
  type InstanceStats,
} from "./balancing/balanced-client.js";
export { POLICY_NAMES, isPolicyName, type PolicyName } from "./balancing/policies.js";
export type { BreakerOptions, BreakerState } from "./breaker/instance-breaker.js";
export {
  MembershipWatcher,
  type MembershipChange,
  type MembershipWatcherOptions,
} from "./discovery/membership-watcher.js";
export { staticMembership, type MembershipSnapshot, type MembershipSource } from "./discovery/membership.js";
export { LeaseholdError, type LeaseholdErrorCode } from "./errors.js";
export { ClientMetrics } from "./metrics/client-metrics.js";
export {
  Registrar,
  type InstanceRegistration,
  type RegistrarOptions,
  type RegistrarState,
} from "./registration/registrar.js";
export { connectRegistry } from "./registry-connection.js";
export { instrumentService } from "./server/grpc-server-metrics.js";
