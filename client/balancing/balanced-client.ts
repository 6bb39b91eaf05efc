/**
 * The typed balanced client (DESIGN §5): promise methods, server streams as `AsyncIterable`,
 * client and bidi streams fed from an (async) iterable, over a ts-proto (or proto-loader)
 * grpc-js service definition. It is a grpc-js channel to a `leasehold:///SERVICE` target, so it
 * balances through exactly the same resolver and `leasehold_<policy>` load balancer as any stock
 * grpc-js client; on top it adds a retry of unary calls on a DIFFERENT instance within one
 * deadline, `AbortSignal`, `LeaseholdError`, and the per-instance {@link InstanceStats} view.
 */
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { BreakerOptions } from "../breaker/instance-breaker.js";
import type { MembershipSource } from "../discovery/membership.js";
import {
  LEASEHOLD_SCHEME,
  MEMBERSHIP_SOURCE_OPTION,
  POLICY_CONFIG_OPTION,
  POLICY_OPTION,
  REGISTRY_SECURITY_OPTION,
  registrySecurityId,
  TYPED_CLIENT_OPTION,
  registerResolver,
  resolverDefaults,
  shareMembership,
} from "../discovery/leasehold-resolver.js";
import { LeaseholdError } from "../errors.js";
import type { ClientSecurity } from "../tls/tls-files.js";
import type { ClientMetrics } from "../metrics/client-metrics.js";
import {
  AttemptTag,
  CONTEXT_OPTION,
  createContext,
  dropContext,
  type BalancerChange,
  type BalancerContext,
  type InstanceStats,
} from "./balancer-context.js";
import { EXCLUDE_METADATA, registerLoadBalancers } from "./leasehold-load-balancer.js";
import { isPolicyName, type PolicyName } from "./policies.js";
import {
  resolvePolicyConfig,
  type PolicyConfig,
  type RingHashConfig,
  type SlowStartConfig,
} from "./policy-config.js";
import { quantileOf } from "../metrics/quantile.js";
import { RetryBudget, type RetryBudgetOptions } from "./retry-budget.js";

export { LATENCY_SAMPLES, type BalancerChange, type InstanceStats } from "./balancer-context.js";

/** Options of {@link createBalancedClient}. Durations in milliseconds. */
export interface BalancedClientOptions {
  /** Service name, as registered (the `service` label of every metric). */
  readonly service: string;
  /**
   * Registry address(es), `host:port[,host:port]`. Default: the one given to
   * `registerLeasehold()`. Not used with {@link membership}.
   */
  readonly registry?: string;
  /** A membership of your own (`staticMembership`, a `MembershipWatcher`) instead of a registry watch. */
  readonly membership?: MembershipSource;
  /** Load-balancing policy. Default `round_robin`. */
  readonly policy?: PolicyName;
  /**
   * Slow start (Envoy's): an instance that joins ramps from `minWeightPercent` (10) of its weight
   * to all of it over `windowMs`, as weight × max(min, (t / window)^(1 / aggression)) with
   * `aggression` default 1. Weighted policies only. Default off.
   */
  readonly slowStart?: SlowStartConfig;
  /**
   * The caller's zone: zone-aware routing keeps calls in it while it has enough healthy capacity
   * and spills over in proportion when it has not (see `ZonePicker`). Default: no zone preference.
   */
  readonly zone?: string;
  /** The share of callers expected in {@link zone}, percent. Default 100 / the instances' zone count. */
  readonly zoneCallerPercent?: number;
  /** Subset routing: only instances whose metadata has all these pairs (e.g. `{ version: "v2" }`). */
  readonly metadataFilter?: Readonly<Record<string, string>>;
  /** `ring_hash` only: ring sizes and the metadata key hashed. */
  readonly ringHash?: RingHashConfig;
  /**
   * `weighted_round_robin` only: weigh instances by their ORCA load reports (gRFC A58) instead of
   * their registered weights; `{}` takes A58's defaults (blackout 10 s, expiry 3 min, penalty 1).
   */
  readonly orca?: PolicyConfig["orca"];
  /** `least_loaded` only: report age limit (10 s) and picker refresh (1 s). */
  readonly leastLoaded?: PolicyConfig["leastLoaded"];
  /** `peak_ewma` only: EWMA decay (10 s) and the latency assumed before an answer (30 ms). */
  readonly peakEwma?: PolicyConfig["peakEwma"];
  /**
   * `ring_hash` only: the hash key of a unary or server-streaming call's request (e.g.
   * `(request) => request.userId`), sent as the `ringHash.hashHeader` metadata unless the call
   * sets that header itself. Without it (or for client streams) a call hashes by that header.
   */
  readonly hashKey?: (request: never) => string;
  /** Caller-side metrics (DESIGN §7); none recorded when absent. */
  readonly metrics?: ClientMetrics;
  /** Deadline of a whole call, all attempts included (streams: the whole stream). Default 5000. */
  readonly deadlineMs?: number;
  /** Attempts per unary call, each on a different instance. Default 3. */
  readonly maxAttempts?: number;
  /**
   * Floor of each unary attempt's own timeout, ms. An attempt may take at most
   * max(this, 4 × the p99 latency of recent successful attempts), within the call's deadline, so
   * a frozen instance costs one attempt, not the whole deadline. It applies only once 16 attempts
   * succeeded and while another instance could be picked. Default 1000; `Infinity` turns it off.
   */
  readonly attemptTimeoutFloorMs?: number;
  /**
   * Retry budget (Finagle, Linkerd): retries ≤ `ratio` (0.2) of requests plus `minPerSecond` (10)
   * per second over `windowMs` (10 s). A retry away from an instance whose breaker is open (kept
   * in the pick set only by the max-ejection cap) is not charged. `false` turns it off.
   */
  readonly retryBudget?: RetryBudgetOptions | false;
  /** Breaker tuning; see `DEFAULT_BREAKER_OPTIONS`. */
  readonly breaker?: BreakerOptions;
  /** Uniform in [0, 1). Default `Math.random`. */
  readonly random?: () => number;
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
  /**
   * grpc-js channel options. `grpc.use_local_subchannel_pool` defaults to 1 here, so the
   * connection of an instance that left closes at once (the global pool keeps it up to 10 s).
   */
  readonly channelOptions?: grpc.ChannelOptions;
  /**
   * TLS files and bearer token of this client's registry Watch; default the `registrySecurity` of
   * `registerLeasehold()`. `credentials` are those toward the instances.
   */
  readonly registrySecurity?: ClientSecurity;
  /** Channel credentials toward the instances (e.g. `channelCredentials(tlsFiles)`). Default insecure. */
  readonly credentials?: grpc.ChannelCredentials;
  /** grpc-js client interceptors, run on every call (each attempt of a retried call). */
  readonly interceptors?: readonly grpc.Interceptor[];
  /** pino logger for membership and breaker transitions. Default silent. */
  readonly logger?: Logger;
}

