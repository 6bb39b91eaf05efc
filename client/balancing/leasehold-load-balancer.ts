/**
 * Leasehold's load-balancing policies as grpc-js load-balancer types (DESIGN §5), so every grpc-js
 * channel — a stock client created with a `leasehold:///SERVICE` target, or the typed balanced
 * client — balances through the same code. Modelled on grpc-js `load-balancer-round-robin.ts`:
 * one `LeafLoadBalancer` (pick_first over one address) per listed instance, an immutable picker
 * rebuilt on every membership, connectivity or breaker change, and `pick()` synchronous.
 *
 * Per instance it adds what grpc-js lacks: the registered weight, status (a DRAINING instance gets
 * no new calls) and zone, taken from the resolver's membership attribute; an opossum breaker fed
 * from call outcomes through the pick's `onCallStarted` / `onCallEnded` hooks; and the DESIGN §7
 * per-instance metrics. An instance whose subchannel is not READY is never picked.
 *
 * Registered names are `leasehold_` + the policy (`leasehold_weighted_round_robin`, ...), so
 * grpc-js's own `round_robin` and `weighted_round_robin` (ORCA) keep working for other channels.
 */
import {
  connectivityState as ConnectivityState,
  experimental,
  Metadata,
  status as Status,
  type ChannelOptions,
  type StatusObject,
} from "@grpc/grpc-js";
import { Instance, InstanceStatus } from "../../proto/gen/leasehold/registry/v1/registry.js";
import {
  BREAKER_STATE_VALUE,
  type CallOutcome,
  InstanceBreaker,
  isEndpointFault,
} from "../breaker/instance-breaker.js";
import type { MembershipSnapshot } from "../discovery/membership.js";
import { statusCodeName } from "../errors.js";
import type { InstanceLoad } from "../metrics/client-metrics.js";
import { quantileOf } from "../metrics/quantile.js";
import {
  AttemptTag,
  CONTEXT_OPTION,
  contextOf,
  LATENCY_SAMPLES,
  type BalancerContext,
  type BalancerView,
  type InstanceStats,
} from "./balancer-context.js";
import { MassRemovalDetector } from "./mass-removal-detector.js";
import { InstanceProgress, STALL_MIN_ANSWERS, stallThresholdMs } from "./stall-detector.js";
import {
  createPicker,
  matchesMetadata,
  POLICY_NAMES,
  type Pickable,
  type Picker,
  type PolicyName,
} from "./policies.js";
import {
  resolvePolicyConfig,
  slowStartFactor,
  type PolicyConfig,
  type ResolvedPolicyConfig,
} from "./policy-config.js";
import { InstanceLoadState, LOAD_REPORT_TRAILER, PeakEwma } from "./load-report.js";
import { hashKey } from "./ring-hash-picker.js";

type LoadBalancer = experimental.LoadBalancer;
type ChannelControlHelper = experimental.ChannelControlHelper;
type Endpoint = experimental.Endpoint;
type PickArgs = experimental.PickArgs;
type PickResult = experimental.PickResult;
type GrpcPicker = experimental.Picker;

/**
 * Resolver attribute carrying the {@link MembershipSnapshot} behind an endpoint list. Its prefix
 * is grpc-js's `SUBCHANNEL_ARGS_EXCLUDE_KEY_PREFIX`, so it never reaches subchannel arguments.
 */
export const MEMBERSHIP_ATTRIBUTE = "grpc.internal.no_subchannel.leasehold.membership";

/** Resolver attribute: true while the membership may be out of date (the registry stream is down or stale). */
export const STALE_ATTRIBUTE = "grpc.internal.no_subchannel.leasehold.stale";

/** Pick information (from the resolver's config selector) naming the called method. */
export const METHOD_PICK_INFO = "leasehold.method";

/**
 * Request metadata listing `host:port` addresses this call must not be picked onto (the typed
 * client's retry on a different instance). The picker removes it, so it is never sent.
 */
export const EXCLUDE_METADATA = "leasehold-exclude";

/** The grpc-js load-balancer type name of a policy: `leasehold_round_robin`, ... */
export function loadBalancerName(policy: PolicyName): string {
  return `leasehold_${policy}`;
}

/** Latency samples between two refreshes of an instance's p99 (a selection over the window). */
const P99_REFRESH_SAMPLES = 256;

/** How long a half-open breaker's trial stays reserved between the pick and the call's start. */
const TRIAL_RESERVATION_MS = 1000;