/** Per-call options. */
export interface BalancedCallOptions {
  /** Aborting cancels the call in flight; it rejects with `CANCELLED` and is never retried. */
  readonly signal?: AbortSignal;
  /** Deadline of this call, all attempts included; overrides the client's `deadlineMs`. */
  readonly deadlineMs?: number;
  /** Request metadata (headers) sent with every attempt. */
  readonly metadata?: grpc.Metadata;
  /**
   * Hedging, opt-in and only for idempotent unary methods: when an attempt has not answered after
   * this many ms, a second one starts on a different instance; the first answer wins and the other
   * is cancelled. A hedge counts as a retry (metrics and budget). Default: no hedging.
   */
  readonly hedgeAfterMs?: number;
}

/** The request type of a grpc-js method definition. */
export type RequestOf<M> = M extends { requestSerialize: (value: infer Req) => Buffer } ? Req : never;
/** The response type of a grpc-js method definition. */
export type ResponseOf<M> = M extends { responseDeserialize: (value: Buffer) => infer Res } ? Res : never;
/** What a client- or bidi-streaming method takes: its requests, sync or async. */
export type Requests<M> = AsyncIterable<RequestOf<M>> | Iterable<RequestOf<M>>;

/** The function of one method, by its streaming kind. */
export type BalancedMethod<M> = M extends { readonly requestStream: false; readonly responseStream: false }
  ? (request: RequestOf<M>, options?: BalancedCallOptions) => Promise<ResponseOf<M>>
  : M extends { readonly requestStream: false; readonly responseStream: true }
    ? (request: RequestOf<M>, options?: BalancedCallOptions) => AsyncIterable<ResponseOf<M>>
    : M extends { readonly requestStream: true; readonly responseStream: false }
      ? (requests: Requests<M>, options?: BalancedCallOptions) => Promise<ResponseOf<M>>
      : (requests: Requests<M>, options?: BalancedCallOptions) => AsyncIterable<ResponseOf<M>>;

/**
 * One function per method of the definition (`add`, `echo`, ...): unary → `Promise`, server
 * streaming → `AsyncIterable`, client streaming → `Promise` fed by an iterable, bidi →
 * `AsyncIterable` fed by an iterable. Everything rejects or throws only `LeaseholdError`.
 */
export type BalancedMethods<D> = { readonly [K in keyof D & string]: BalancedMethod<D[K]> };

/** A balanced client over one service. */
export interface BalancedClient<D> extends AsyncDisposable {
  readonly service: string;
  readonly policy: PolicyName;
  readonly methods: BalancedMethods<D>;
  /** The grpc-js client underneath (a `leasehold:///` channel), for anything not covered here. */
  readonly grpcClient: grpc.Client;
  /** etcd revision of the membership applied last ("" before the first). */
  readonly membershipRevision: string;
  /** True while panic mode keeps routing over instances that left the membership at once. */
  readonly isPanicking: boolean;
  /** Starts resolving and connecting now instead of at the first call. Idempotent. */
  start(): void;
  /** Per listed instance, in `instanceId` order. */
  stats(): InstanceStats[];
  /**
   * Calls `listener` after membership, connectivity or breaker changes, with the final stats of
   * instances that just left; returns the unsubscribe function.
   */
  onChange(listener: (change: BalancerChange) => void): () => void;
  /** Closes the channel (every subchannel and breaker; metric series removed). Idempotent. */
  close(): Promise<void>;
}

type AnyMethod = grpc.MethodDefinition<unknown, unknown>;