/** One listed instance: its leaf balancer (subchannel), breaker, load and latency samples. */
class Child implements Pickable {
  instance: Instance;
  readonly leaf: experimental.LeafLoadBalancer;
  readonly breaker: InstanceBreaker;
  outstanding = 0;
  calls = 0;
  errors = 0;
  isRemoved = false;
  lastError: string | null = null;
  /** Breaker open and within the max-ejection cap: not picked. */
  isEjected = false;
  /** When the breaker last opened (ms), to honour the earliest ejections first. */
  openedAtMs = 0;
  /** Set while panic mode keeps this instance after it left the membership: until when (ms). */
  retainedUntilMs: number | undefined;
  #trialPickedAtMs = Number.NEGATIVE_INFINITY;
  readonly #latenciesMs = new Float64Array(LATENCY_SAMPLES);
  #latencyCount = 0;
  /** Answers and attempts in flight over time, for stall detection. */
  readonly progress = new InstanceProgress();
  /** p99 latency, ms, refreshed every {@link P99_REFRESH_SAMPLES} samples (the stall threshold uses it). */
  #p99Ms = 0;
  /**
   * Slow start: when this instance first became READY after joining (ms); -Infinity for the
   * instances of the first membership a balancer applies (a restarting caller ramps up no one).
   */
  slowStartFromMs: number | undefined;
  /** Slow start's share of the registered weight now, 0..1 (1 without slow start). */
  weightFactor = 1;
  /** Its last ORCA load report (from call trailers) and A58 weight state. */
  readonly load = new InstanceLoadState();
  /** Peak EWMA of its latency, observed under `peak_ewma` only. */
  readonly rtt = new PeakEwma();

  constructor(instance: Instance, leaf: experimental.LeafLoadBalancer, breaker: InstanceBreaker) {
    this.instance = instance;
    this.leaf = leaf;
    this.breaker = breaker;
  }

  get instanceId(): string {
    return this.instance.instanceId;
  }
  /** The effective weight: registered weight × slow start's factor. */
  get weight(): number {
    return this.instance.weight * this.weightFactor;
  }
  get zone(): string {
    return this.instance.zone;
  }
  get metadata(): Readonly<Record<string, string>> {
    return this.instance.metadata;
  }
  get isServing(): boolean {
    return this.instance.status !== InstanceStatus.INSTANCE_STATUS_DRAINING;
  }
  get isBreakerAdmitting(): boolean {
    return !this.isEjected;
  }
  get isReady(): boolean {
    return this.leaf.getConnectivityState() === ConnectivityState.READY;
  }