/**
 * One grpc-js call of a unary attempt (two with a hedge). It is the options object of the call's
 * metadata, so the picker writes the picked address into it (see {@link AttemptTag}), and the
 * record the stall watch parks while the call is in flight: one object per call.
 */
class AttemptCall extends AttemptTag {
  call: grpc.ClientUnaryCall | undefined = undefined;
  /** Set when it was moved off a stalled instance: how long it had waited, ms. */
  stalledAfterMs: number | undefined = undefined;

  constructor(
    /** When it started, epoch ms. */
    readonly startedMs: number,
  ) {
    super();
  }
}

/**
 * One unary call from start to end: its attempts (each one grpc-js call, two with a hedge) are
 * started and ended by callbacks that update this record, and the last one settles the call's
 * promise through `resolve` / `reject`.
 */
class UnaryCall {
  attempts = 0;
  /** Addresses of the failed attempts, allocated on the first retry. */
  tried: string[] | undefined = undefined;
  lastError: LeaseholdError | undefined = undefined;
  isSettled = false;
  /** The backoff before the next attempt, or the attempt's hedge timer. */
  timer: NodeJS.Timeout | undefined = undefined;
  onAbort: (() => void) | undefined = undefined;
  // The attempt in flight:
  first: AttemptCall | undefined = undefined;
  hedge: AttemptCall | undefined = undefined;
  /** Its grpc-js calls still running. */
  running = 0;
  isAttemptSettled = false;
  /** The addresses it avoids, comma-separated. */
  exclude: string | undefined = undefined;
  attemptTimeoutMs = Number.POSITIVE_INFINITY;
  attemptDeadline = 0;
  /** When it started, epoch ms (its latency, in whole ms, feeds the attempt timeout). */
  startedMs = 0;

  constructor(
    readonly method: AnyMethod,
    /** The method's metric label. */
    readonly name: string,
    readonly request: unknown,
    readonly callOptions: BalancedCallOptions | undefined,
    /** The whole call's deadline, epoch ms. */
    readonly deadline: number,
    readonly resolve: (value: unknown) => void,
    readonly reject: (error: LeaseholdError) => void,
  ) {}
}

interface ResolvedOptions {
  readonly service: string;
  readonly policy: PolicyName;
  /** With `hashKey`: the metadata key to set and the function. */
  readonly hashKey: { readonly header: string; readonly of: (request: unknown) => string } | undefined;
  readonly deadlineMs: number;
  readonly maxAttempts: number;
  readonly target: string;
  readonly channelOptions: grpc.ChannelOptions;
  readonly credentials: grpc.ChannelCredentials;
  readonly interceptors: readonly grpc.Interceptor[];
}

function invalid(message: string): never {
  throw new LeaseholdError("INVALID_ARGUMENT", `balanced client: ${message}`);
}

function checkDeadline(deadlineMs: number): number {
  if (!(Number.isFinite(deadlineMs) && deadlineMs > 0)) invalid(`deadlineMs must be > 0, got ${deadlineMs}`);
  return deadlineMs;
}

class BalancedClientImpl<D extends grpc.ServiceDefinition> implements BalancedClient<D> {
  readonly service: string;
  readonly policy: PolicyName;
  readonly methods: BalancedMethods<D>;
  readonly grpcClient: grpc.Client;
  readonly #options: ResolvedOptions;
  readonly #context: BalancerContext;
  readonly #forgetMembership: () => void;
  readonly #budget: RetryBudget | undefined;
  readonly #latency: LatencyTracker;
  #isClosed = false;

  constructor(definition: D, options: BalancedClientOptions) {
    const service = options.service;
    if (typeof service !== "string" || service === "") invalid("service must be a non-empty string");
    const policy = options.policy ?? "round_robin";
    if (!isPolicyName(policy)) invalid(`unknown policy "${String(policy)}"`);
    const policyConfig: PolicyConfig = JSON.parse(
      JSON.stringify({
        slowStart: options.slowStart,
        zone: options.zone,
        zoneCallerPercent: options.zoneCallerPercent,
        metadataFilter: options.metadataFilter,
        ringHash: options.ringHash,
        orca: options.orca,
        leastLoaded: options.leastLoaded,
        peakEwma: options.peakEwma,
      }),
    ) as PolicyConfig;
    let hashHeader: string;
    try {
      hashHeader = resolvePolicyConfig(policy, policyConfig).ringHash.hashHeader;
    } catch (error) {
      invalid(error instanceof Error ? error.message : String(error));
    }
    if (options.hashKey !== undefined && (policy !== "ring_hash" || typeof options.hashKey !== "function"))
      invalid("hashKey must be a function, and is for the ring_hash policy");
    const deadlineMs = checkDeadline(options.deadlineMs ?? 5000);
    const maxAttempts = options.maxAttempts ?? 3;
    if (!(Number.isInteger(maxAttempts) && maxAttempts >= 1)) invalid("maxAttempts must be an integer ≥ 1");
    const registry = options.registry ?? resolverDefaults().registry;
    if (options.membership === undefined && registry === undefined)
      invalid("give a registry address (or call registerLeasehold({ registry }) first), or a membership");
    const attemptTimeoutFloorMs = options.attemptTimeoutFloorMs ?? 1000;
    if (!(attemptTimeoutFloorMs > 0)) invalid("attemptTimeoutFloorMs must be > 0");
    try {
      this.#budget = options.retryBudget === false ? undefined : new RetryBudget(options.retryBudget);
    } catch (error) {
      invalid(error instanceof Error ? error.message : String(error));
    }
    this.#latency = new LatencyTracker(attemptTimeoutFloorMs);
    registerResolver();
    registerLoadBalancers();
    this.#context = createContext({
      metrics: options.metrics,
      breaker: options.breaker,
      logger: options.logger?.child({ service }),
      random: options.random,
      maxEjectionPercent: options.maxEjectionPercent,
      panicThresholdPercent: options.panicThresholdPercent,
      panicGraceMs: options.panicGraceMs,
      stallFloorMs: options.stallFloorMs,
    });
    const shared = options.membership === undefined ? undefined : shareMembership(options.membership);
    this.#forgetMembership = shared?.forget ?? (() => undefined);
    this.service = service;
    this.policy = policy;
    this.#options = Object.freeze({
      service,
      policy,
      hashKey:
        options.hashKey === undefined
          ? undefined
          : { header: hashHeader, of: options.hashKey as (request: unknown) => string },
      deadlineMs,
      maxAttempts,
      target:
        shared === undefined
          ? `${LEASEHOLD_SCHEME}://${registry}/${service}`
          : `${LEASEHOLD_SCHEME}:///${service}`,
      channelOptions: Object.freeze({
        "grpc.use_local_subchannel_pool": 1,
        ...options.channelOptions,
        // Retries are this client's own (on a different instance), not grpc-js's.
        "grpc.enable_retries": 0,
        [CONTEXT_OPTION]: this.#context.id,
        [POLICY_OPTION]: policy,
        [POLICY_CONFIG_OPTION]: policyConfig,
        [TYPED_CLIENT_OPTION]: 1,
        ...(options.registrySecurity === undefined
          ? {}
          : { [REGISTRY_SECURITY_OPTION]: registrySecurityId(options.registrySecurity) }),
        ...(shared === undefined ? {} : { [MEMBERSHIP_SOURCE_OPTION]: shared.id }),
      }),
      credentials: options.credentials ?? grpc.credentials.createInsecure(),
      interceptors: Object.freeze([...(options.interceptors ?? [])]),
    });
    this.grpcClient = new grpc.Client(this.#options.target, this.#options.credentials, {
      ...this.#options.channelOptions,
      interceptors: [...this.#options.interceptors],
    });
    const methods: Record<string, unknown> = {};
    for (const [key, method] of Object.entries(definition) as [string, AnyMethod][]) {
      methods[key] =
        method.requestStream && method.responseStream
          ? (requests: Requests<AnyMethod>, callOptions?: BalancedCallOptions) =>
              this.#bidi(method, requests, callOptions)
          : method.requestStream
            ? (requests: Requests<AnyMethod>, callOptions?: BalancedCallOptions) =>
                this.#clientStream(method, requests, callOptions)
            : method.responseStream
              ? (request: unknown, callOptions?: BalancedCallOptions) =>
                  this.#serverStream(method, request, callOptions)
              : this.#unaryMethod(method);
    }
    this.methods = Object.freeze(methods) as BalancedMethods<D>;
  }

  /** The function of a unary method; its metric label is computed once, not per call. */
  #unaryMethod(method: AnyMethod): (request: unknown, callOptions?: BalancedCallOptions) => Promise<unknown> {
    const name = methodName(method);
    return (request, callOptions) => this.#unary(method, name, request, callOptions);
  }

  get membershipRevision(): string {
    for (const balancer of this.#context.balancers) return balancer.membershipRevision;
    return "";
  }

  /** Unary attempts in flight, watched for a stalled instance while any is. */
  readonly #parked = new Set<AttemptCall>();
  #stallTimer: NodeJS.Timeout | undefined;

  #park(attempt: AttemptCall): void {
    this.#parked.add(attempt);
    const floorMs = this.#context.stallFloorMs;
    if (this.#stallTimer !== undefined || !Number.isFinite(floorMs)) return;
    this.#stallTimer = setInterval(() => this.#releaseStalled(floorMs), Math.max(10, floorMs / 3));
    this.#stallTimer.unref(); // the calls in flight keep the process alive, not this watch
  }

  /**
   * Moves attempts parked on a stalled instance (see stall-detector.ts) elsewhere: each is ended
   * as DEADLINE_EXCEEDED, which its breaker counts as the endpoint fault it is, and retried on
   * another instance as UNAVAILABLE.
   */
  #releaseStalled(floorMs: number): void {
    if (this.#parked.size === 0) {
      clearInterval(this.#stallTimer);
      this.#stallTimer = undefined;
      return;
    }
    const nowMs = Date.now();
    for (const attempt of this.#parked) {
      if (nowMs - attempt.startedMs <= floorMs) continue;
      const peer = attempt.address;
      if (peer === undefined || !this.#isStalledAt(peer)) continue;
      this.#parked.delete(attempt);
      attempt.stalledAfterMs = nowMs - attempt.startedMs;
      // grpc-js's public cancel() ends an attempt as CANCELLED, which no breaker counts; its
      // InterceptingCall takes a status (an internal of grpc-js 1.x, hence the fallback).
      const inner = (
        attempt.call as { call?: { cancelWithStatus?: (code: number, details: string) => void } } | undefined
      )?.call;
      if (inner?.cancelWithStatus !== undefined)
        inner.cancelWithStatus(grpc.status.DEADLINE_EXCEEDED, `instance at ${peer} stalled`);
      else attempt.call?.cancel();
    }
  }

  #isStalledAt(address: string): boolean {
    for (const balancer of this.#context.balancers) if (balancer.isStalledAt(address)) return true;
    return false;
  }

  #isBreakerOpenAt(address: string): boolean {
    for (const balancer of this.#context.balancers) if (balancer.isBreakerOpenAt(address)) return true;
    return false;
  }

  /** Instances the balancers could pick now (READY, serving, not ejected). */
  #pickableCount(): number {
    let count = 0;
    for (const balancer of this.#context.balancers) count += balancer.pickableCount;
    return count;
  }

  get isPanicking(): boolean {
    for (const balancer of this.#context.balancers) if (balancer.isPanicking) return true;
    return false;
  }

  start(): void {
    if (!this.#isClosed) this.grpcClient.getChannel().getConnectivityState(true);
  }

  stats(): InstanceStats[] {
    return [...this.#context.balancers].flatMap((balancer) => balancer.stats());
  }

  onChange(listener: (change: BalancerChange) => void): () => void {
    return this.#context.onChange(listener);
  }

  close(): Promise<void> {
    if (this.#isClosed) return Promise.resolve();
    this.#isClosed = true;
    clearInterval(this.#stallTimer);
    this.grpcClient.close(); // destroys the balancer: breakers shut down, metric series removed
    this.#forgetMembership();
    dropContext(this.#context);
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- calls ----

  /** Checks the client and the call; returns the call's deadline (epoch ms) from `nowMs`. */
  #begin(callOptions: BalancedCallOptions | undefined, nowMs: number = Date.now()): number {
    if (this.#isClosed)
      throw new LeaseholdError("FAILED_PRECONDITION", `balanced client of service ${this.service} is closed`);
    const signal = callOptions?.signal;
    if (signal?.aborted === true) throw abortedError(signal);
    return nowMs + checkDeadline(callOptions?.deadlineMs ?? this.#options.deadlineMs);
  }

  /**
   * A unary call: attempts on different instances within one deadline (see the class comment).
   * Driven by grpc-js callbacks through one {@link UnaryCall} record: no promise but the one
   * returned, and no closure per call but the promise executor and each attempt's callback.
   */
  #unary(
    method: AnyMethod,
    name: string,
    request: unknown,
    callOptions: BalancedCallOptions | undefined,
  ): Promise<unknown> {
    const nowMs = Date.now(); // one clock read for the call's deadline and its first attempt
    let deadline: number;
    try {
      deadline = this.#begin(callOptions, nowMs);
    } catch (error) {
      return Promise.reject(LeaseholdError.from(error));
    }
    this.#budget?.deposit();
    return new Promise((resolve, reject) => {
      const call = new UnaryCall(method, name, request, callOptions, deadline, resolve, reject);
      const signal = callOptions?.signal;
      if (signal !== undefined) {
        call.onAbort = () => this.#abort(call, signal);
        signal.addEventListener("abort", call.onAbort, { once: true });
      }
      this.#startAttempt(call, nowMs);
    });
  }

  /** Ends `call` with its answer. */
  #succeed(call: UnaryCall, value: unknown): void {
    if (!this.#end(call)) return;
    this.#context.metrics?.countCall(this.service, call.name, "OK");
    call.resolve(value);
  }

  /** Ends `call` with `error`, normalised (and counted by the call metrics by its code). */
  #fail(call: UnaryCall, error: unknown): void {
    if (!this.#end(call)) return;
    const failure = LeaseholdError.from(error);
    this.#context.metrics?.countCall(this.service, call.name, failure.code);
    call.reject(failure);
  }

  /** Marks `call` ended and drops its timer and abort listener; false when it had ended already. */
  #end(call: UnaryCall): boolean {
    if (call.isSettled) return false;
    call.isSettled = true;
    if (call.timer !== undefined) clearTimeout(call.timer);
    if (call.onAbort !== undefined) call.callOptions?.signal?.removeEventListener("abort", call.onAbort);
    return true;
  }

  /** The call's AbortSignal fired: cancel what is in flight (its callback ends the call), or end it now. */
  #abort(call: UnaryCall, signal: AbortSignal): void {
    if (call.running > 0) {
      call.first?.call?.cancel();
      call.hedge?.call?.cancel();
    } else this.#fail(call, abortedError(signal));
  }

  /**
   * After a failed attempt: the next one, on an instance none of the call's failed attempts
   * reached, after a backoff and if the retry budget allows; or the end of the call when no
   * attempt or time is left.
   */
  #retry(call: UnaryCall): void {
    if (call.attempts >= this.#options.maxAttempts || Date.now() >= call.deadline)
      return this.#fail(call, this.#finalError(call));
    // A retry away from an instance whose breaker is open (kept only by the ejection cap) is the
    // cap's cost, not a sign of overload: the budget is not charged for it.
    const lastError = call.lastError;
    const lastPeer = call.tried?.at(-1);
    const isKnownBad = lastPeer !== undefined && this.#isBreakerOpenAt(lastPeer);
    if (!isKnownBad && this.#budget !== undefined && !this.#budget.tryWithdraw()) {
      const message = `${lastError?.message} (retry budget spent)`;
      return this.#fail(
        call,
        new LeaseholdError(lastError?.code ?? "UNAVAILABLE", message, { cause: lastError }),
      );
    }
    this.#context.metrics?.retries.inc({ service: this.service, method: call.name });
    // "Equal jitter" backoff: a burst of failures does not retry in lock step, and never at once,
    // so connections that died together (instances killed at once) are seen as dead first.
    const cap = Math.min(MAX_RETRY_BACKOFF_MS, BASE_RETRY_BACKOFF_MS * 2 ** (call.attempts - 1));
    const delayMs = cap / 2 + (this.#context.random() * cap) / 2;
    const waitMs = Math.min(call.deadline, Date.now() + delayMs) - Date.now();
    if (waitMs <= 0) return this.#startAttempt(call, Date.now());
    call.timer = setTimeout(() => {
      call.timer = undefined;
      this.#startAttempt(call, Date.now());
    }, waitMs);
  }

  /**
   * Starts an attempt at `nowMs` (epoch ms): a grpc-js call, and with `hedgeAfterMs` the timer of
   * its hedge.
   */
  #startAttempt(call: UnaryCall, nowMs: number): void {
    try {
      call.attempts++;
      const exclude = call.tried?.join(",");
      const metadata = this.#attemptMetadata(call.request, call.callOptions, exclude, nowMs);
      // Only with somewhere else to go: a lone instance gets the whole deadline.
      call.attemptTimeoutMs =
        this.#pickableCount() > 1 ? this.#latency.attemptTimeoutMs(nowMs) : Number.POSITIVE_INFINITY;
      call.attemptDeadline = Math.min(call.deadline, nowMs + call.attemptTimeoutMs);
      call.startedMs = nowMs;
      call.exclude = exclude;
      call.isAttemptSettled = false;
      call.hedge = undefined;
      const first = metadata.getOptions() as AttemptCall;
      call.first = first;
      this.#startGrpcCall(call, first, metadata);
      const hedgeAfterMs = call.callOptions?.hedgeAfterMs;
      if (hedgeAfterMs !== undefined) call.timer = setTimeout(() => this.#startHedge(call), hedgeAfterMs);
    } catch (error) {
      this.#fail(call, error);
    }
  }

  /** The attempt is slow: a second grpc-js call on a different instance; the first answer wins. */
  #startHedge(call: UnaryCall): void {
    call.timer = undefined;
    if (call.isAttemptSettled || (this.#budget !== undefined && !this.#budget.tryWithdraw())) return;
    this.#context.metrics?.retries.inc({ service: this.service, method: call.name });
    // Made afresh, not from the first call's metadata: client interceptors may have changed that one.
    const tried = call.exclude === undefined ? [] : [call.exclude];
    const firstAddress = call.first?.address;
    if (firstAddress !== undefined) tried.push(firstAddress); // undefined while its pick waits
    const hedged = this.#attemptMetadata(call.request, call.callOptions, tried.join(","), Date.now());
    const attempt = hedged.getOptions() as AttemptCall;
    call.hedge = attempt;
    try {
      this.#startGrpcCall(call, attempt, hedged);
    } catch (error) {
      call.isAttemptSettled = true;
      call.first?.call?.cancel();
      this.#fail(call, error);
    }
  }

  /** One grpc-js call of an attempt; `metadata`'s options object is its {@link AttemptCall}. */
  #startGrpcCall(call: UnaryCall, attempt: AttemptCall, metadata: grpc.Metadata): void {
    const method = call.method;
    attempt.call = this.grpcClient.makeUnaryRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      call.request,
      metadata,
      { deadline: call.attemptDeadline },
      (error: grpc.ServiceError | null, response?: unknown) =>
        this.#grpcCallEnded(call, attempt, error, response),
    );
    call.running++;
    this.#park(attempt);
  }

  /**
   * A grpc-js call ended. A success ends the call; a failure ends the attempt (the call retries
   * elsewhere), or, with a hedge still in flight, waits for that one's answer.
   */
  #grpcCallEnded(
    call: UnaryCall,
    attempt: AttemptCall,
    error: grpc.ServiceError | null,
    response: unknown,
  ): void {
    call.running--;
    this.#parked.delete(attempt);
    if (call.isAttemptSettled) return;
    if (error === null) {
      call.isAttemptSettled = true;
      if (call.hedge !== undefined) this.#cancelLoser(call);
      this.#latency.record(Date.now() - call.startedMs);
      this.#succeed(call, response);
      return;
    }
    if (call.running > 0) return;
    call.isAttemptSettled = true;
    clearTimeout(call.timer); // the hedge's
    call.timer = undefined;
    if (call.hedge !== undefined) this.#cancelLoser(call);
    const signal = call.callOptions?.signal;
    if (signal?.aborted === true) return this.#fail(call, abortedError(signal));
    const peerSeen = attempt.address ?? attempt.call?.getPeer();
    const peer = peerSeen === this.#options.target || peerSeen === "unknown" ? undefined : peerSeen;
    let failure =
      attempt.stalledAfterMs === undefined
        ? LeaseholdError.from(error)
        : new LeaseholdError(
            "UNAVAILABLE",
            `instance at ${peerSeen} stalled: no answer for ${attempt.stalledAfterMs} ms while others answered`,
          );
    if (
      failure.code === "DEADLINE_EXCEEDED" &&
      call.attemptDeadline < call.deadline &&
      Date.now() < call.deadline
    ) {
      // The attempt's own timeout: the instance is frozen or slow; another may answer in time.
      failure = new LeaseholdError("UNAVAILABLE", `attempt timed out after ${call.attemptTimeoutMs} ms`, {
        cause: failure,
      });
    }
    // A pick that found no instance left: the last instance's own error says more.
    if (peer === undefined && call.lastError !== undefined) return this.#fail(call, call.lastError);
    // Not retried: caller faults, a spent deadline, and a pick that found no instance at all.
    if (!failure.retryable || peer === undefined) return this.#fail(call, failure);
    call.lastError = failure;
    (call.tried ??= []).push(peer);
    this.#retry(call);
  }

  /** Cancels the attempt's calls that lost the hedge (a no-op on the ended one). */
  #cancelLoser(call: UnaryCall): void {
    call.first?.call?.cancel();
    call.hedge?.call?.cancel();
  }

  /** The error of a call whose attempts or deadline ran out. */
  #finalError(call: UnaryCall): LeaseholdError {
    const lastError = call.lastError;
    if (lastError === undefined)
      return new LeaseholdError("UNAVAILABLE", `no attempt made on ${this.service}`);
    if (call.attempts < this.#options.maxAttempts && Date.now() >= call.deadline) {
      const deadlineMs = call.callOptions?.deadlineMs ?? this.#options.deadlineMs;
      return new LeaseholdError(
        "DEADLINE_EXCEEDED",
        `deadline of ${deadlineMs} ms exceeded after ${call.attempts} attempt(s): ${lastError.message}`,
        { cause: lastError },
      );
    }
    return lastError;
  }
  /** The options object of an attempt's metadata: the call's own metadata options, plus the tag. */
  #newAttemptCall(
    callOptions: BalancedCallOptions | undefined,
    nowMs: number,
  ): AttemptCall & grpc.MetadataOptions {
    const attempt: AttemptCall & grpc.MetadataOptions = new AttemptCall(nowMs);
    const given = callOptions?.metadata;
    if (given !== undefined) Object.assign(attempt, given.getOptions());
    return attempt;
  }

  /**
   * The metadata of one unary attempt, made once: the call's metadata, the request's `ring_hash`
   * key when `hashKey` is set, and the addresses to avoid (`exclude`, comma-separated); its
   * options object is a new {@link AttemptCall}.
   */
  #attemptMetadata(
    request: unknown,
    callOptions: BalancedCallOptions | undefined,
    exclude: string | undefined,
    nowMs: number,
  ): grpc.Metadata {
    const attempt = this.#newAttemptCall(callOptions, nowMs);
    const metadata = new grpc.Metadata(attempt);
    const given = callOptions?.metadata;
    if (given !== undefined) metadata.merge(given);
    this.#addHashKey(metadata, request);
    if (exclude !== undefined) metadata.set(EXCLUDE_METADATA, exclude);
    attempt.isExcluding =
      exclude !== undefined || (given !== undefined && metadata.get(EXCLUDE_METADATA).length > 0);
    return metadata;
  }

  /** Sets the request's `ring_hash` key when `hashKey` is set and the call did not set the header. */
  #addHashKey(metadata: grpc.Metadata, request: unknown): void {
    const hashKey = this.#options.hashKey;
    if (hashKey !== undefined && metadata.get(hashKey.header).length === 0)
      metadata.set(hashKey.header, hashKey.of(request));
  }

  /** A copy of the call's metadata, with the request's `ring_hash` key when `hashKey` is set. */
  #metadataOf(request: unknown, callOptions: BalancedCallOptions | undefined): grpc.Metadata {
    const metadata = callOptions?.metadata?.clone() ?? new grpc.Metadata();
    this.#addHashKey(metadata, request);
    return metadata;
  }

  #serverStream(
    method: AnyMethod,
    request: unknown,
    callOptions: BalancedCallOptions | undefined,
  ): AsyncIterable<unknown> {
    const deadline = this.#begin(callOptions);
    return this.#responses(
      () =>
        this.grpcClient.makeServerStreamRequest(
          method.path,
          method.requestSerialize,
          method.responseDeserialize,
          request,
          this.#metadataOf(request, callOptions),
          { deadline },
        ),
      callOptions?.signal,
    );
  }

  #bidi(
    method: AnyMethod,
    requests: Requests<AnyMethod>,
    callOptions: BalancedCallOptions | undefined,
  ): AsyncIterable<unknown> {
    const deadline = this.#begin(callOptions);
    return this.#responses(() => {
      const call = this.grpcClient.makeBidiStreamRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        callOptions?.metadata ?? new grpc.Metadata(),
        { deadline },
      );
      void pump(requests, call);
      return call;
    }, callOptions?.signal);
  }

  #clientStream(
    method: AnyMethod,
    requests: Requests<AnyMethod>,
    callOptions: BalancedCallOptions | undefined,
  ): Promise<unknown> {
    let deadline: number;
    try {
      deadline = this.#begin(callOptions);
    } catch (error) {
      return Promise.reject(LeaseholdError.from(error));
    }
    const signal = callOptions?.signal;
    return new Promise((resolve, reject) => {
      let onAbort: (() => void) | undefined;
      const call = this.grpcClient.makeClientStreamRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        callOptions?.metadata ?? new grpc.Metadata(),
        { deadline },
        (error: grpc.ServiceError | null, response?: unknown) => {
          if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
          if (error === null) resolve(response);
          else reject(signal?.aborted === true ? abortedError(signal) : LeaseholdError.from(error));
        },
      );
      if (signal !== undefined) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
      void pump(requests, call);
    });
  }

  /** The messages of a response stream; ending the iteration early cancels the call. */
  async *#responses(
    open: () => grpc.ClientReadableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<unknown, void, undefined> {
    const call = open();
    call.on("error", () => undefined); // surfaced by the iterator; a late CANCELLED must not crash
    const onAbort = (): void => call.cancel();
    signal?.addEventListener("abort", onAbort, { once: true });
    let isDone = false;
    try {
      for await (const message of call) yield message;
      isDone = true;
    } catch (error) {
      isDone = true;
      throw signal?.aborted === true ? abortedError(signal) : LeaseholdError.from(error);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      if (!isDone) call.cancel();
    }
  }
}