  /**
   * False when a half-open breaker's one trial is already taken (in flight, or picked and about to
   * start), so the picker moves on to another instance.
   */
  admitsCall(nowMs: number): boolean {
    if (this.breaker.state !== "half-open") return true;
    if (!this.breaker.isCallPermitted || nowMs - this.#trialPickedAtMs < TRIAL_RESERVATION_MS) return false;
    this.#trialPickedAtMs = nowMs;
    return true;
  }

  recordLatency(ms: number): void {
    this.#latenciesMs[this.#latencyCount % LATENCY_SAMPLES] = ms;
    this.#latencyCount++;
    if (this.#latencyCount % P99_REFRESH_SAMPLES === 0)
      this.#p99Ms = quantileOf(this.#latenciesMs, this.#latencyCount, 0.99);
  }

  /** True while this instance is stalled (see stall-detector.ts). */
  isStalled(nowMs: number, answers: number, floorMs: number): boolean {
    return this.progress.isStalled(this.outstanding, nowMs, answers, stallThresholdMs(floorMs, this.#p99Ms));
  }

  stats(): InstanceStats {
    const sorted = this.#latenciesMs.slice(0, Math.min(this.#latencyCount, LATENCY_SAMPLES)).sort();
    const quantile = (q: number): number =>
      sorted.length === 0 ? 0 : (sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0);
    return {
      service: this.instance.service,
      instanceId: this.instanceId,
      address: this.instance.address,
      weight: this.instance.weight,
      effectiveWeight: this.weight,
      status: this.isServing ? "SERVING" : "DRAINING",
      zone: this.instance.zone,
      calls: this.calls,
      errors: this.errors,
      p50Ms: quantile(0.5),
      p99Ms: quantile(0.99),
      breaker: this.breaker.state,
      outstanding: this.outstanding,
      connectivity: ConnectivityState[this.leaf.getConnectivityState()] ?? "UNKNOWN",
      ejected: this.isEjected,
      retained: this.retainedUntilMs !== undefined,
    };
  }
}

/** The picker handed to the channel: a snapshot of the policy's picker over the eligible children. */
class LeaseholdPicker implements GrpcPicker {
  readonly #balancer: LeaseholdLoadBalancer;
  readonly #picker: Picker<Child>;

  constructor(balancer: LeaseholdLoadBalancer, picker: Picker<Child>) {
    this.#balancer = balancer;
    this.#picker = picker;
  }

  pick(args: PickArgs): PickResult {
    let exclude: Set<string> | undefined;
    const tag = args.metadata.getOptions();
    const isTagged = tag instanceof AttemptTag;
    if (!isTagged || tag.isExcluding) {
      const excluded = args.metadata.get(EXCLUDE_METADATA);
      if (excluded.length > 0) {
        args.metadata.remove(EXCLUDE_METADATA); // the channel passes a per-attempt clone
        exclude = this.#balancer.instanceIdsAt(excluded);
      }
    }
    const nowMs = Date.now();
    const balancer = this.#balancer;
    const hash = balancer.requestHash(args.metadata);
    const isRetry = exclude !== undefined;
    // Instances skipped so far, in pick order, that the fallback takes one by one: stalled ones,
    // and on a retry half-open ones (a retry is no trial: it must not fail on a suspect instance
    // while a closed one is left; first attempts serve as the trials).
    let deferred: Child[] | undefined;
    let fallbacks = 0;
    for (let tries = 0; tries <= 2 * this.#picker.instances.length; tries++) {
      let child = this.#picker.pick(exclude, hash);
      if (child === undefined) {
        // Only deferred instances left: better one of them than none (they may answer yet), and
        // the next one when a breaker refuses it (a half-open trial in flight).
        child = deferred?.[fallbacks++];
        if (child === undefined) break;
      } else if (balancer.isStalled(child, nowMs) || (isRetry && child.breaker.state === "half-open")) {
        (deferred ??= []).push(child);
        (exclude ??= new Set()).add(child.instanceId);
        continue;
      }
      if (!child.admitsCall(nowMs)) {
        (exclude ??= new Set()).add(child.instanceId);
        this.#balancer.context.metrics?.breakerRejections.inc({
          service: child.instance.service,
          instance_id: child.instanceId,
        });
        continue;
      }
      const result = child.leaf.getPicker().pick(args);
      if (result.pickResultType !== experimental.PickResultType.COMPLETE) return result;
      const method = args.extraPickInfo[METHOD_PICK_INFO] ?? "";
      // grpc-js marks its retry attempts (gRFC A6); the typed client counts its own.
      const metrics = this.#balancer.context.metrics;
      if (metrics !== undefined && args.metadata.get("grpc-previous-rpc-attempts").length > 0)
        metrics.retries.inc({ service: child.instance.service, method });
      if (isTagged) tag.address = child.instance.address;
      return new TrackedCall(this.#balancer, child, method, result.subchannel);
    }
    return {
      pickResultType: experimental.PickResultType.TRANSIENT_FAILURE,
      subchannel: null,
      status: this.#balancer.noInstanceStatus(exclude),
      onCallStarted: null,
      onCallEnded: null,
    };
  }
}

/**
 * One call on one child, from start to end: load, breaker outcome, stats and metrics. It is the
 * pick result handed to grpc-js. grpc-js calls `onCallEnded` with its own `this`, and a parent
 * balancer may copy the result's fields, so both hooks are own arrow properties, not methods.
 */
class TrackedCall implements PickResult {
  readonly pickResultType = experimental.PickResultType.COMPLETE;
  readonly subchannel: experimental.SubchannelInterface | null;
  readonly status = null;
  readonly onCallStarted = (): void => this.started();
  readonly onCallEnded = (code: Status, details: string, trailers: Metadata): void =>
    this.ended(code, details, trailers);
  readonly #balancer: LeaseholdLoadBalancer;
  readonly #child: Child;
  readonly #method: string;
  /** When it started: epoch ms, and performance.now() for its latency. */
  #startedMs = 0;
  #startedAt = 0;
  /** The balancer's answer count when the call started (see {@link ended}). */
  #answersAtStart = 0;
  /** Whether other instances had attempts in flight at the start (or at the end). */
  #othersInFlight = false;
  /** How the child's breaker counts it: what its `callStarted` returned (false: not counted). */
  #counted: CallOutcome | boolean = false;

  constructor(
    balancer: LeaseholdLoadBalancer,
    child: Child,
    method: string,
    subchannel: experimental.SubchannelInterface | null,
  ) {
    this.#balancer = balancer;
    this.#child = child;
    this.#method = method;
    this.subchannel = subchannel;
  }

  started(): void {
    const nowMs = Date.now();
    this.#child.progress.started(this.#child.outstanding, nowMs, this.#balancer.answers);
    this.#startedMs = nowMs;
    this.#othersInFlight = this.#balancer.inFlight > this.#child.outstanding;
    this.#child.outstanding++;
    this.#balancer.inFlight++;
    this.#startedAt = performance.now();
    this.#answersAtStart = this.#balancer.answers;
    this.#counted = this.#child.breaker.callStarted();
  }

  ended(code: Status, details: string, trailers: Metadata | undefined): void {
    const child = this.#child;
    child.outstanding--;
    this.#balancer.inFlight--;
    const name = statusCodeName(code);
    const ms = performance.now() - this.#startedAt;
    // One clock read: the end on the epoch clock is the start plus the monotonic latency.
    const nowMs = this.#startedMs + ms;
    // ORCA (gRFC A51): the instance's load report, on every call it answers.
    const report = trailers?.get(LOAD_REPORT_TRAILER)[0];
    if (report instanceof Buffer) child.load.receive(report, nowMs);
    const balancer = this.#balancer;
    if (code !== Status.CANCELLED && balancer.policy === "peak_ewma")
      child.rtt.observe(ms, nowMs, balancer.policyConfig.peakEwma.decayMs);
    if (code !== Status.CANCELLED && code !== Status.DEADLINE_EXCEEDED) {
      // The instance itself answered. Only answers that are no endpoint fault count as others'
      // progress: three instances failing fast must not make the one healthy, busy one "stalled".
      if (name === "OK" || !isEndpointFault(name)) this.#balancer.answers++;
      child.progress.answered(nowMs, this.#balancer.answers);
    } else child.progress.unanswered(child.outstanding, nowMs);
    // A deadline passed while other instances had attempts in flight and fewer than
    // STALL_MIN_ANSWERS answers came (the stall detector's rule): every instance, or this caller,
    // stalled (a GC pause, a starved CPU), so it is no evidence against this one and its breaker
    // counts it as a cancelled call. A shared stall must not open every breaker; a lone attempt's
    // timeout (nothing else in flight) still counts.
    // Never for a half-open trial: a cancelled call counts as a success for opossum, which would
    // close the breaker of an instance that did not answer.
    const isSharedStall =
      code === Status.DEADLINE_EXCEEDED &&
      child.breaker.state !== "half-open" &&
      (this.#othersInFlight || this.#balancer.inFlight > child.outstanding) &&
      this.#balancer.answers - this.#answersAtStart < STALL_MIN_ANSWERS;
    const outcome = isSharedStall ? "CANCELLED" : name;
    child.breaker.callEnded(this.#counted, outcome, details);
    if (child.isRemoved) return; // left meanwhile: its series are gone and must stay gone
    child.calls++;
    if (name !== "OK") child.errors++;
    child.recordLatency(ms);
    this.#balancer.context.metrics?.recordCall(
      child.instance.service,
      child.instanceId,
      this.#method,
      name,
      ms / 1000,
    );
  }
}

/** The parsed `loadBalancingConfig` entry of one policy: its {@link PolicyConfig}. */
export class LeaseholdLoadBalancingConfig implements experimental.TypedLoadBalancingConfig {
  readonly policy: PolicyName;
  readonly json: PolicyConfig;
  readonly config: ResolvedPolicyConfig;

  /** @throws LeaseholdError `INVALID_ARGUMENT` for a bad config (grpc-js reports it as a bad service config). */
  constructor(policy: PolicyName, json: PolicyConfig = {}) {
    this.policy = policy;
    this.config = resolvePolicyConfig(policy, json);
    this.json = json ?? {};
  }

  getLoadBalancerName(): string {
    return loadBalancerName(this.policy);
  }

  toJsonObject(): object {
    return { [this.getLoadBalancerName()]: this.json };
  }
}

/** Derived from the membership or, without one (a non-Leasehold target), from the endpoint. */
function instancesOf(endpoints: readonly Endpoint[], membership: MembershipSnapshot | undefined): Instance[] {
  if (membership !== undefined) return [...membership.instances];
  return endpoints.map((endpoint) => {
    const address = experimental.endpointToString(endpoint);
    return Instance.fromPartial({ instanceId: address, address, weight: 1 });
  });
}

/** A `host:port` instance address as a grpc-js endpoint. */
function endpointOf(address: string): Endpoint | undefined {
  const hostPort = experimental.splitHostPort(address);
  if (hostPort === null || hostPort.port === undefined) return undefined;
  return { addresses: [{ host: hostPort.host, port: hostPort.port }] };
}

/** Channel options for the leaf balancers: without resolver attributes (objects, per update). */
function childOptionsOf(options: ChannelOptions): ChannelOptions {
  return Object.fromEntries(Object.entries(options).filter(([key]) => !key.startsWith("grpc.internal.")));
}

/**
 * The load balancer of one channel. Created by grpc-js through {@link registerLoadBalancers};
 * not constructed directly.
 */
export class LeaseholdLoadBalancer implements LoadBalancer, BalancerView {
  readonly #helper: ChannelControlHelper;
  readonly #children = new Map<string, Child>();
  /** Children in membership order (sorted by instance id), the policy picker's input. */
  #ordered: Child[] = [];
  #policy: PolicyName = "round_robin";
  #config: ResolvedPolicyConfig = resolvePolicyConfig("round_robin", {});
  /** False until the first membership is applied (its instances skip slow start). */
  #hasMembership = false;
  #slowStartTimer: NodeJS.Timeout | undefined;
  /** Rebuilds the picker from fresh load reports (`least_loaded`, `weighted_round_robin` with `orca`). */
  #loadTimer: NodeJS.Timeout | undefined;
  #context: BalancerContext | undefined;
  #policyPicker: Picker<Child> | undefined;
  #service = "";
  #revision = "";
  #resolutionNote = "";
  #isUpdating = false;
  #isDestroyed = false;
  #isStale = false;
  /** The panic trigger; made with the context's threshold on the first update. */
  #departuresOf: MassRemovalDetector | undefined;
  /** Largest lease TTL seen among instances, s (the panic grace is 2 × this). */
  #maxTtlSeconds = 0;
  #panicTimer: NodeJS.Timeout | undefined;
  /** Set once this balancer reports its outstanding counts to the metrics. */
  #removeLoadSource: (() => void) | undefined;
  /** Attempts answered with no endpoint fault (OK or a caller fault), all instances, for stall detection. */
  answers = 0;
  /** Attempts in flight on all instances (the sum of their `outstanding`). */
  inFlight = 0;

  constructor(helper: ChannelControlHelper) {
    this.#helper = helper;
  }

  get context(): BalancerContext {
    return (this.#context ??= contextOf(undefined));
  }

  /** The policy of the channel's config. */
  get policy(): PolicyName {
    return this.#policy;
  }

  /** The policy's resolved settings. */
  get policyConfig(): ResolvedPolicyConfig {
    return this.#config;
  }

  get membershipRevision(): string {
    return this.#revision;
  }

  isBreakerOpenAt(address: string): boolean {
    for (const child of this.#ordered)
      if (child.instance.address === address) return child.breaker.state === "open";
    return false;
  }

  /** True when the instance at this `host:port` is stalled: in flight, silent, while others answer. */
  isStalledAt(address: string): boolean {
    const nowMs = Date.now();
    for (const child of this.#ordered)
      if (child.instance.address === address) return this.isStalled(child, nowMs);
    return false;
  }

  isStalled(child: Child, nowMs: number): boolean {
    return child.isStalled(nowMs, this.answers, this.context.stallFloorMs);
  }

  get pickableCount(): number {
    return this.#policyPicker?.instances.length ?? 0;
  }

  /** True while panic mode keeps instances that left the membership. */
  get isPanicking(): boolean {
    for (const child of this.#ordered) if (child.retainedUntilMs !== undefined) return true;
    return false;
  }

  updateAddressList(
    endpointList: experimental.StatusOr<Endpoint[]>,
    lbConfig: experimental.TypedLoadBalancingConfig,
    options: ChannelOptions,
    resolutionNote: string,
  ): boolean {
    if (!(lbConfig instanceof LeaseholdLoadBalancingConfig) || this.#isDestroyed) return false;
    this.#policy = lbConfig.policy;
    this.#config = lbConfig.config;
    this.#resolutionNote = resolutionNote;
    const context = contextOf(options[CONTEXT_OPTION]);
    if (context !== this.#context) {
      this.#context?.detach(this);
      this.#context = context;
      context.attach(this);
    }
    if (!endpointList.ok) {
      // Keep serving the last membership: a resolver error never empties the pick set.
      if (this.#children.size === 0) {
        this.#helper.updateState(
          ConnectivityState.TRANSIENT_FAILURE,
          new experimental.UnavailablePicker(endpointList.error),
          endpointList.error.details,
        );
      }
      return true;
    }
    const membership = options[MEMBERSHIP_ATTRIBUTE] as MembershipSnapshot | undefined;
    this.#service = membership?.service ?? this.#service;
    this.#revision = membership?.revision ?? this.#revision;
    this.#isStale = options[STALE_ATTRIBUTE] === true;
    this.#apply(instancesOf(endpointList.value, membership), childOptionsOf(options));
    return true;
  }

  exitIdle(): void {
    // grpc-js calls this on every call (`InternalChannel.getConfig`): the array, not a Map iterator.
    for (const child of this.#ordered) {
      if (child.leaf.getConnectivityState() === ConnectivityState.IDLE) child.leaf.exitIdle();
    }
  }

  /** Outstanding attempts, reported utilization and effective weight per listed instance, for the metrics. */
  *#loads(): Iterable<InstanceLoad> {
    const nowMs = Date.now();
    const weights = this.#policyPicker?.effectiveWeights;
    const eligible = new Set(this.#policyPicker?.instances);
    for (const child of this.#children.values())
      yield {
        service: child.instance.service,
        instanceId: child.instanceId,
        outstanding: child.outstanding,
        utilization: child.load.freshUtilization(nowMs, this.#config.leastLoaded.maxReportAgeMs),
        effectiveWeight: eligible.has(child) ? (weights?.get(child.instanceId) ?? child.weight) : 0,
      };
  }

  resetBackoff(): void {
    // Each leaf's pick_first owns its reconnect backoff.
  }

  destroy(): void {
    if (this.#isDestroyed) return;
    this.#isDestroyed = true;
    clearTimeout(this.#panicTimer);
    clearTimeout(this.#slowStartTimer);
    clearTimeout(this.#loadTimer);
    this.#removeLoadSource?.();
    const removed = [...this.#children.values()].map((child) => this.#retire(child));
    this.#children.clear();
    this.#ordered = [];
    this.#context?.detach(this);
    this.#context?.changed({ removed });
  }

  getTypeName(): string {
    return loadBalancerName(this.#policy);
  }

  stats(): InstanceStats[] {
    return this.#ordered.map((child) => child.stats());
  }

  /** Instance ids listed at these `host:port` addresses (the typed client's tried instances). */
  instanceIdsAt(addresses: readonly (string | Buffer)[]): Set<string> {
    const wanted = new Set(addresses.flatMap((value) => String(value).split(",")));
    const ids = new Set<string>();
    for (const child of this.#ordered) if (wanted.has(child.instance.address)) ids.add(child.instanceId);
    return ids;
  }

  /** The request's `ring_hash` hash: xxHash64 of its hash header's values (joined by ","); else undefined. */
  requestHash(metadata: Metadata): bigint | undefined {
    if (this.#policy !== "ring_hash") return undefined;
    const values = metadata.get(this.#config.ringHash.hashHeader);
    return values.length === 0 ? undefined : hashKey(values.map(String).join(","));
  }

  /** The UNAVAILABLE status of a pick that found nothing, saying why each instance was skipped. */
  noInstanceStatus(exclude: ReadonlySet<string> | undefined): StatusObject {
    const filter = this.#config.metadataFilter;
    const counts = {
      "not matching the metadata filter": 0,
      draining: 0,
      "weight 0": 0,
      "breaker open": 0,
      "not connected": 0,
      "already tried or half-open with a trial in flight": 0,
    };
    for (const child of this.#ordered) {
      if (filter !== undefined && !matchesMetadata(child, filter))
        counts["not matching the metadata filter"]++;
      else if (!child.isServing) counts.draining++;
      else if (child.weight <= 0) counts["weight 0"]++;
      else if (!child.isBreakerAdmitting) counts["breaker open"]++;
      else if (!child.isReady) counts["not connected"]++;
      else if (exclude?.has(child.instanceId) === true)
        counts["already tried or half-open with a trial in flight"]++;
    }
    const reasons = Object.entries(counts)
      .filter(([, n]) => n > 0)
      .map(([reason, n]) => `${n} ${reason}`);
    const service = this.#service === "" ? "" : ` of service ${this.#service}`;
    const listed = `${this.#ordered.length} listed${reasons.length > 0 ? `: ${reasons.join(", ")}` : ""}`;
    const lastError = this.#ordered.find((child) => child.lastError !== null)?.lastError;
    return {
      code: Status.UNAVAILABLE,
      details: `no available instance${service} (${listed})${
        counts["not connected"] > 0 && lastError != null ? `; last connection error: ${lastError}` : ""
      }`,
      metadata: new Metadata(),
    };
  }

  #apply(instances: readonly Instance[], childOptions: ChannelOptions): void {
    const context = this.context;
    const nowMs = Date.now();
    const listed = new Set<string>();
    const ordered: Child[] = [];
    const removed: InstanceStats[] = [];
    const left: Child[] = [];
    this.#isUpdating = true;
    try {
      for (const instance of instances) {
        if (listed.has(instance.instanceId)) continue;
        const ttlSeconds = Number(instance.ttlSeconds);
        if (ttlSeconds > this.#maxTtlSeconds) this.#maxTtlSeconds = ttlSeconds;
        let child = this.#children.get(instance.instanceId);
        if (child !== undefined && child.instance.address !== instance.address) {
          context.logger.info(
            { instanceId: instance.instanceId, address: instance.address },
            "instance moved; reconnecting",
          );
          removed.push(this.#retire(child));
          this.#children.delete(instance.instanceId);
          child = undefined;
        }
        if (child === undefined) {
          child = this.#open(instance, childOptions);
          if (child === undefined) continue;
          if (!this.#hasMembership) child.slowStartFromMs = Number.NEGATIVE_INFINITY;
          this.#children.set(instance.instanceId, child);
        } else {
          child.instance = instance; // weight, status, zone, metadata: no reconnect
          child.retainedUntilMs = undefined; // back in the membership
        }
        listed.add(instance.instanceId);
        ordered.push(child);
      }
      for (const [instanceId, child] of this.#children) {
        if (!listed.has(instanceId)) left.push(child);
      }
      const servingListed = ordered.filter((child) => child.isServing).length;
      for (const child of this.#retainOrRetire(left, servingListed, nowMs)) {
        this.#children.delete(child.instanceId);
        removed.push(this.#retire(child));
      }
      for (const child of left) if (child.retainedUntilMs !== undefined) ordered.push(child);
      this.#ordered = ordered.sort((a, b) =>
        a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : 0,
      );
    } finally {
      this.#isUpdating = false;
    }
    this.#hasMembership = true;
    this.#update({ removed });
  }

  /**
   * Caller-side self-preservation (Eureka's self-preservation, Envoy's panic threshold): when more
   * than `panicThresholdPercent` of the serving instances left within 5 s, or while
   * the membership is stale, instances that leave are kept for a grace period (default 2 × the
   * largest TTL seen) and still picked if their subchannel is READY and their breaker admits them;
   * the truly dead fail to connect and are skipped. Membership stays the truth: a kept instance
   * that re-appears is simply listed again, and at the end of the grace every kept one goes.
   *
   * @returns the children that leave for good now.
   */
  #retainOrRetire(left: readonly Child[], servingListed: number, nowMs: number): Child[] {
    const context = this.context;
    this.#departuresOf ??= new MassRemovalDetector({ thresholdPercent: context.panicThresholdPercent });
    const leaving = left.filter((child) => child.retainedUntilMs === undefined);
    const servingLeaving = leaving.filter((child) => child.isServing).length;
    const retainedCount = left.length - leaving.length;
    const isMassRemoval = this.#departuresOf.record(servingLeaving, servingListed + retainedCount);
    const isPanicking = retainedCount > 0;
    if (leaving.length === 0 || !(isMassRemoval || this.#isStale || isPanicking)) return leaving;
    const graceMs = context.panicGraceMs ?? 2_000 * (this.#maxTtlSeconds > 0 ? this.#maxTtlSeconds : 10);
    for (const child of leaving) child.retainedUntilMs = nowMs + graceMs;
    const service = this.#service;
    if (!isPanicking) {
      context.logger.warn(
        { service, left: leaving.length, listed: servingListed, stale: this.#isStale, graceMs },
        "panic mode: instances left at once; still routing over them while they answer",
      );
      context.metrics?.panicMode.set({ service }, 1);
    }
    this.#armPanicTimer();
    return [];
  }

  #armPanicTimer(): void {
    clearTimeout(this.#panicTimer);
    let next = Number.POSITIVE_INFINITY;
    for (const child of this.#children.values())
      if (child.retainedUntilMs !== undefined) next = Math.min(next, child.retainedUntilMs);
    if (next === Number.POSITIVE_INFINITY) {
      this.context.metrics?.panicMode.set({ service: this.#service }, 0);
      return;
    }
    this.#panicTimer = setTimeout(() => this.#endGrace(), Math.max(0, next - Date.now()));
    this.#panicTimer.unref(); // the channel's own work keeps the process alive, not this bookkeeping
  }

  #endGrace(): void {
    if (this.#isDestroyed) return;
    const nowMs = Date.now();
    const removed: InstanceStats[] = [];
    for (const child of [...this.#children.values()]) {
      if (child.retainedUntilMs === undefined || child.retainedUntilMs > nowMs) continue;
      this.#children.delete(child.instanceId);
      removed.push(this.#retire(child));
    }
    this.#ordered = this.#ordered.filter((child) => !child.isRemoved);
    if (!this.isPanicking)
      this.context.logger.info({ service: this.#service, removed: removed.length }, "panic mode over");
    this.#armPanicTimer();
    this.#update({ removed });
  }

  #open(instance: Instance, childOptions: ChannelOptions): Child | undefined {
    const context = this.context;
    const endpoint = endpointOf(instance.address);
    if (endpoint === undefined) {
      context.logger.warn({ instanceId: instance.instanceId, address: instance.address }, "unusable address");
      return undefined;
    }
    const { service, instanceId } = instance;
    const metrics = context.metrics;
    const breaker = new InstanceBreaker(instanceId, context.breaker, (state, previous) => {
      if (child.isRemoved) return;
      context.logger[state === "open" ? "warn" : "info"](
        { service, instanceId, state, previous },
        `breaker ${state}`,
      );
      metrics?.breakerState.set({ service, instance_id: instanceId }, BREAKER_STATE_VALUE[state]);
      if (state === "open") child.openedAtMs = Date.now();
      this.#update({ removed: [] });
    });
    const helper = experimental.createChildChannelControlHelper(this.#helper, {
      updateState: (state, _picker, errorMessage) => {
        if (errorMessage !== null) child.lastError = errorMessage;
        if (state === ConnectivityState.READY) child.load.resetBlackout(); // A58: (re)connected
        if (!this.#isUpdating) this.#update({ removed: [] });
      },
    });
    const leaf = new experimental.LeafLoadBalancer(endpoint, helper, childOptions, this.#resolutionNote);
    const child: Child = new Child(instance, leaf, breaker);
    metrics?.breakerState.set({ service, instance_id: instanceId }, BREAKER_STATE_VALUE.closed);
    metrics?.breakerRejections.inc({ service, instance_id: instanceId }, 0); // the series exists from the start
    metrics?.panicMode.inc({ service }, 0); // likewise, without touching a value another channel set
    this.#removeLoadSource ??= metrics?.addLoadSource(() => this.#loads());
    leaf.startConnecting();
    return child;
  }

  #retire(child: Child): InstanceStats {
    const stats = child.stats();
    child.isRemoved = true;
    child.breaker.shutdown();
    child.leaf.destroy();
    this.context.metrics?.forgetInstance(child.instance.service, child.instanceId);
    return stats;
  }

  /**
   * Slow start (Envoy's `slow_start_config`): an instance that joins after the first membership
   * ramps from `minWeightPercent` of its weight to all of it over `windowMs`, counted from when its
   * subchannel first became READY. While any ramps, the picker is rebuilt every window / 50.
   */
  #applySlowStart(): void {
    const slowStart = this.#config.slowStart;
    clearTimeout(this.#slowStartTimer);
    this.#slowStartTimer = undefined;
    if (slowStart === undefined) return;
    const nowMs = Date.now();
    let isRamping = false;
    for (const child of this.#ordered) {
      if (child.slowStartFromMs === undefined && child.isReady) child.slowStartFromMs = nowMs;
      child.weightFactor =
        child.slowStartFromMs === undefined ? 1 : slowStartFactor(nowMs - child.slowStartFromMs, slowStart);
      if (child.weightFactor < 1 && child.slowStartFromMs !== undefined) isRamping = true;
    }
    if (!isRamping) return;
    this.#slowStartTimer = setTimeout(
      () => this.#update({ removed: [] }),
      slowStart.windowMs / SLOW_START_STEPS,
    );
    this.#slowStartTimer.unref(); // bookkeeping: the channel's calls keep the process alive
  }

  /**
   * Policies whose picker holds weights made from load reports are rebuilt every update period
   * (A58's `weight_update_period`), as grpc-js `weighted_round_robin` does.
   */
  #armLoadTimer(): void {
    const periodMs =
      this.#policy === "least_loaded"
        ? this.#config.leastLoaded.updatePeriodMs
        : this.#policy === "weighted_round_robin"
          ? this.#config.orca?.weightUpdatePeriodMs
          : undefined;
    if (periodMs === undefined || this.#loadTimer !== undefined) return;
    this.#loadTimer = setTimeout(() => {
      this.#loadTimer = undefined;
      this.#update({ removed: [] });
    }, periodMs);
    this.#loadTimer.unref(); // bookkeeping: the channel's calls keep the process alive
  }

  /** Rebuilds the picker and reports the aggregate state, as grpc-js `round_robin` does. */
  #update(change: { removed: InstanceStats[] }): void {
    if (this.#isDestroyed) return;
    const context = this.context;
    capEjections(this.#ordered, context.maxEjectionPercent);
    this.#applySlowStart();
    this.#policyPicker = createPicker(this.#policy, this.#ordered, {
      random: context.random,
      previous: this.#policyPicker,
      config: this.#config,
    });
    this.#armLoadTimer();
    let isConnecting = false;
    for (const child of this.#ordered) {
      const state = child.leaf.getConnectivityState();
      // Keep every listed instance connected (round_robin does the same).
      if (state === ConnectivityState.IDLE) child.leaf.exitIdle();
      if (state === ConnectivityState.CONNECTING || state === ConnectivityState.IDLE) isConnecting = true;
    }
    if (this.#policyPicker.instances.length > 0) {
      this.#helper.updateState(ConnectivityState.READY, new LeaseholdPicker(this, this.#policyPicker), null);
    } else if (isConnecting) {
      this.#helper.updateState(ConnectivityState.CONNECTING, new experimental.QueuePicker(this), null);
    } else {
      const picker = new LeaseholdPicker(this, this.#policyPicker);
      this.#helper.updateState(
        ConnectivityState.TRANSIENT_FAILURE,
        picker,
        this.noInstanceStatus(undefined).details,
      );
    }
    context.changed(change);
  }
}

/** Slow start rebuilds the picker this many times per window while an instance ramps up. */
const SLOW_START_STEPS = 50;
/**
 * Max-ejection cap (Envoy's `max_ejection_percent`): of the instances that could take traffic, at
 * most `maxEjectionPercent` (never all) are ejected by their open breakers, the worst first (the
 * highest failure ratio in the breaker's window, then the earliest opened): an instance that
 * tripped on a few slow answers under load stays ahead of ones that fail everything. The others
 * stay in the pick set even while their breaker is open (panic for breakers).
 */
function capEjections(children: readonly Child[], maxEjectionPercent: number): void {
  const candidates = children.filter((child) => child.isServing && child.weight > 0);
  const allowed = Math.min(
    Math.floor((candidates.length * maxEjectionPercent) / 100),
    Math.max(0, candidates.length - 1),
  );
  const open = candidates
    .filter((child) => child.breaker.state === "open")
    .sort((a, b) => b.breaker.failureRatio - a.breaker.failureRatio || a.openedAtMs - b.openedAtMs);
  const ejected = new Set(open.slice(0, allowed));
  for (const child of children) child.isEjected = ejected.has(child);
}

let isRegistered = false;

/**
 * Registers the `leasehold_<policy>` load-balancer types (one per policy of DESIGN §5) with the
 * grpc-js copy this package resolves (a peer dependency: the application's own). Idempotent.
 */
export function registerLoadBalancers(): void {
  if (isRegistered) return;
  isRegistered = true;
  for (const policy of POLICY_NAMES) {
    const name = loadBalancerName(policy);
    class Config extends LeaseholdLoadBalancingConfig {
      constructor(json?: PolicyConfig) {
        super(policy, json);
      }
      static createFromJson(json: unknown): Config {
        return new Config(json as PolicyConfig);
      }
    }
    class Balancer extends LeaseholdLoadBalancer {
      override getTypeName(): string {
        return name;
      }
    }
    experimental.registerLoadBalancerType(name, Balancer, Config);
  }
}