/** Backoff between the attempts of one call: 10–20 ms, doubling, capped at 100–200 ms. */
const BASE_RETRY_BACKOFF_MS = 20;
const MAX_RETRY_BACKOFF_MS = 200;

/** Successful attempt latencies kept for the attempt timeout, and how many it needs first. */
const LATENCY_WINDOW = 256;
const MIN_LATENCY_SAMPLES = 16;

/**
 * The per-attempt timeout: max(floor, 4 × p99 of the last {@link LATENCY_WINDOW} successful
 * attempts), the p99 recomputed at most once a second.
 */
class LatencyTracker {
  readonly #floorMs: number;
  readonly #samples = new Float64Array(LATENCY_WINDOW);
  #count = 0;
  #timeoutMs: number;
  #computedAtMs = 0;

  constructor(floorMs: number) {
    this.#floorMs = floorMs;
    this.#timeoutMs = floorMs;
  }

  record(ms: number): void {
    this.#samples[this.#count % LATENCY_WINDOW] = ms;
    this.#count++;
  }

  /** Infinity until {@link MIN_LATENCY_SAMPLES} attempts succeeded (connections are warm by then). */
  attemptTimeoutMs(nowMs: number): number {
    if (this.#count < MIN_LATENCY_SAMPLES) return Number.POSITIVE_INFINITY;
    if (nowMs - this.#computedAtMs >= 1000) {
      this.#computedAtMs = nowMs;
      const p99 = quantileOf(this.#samples, this.#count, 0.99);
      this.#timeoutMs = Math.max(this.#floorMs, Math.ceil(4 * p99));
    }
    return this.#timeoutMs;
  }
}

/** The proto method name (`Echo`) of a definition entry: the metric label. */
function methodName(method: AnyMethod): string {
  return method.path.slice(method.path.lastIndexOf("/") + 1);
}

/**
 * Writes `requests` to a client or bidi stream, honouring backpressure (`write()` false → wait for
 * `drain`), then half-closes. A failing iterable cancels the call; a call that ended stops it.
 */
async function pump(
  requests: Requests<AnyMethod>,
  call: grpc.ClientWritableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>,
): Promise<void> {
  let isEnded = false;
  let wake: (() => void) | undefined;
  const onEnd = (): void => {
    isEnded = true;
    wake?.();
  };
  call.once("status", onEnd);
  call.once("error", onEnd);
  call.on("error", () => undefined);
  try {
    for await (const request of requests) {
      if (isEnded) return;
      if (!call.write(request)) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          call.once("drain", resolve);
        });
        wake = undefined;
      }
    }
    if (!isEnded) call.end();
  } catch (error) {
    call.cancel();
    void error; // the caller sees CANCELLED from the call; the iterable's own error is its owner's
  } finally {
    call.off("status", onEnd);
  }
}

function abortedError(signal: AbortSignal): LeaseholdError {
  return new LeaseholdError("CANCELLED", "call cancelled by its AbortSignal", { cause: signal.reason });
}

/**
 * Creates a balanced client for the grpc-js service `definition` (ts-proto's `EchoServiceService`,
 * or a `@grpc/proto-loader` service). No I/O until the first call or {@link BalancedClient.start}.
 * Unary calls pick an instance (sync), and retry `UNAVAILABLE`/`RESOURCE_EXHAUSTED` on a different
 * instance up to `maxAttempts`, within one deadline; never after an abort, never caller faults.
 * Streams are not retried. With no instance to pick, a call rejects with `UNAVAILABLE` saying why.
 *
 * @throws LeaseholdError `INVALID_ARGUMENT` on bad options.
 */
export function createBalancedClient<D extends grpc.ServiceDefinition>(
  definition: D,
  options: BalancedClientOptions,
): BalancedClient<D> {
  return new BalancedClientImpl(definition, options);
}
