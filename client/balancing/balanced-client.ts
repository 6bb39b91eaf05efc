/**
 * The balanced client (DESIGN §5): typed, promise-based unary methods over a ts-proto grpc-js
 * service definition, spread over the instances of one service by a picker, with one breaker and
 * one grpc-js channel per instance, and a retry on a different instance for retryable failures.
 */
import * as grpc from "@grpc/grpc-js";
import { pino, type Logger } from "pino";
import type { MembershipSnapshot, MembershipSource } from "../discovery/membership.js";
import type { ClientMetrics } from "../metrics/client-metrics.js";
import {
  BREAKER_STATE_VALUE,
  type BreakerOptions,
  type BreakerState,
  InstanceBreaker,
  type ResolvedBreakerOptions,
  resolveBreakerOptions,
} from "../breaker/instance-breaker.js";
import { LeaseholdError, type StatusCodeName } from "../errors.js";
import { InstanceStatus, type Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { createPicker, isPolicyName, type Pickable, type Picker, type PolicyName } from "./policies.js";

/** Options of {@link createBalancedClient}. Durations in milliseconds. */
export interface BalancedClientOptions {
  /** Service name, as registered (the `service` label of every metric). */
  readonly service: string;
  /** Where the instances come from (a registry watch, or `staticMembership`). */
  readonly membership: MembershipSource;
  /** Load-balancing policy. Default `round_robin`. */
  readonly policy?: PolicyName;
  /** Caller-side metrics (DESIGN §7); none recorded when absent. */
  readonly metrics?: ClientMetrics;
  /** Deadline of a whole call, all attempts included. Default 5000. */
  readonly deadlineMs?: number;
  /** Attempts per call, each on a different instance. Default 3. */
  readonly maxAttempts?: number;
  /** Breaker tuning; see `DEFAULT_BREAKER_OPTIONS`. */
  readonly breaker?: BreakerOptions;
  /** Uniform in [0, 1). Default `Math.random`. */
  readonly random?: () => number;
  /**
   * grpc-js channel options of every instance's channel. `grpc.use_local_subchannel_pool`
   * defaults to 1 here, so closing the channel of an instance that left closes its connection at
   * once (the global pool keeps it up to 10 s).
   */
  readonly channelOptions?: grpc.ChannelOptions;
  /** Channel credentials. Default insecure. */
  readonly credentials?: grpc.ChannelCredentials;
  /** pino logger for membership and breaker transitions. Default silent. */
  readonly logger?: Logger;
}

/** Per-call options. */
export interface BalancedCallOptions {
  /** Aborting cancels the call in flight; it rejects with `CANCELLED` and is never retried. */
  readonly signal?: AbortSignal;
  /** Deadline of this call, all attempts included; overrides the client's `deadlineMs`. */
  readonly deadlineMs?: number;
}

type AnyMethod = grpc.MethodDefinition<unknown, unknown>;
type UnaryMethodKeys<D> = {
  [K in keyof D & string]: D[K] extends { readonly requestStream: false; readonly responseStream: false }
    ? K
    : never;
}[keyof D & string];
type RequestOf<M> = M extends { requestSerialize: (value: infer Req) => Buffer } ? Req : never;
type ResponseOf<M> = M extends { responseDeserialize: (value: Buffer) => infer Res } ? Res : never;

/** One promise-returning function per unary method of the definition (`add`, `echo`, ...). */
export type BalancedMethods<D> = {
  readonly [K in UnaryMethodKeys<D>]: (
    request: RequestOf<D[K]>,
    callOptions?: BalancedCallOptions,
  ) => Promise<ResponseOf<D[K]>>;
};

/** What a caller knows about one listed instance (`leasehold call --json`, the demo's live view). */
export interface InstanceStats {
  readonly instanceId: string;
  readonly address: string;
  readonly weight: number;
  readonly status: "SERVING" | "DRAINING";
  /** Attempts made on this instance (retries included; breaker rejections excluded). */
  readonly calls: number;
  /** Attempts that ended with a code other than OK. */
  readonly errors: number;
  /** Median and 99th percentile latency over the last {@link LATENCY_SAMPLES} attempts, ms; 0 before any. */
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly breaker: BreakerState;
  /** Calls in flight now. */
  readonly outstanding: number;
}

/** A balanced client over one service. */
export interface BalancedClient<D> extends AsyncDisposable {
  readonly service: string;
  readonly policy: PolicyName;
  /** The typed unary methods. Calls reject only with `LeaseholdError`. */
  readonly methods: BalancedMethods<D>;
  /** etcd revision of the membership applied last ("" before the first). */
  readonly membershipRevision: string;
  /**
   * Subscribes to the membership source and opens (lazily connecting) channels. Idempotent; the
   * first call starts the client if needed. No network I/O until a call.
   */
  start(): void;
  /** Per listed instance, in `instanceId` order. */
  stats(): InstanceStats[];
  /** Calls `listener` after membership or breaker changes; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
  /** Unsubscribes, closes every channel, shuts every breaker down, removes metric series. Idempotent. */
  close(): Promise<void>;
}

/** Latency samples kept per instance for p50/p99 (a ring buffer). */
export const LATENCY_SAMPLES = 1024;

interface ResolvedOptions {
  readonly service: string;
  readonly membership: MembershipSource;
  readonly policy: PolicyName;
  readonly metrics: ClientMetrics | undefined;
  readonly deadlineMs: number;
  readonly maxAttempts: number;
  readonly breaker: ResolvedBreakerOptions;
  readonly random: () => number;
  readonly channelOptions: grpc.ChannelOptions;
  readonly credentials: grpc.ChannelCredentials;
  readonly logger: Logger;
}

function resolveOptions(options: BalancedClientOptions): ResolvedOptions {
  const invalid = (message: string): never => {
    throw new LeaseholdError("INVALID_ARGUMENT", `balanced client: ${message}`);
  };
  if (typeof options.service !== "string" || options.service === "")
    invalid("service must be a non-empty string");
  const policy = options.policy ?? "round_robin";
  if (!isPolicyName(policy)) invalid(`unknown policy "${String(policy)}"`);
  const deadlineMs = options.deadlineMs ?? 5000;
  if (!(Number.isFinite(deadlineMs) && deadlineMs > 0)) invalid("deadlineMs must be > 0");
  const maxAttempts = options.maxAttempts ?? 3;
  if (!(Number.isInteger(maxAttempts) && maxAttempts >= 1)) invalid("maxAttempts must be an integer ≥ 1");
  return Object.freeze({
    service: options.service,
    membership: options.membership,
    policy,
    metrics: options.metrics,
    deadlineMs,
    maxAttempts,
    breaker: resolveBreakerOptions(options.breaker),
    random: options.random ?? Math.random,
    channelOptions: Object.freeze({ "grpc.use_local_subchannel_pool": 1, ...options.channelOptions }),
    credentials: options.credentials ?? grpc.credentials.createInsecure(),
    logger: (options.logger ?? pino({ enabled: false })).child({ service: options.service }),
  });
}

/** One listed instance: its channel, breaker, load and latency samples. */
class Endpoint implements Pickable {
  instance: Instance;
  readonly channel: grpc.Client;
  readonly breaker: InstanceBreaker;
  outstanding = 0;
  calls = 0;
  errors = 0;
  isClosed = false;
  readonly #latenciesMs = new Float64Array(LATENCY_SAMPLES);
  #latencyCount = 0;

  constructor(instance: Instance, channel: grpc.Client, breaker: InstanceBreaker) {
    this.instance = instance;
    this.channel = channel;
    this.breaker = breaker;
  }

  get instanceId(): string {
    return this.instance.instanceId;
  }
  get weight(): number {
    return this.instance.weight;
  }
  get isServing(): boolean {
    return this.instance.status === InstanceStatus.INSTANCE_STATUS_SERVING;
  }
  get isBreakerAdmitting(): boolean {
    return this.breaker.isAdmitting;
  }

  recordLatency(ms: number): void {
    this.#latenciesMs[this.#latencyCount % LATENCY_SAMPLES] = ms;
    this.#latencyCount++;
  }

  stats(): InstanceStats {
    const sorted = this.#latenciesMs.slice(0, Math.min(this.#latencyCount, LATENCY_SAMPLES)).sort();
    const quantile = (q: number): number =>
      sorted.length === 0 ? 0 : (sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0);
    return {
      instanceId: this.instanceId,
      address: this.instance.address,
      weight: this.weight,
      status: this.isServing ? "SERVING" : "DRAINING",
      calls: this.calls,
      errors: this.errors,
      p50Ms: quantile(0.5),
      p99Ms: quantile(0.99),
      breaker: this.breaker.state,
      outstanding: this.outstanding,
    };
  }
}

/** A unary method, resolved once: its path, codecs and metric label. */
interface UnaryMethod {
  readonly path: string;
  /** Proto method name (`Echo`), the `method` label. */
  readonly name: string;
  readonly serialize: (value: unknown) => Buffer;
  readonly deserialize: (bytes: Buffer) => unknown;
}

class BalancedClientImpl<D extends grpc.ServiceDefinition> implements BalancedClient<D> {
  readonly service: string;
  readonly policy: PolicyName;
  readonly methods: BalancedMethods<D>;
  readonly #options: ResolvedOptions;
  readonly #endpoints = new Map<string, Endpoint>();
  /** Endpoints in membership order, the picker's input. */
  #ordered: Endpoint[] = [];
  #picker: Picker<Endpoint>;
  #revision = "";
  #isStarted = false;
  #isClosed = false;
  #unsubscribe: () => void = () => undefined;
  readonly #listeners = new Set<() => void>();

  constructor(definition: D, options: ResolvedOptions) {
    this.#options = options;
    this.service = options.service;
    this.policy = options.policy;
    this.#picker = createPicker<Endpoint>(options.policy, [], { random: options.random });
    const methods: Record<string, (request: unknown, callOptions?: BalancedCallOptions) => Promise<unknown>> =
      {};
    for (const [key, definitionOfMethod] of Object.entries(definition) as [string, AnyMethod][]) {
      if (definitionOfMethod.requestStream || definitionOfMethod.responseStream) continue;
      const method: UnaryMethod = Object.freeze({
        path: definitionOfMethod.path,
        name:
          definitionOfMethod.originalName ??
          definitionOfMethod.path.slice(definitionOfMethod.path.lastIndexOf("/") + 1),
        serialize: definitionOfMethod.requestSerialize,
        deserialize: definitionOfMethod.responseDeserialize,
      });
      methods[key] = (request, callOptions) => this.#call(method, request, callOptions);
    }
    this.methods = Object.freeze(methods) as unknown as BalancedMethods<D>;
  }

  get membershipRevision(): string {
    return this.#revision;
  }

  start(): void {
    if (this.#isStarted || this.#isClosed) return;
    this.#isStarted = true;
    this.#unsubscribe = this.#options.membership.subscribe((snapshot) => this.#apply(snapshot));
    this.#apply(this.#options.membership.current());
  }

  stats(): InstanceStats[] {
    return this.#ordered.map((endpoint) => endpoint.stats());
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  close(): Promise<void> {
    if (this.#isClosed) return Promise.resolve();
    this.#isClosed = true;
    this.#unsubscribe();
    for (const endpoint of this.#endpoints.values()) this.#retire(endpoint);
    this.#endpoints.clear();
    this.#ordered = [];
    this.#picker = createPicker<Endpoint>(this.policy, [], { random: this.#options.random });
    this.#listeners.clear();
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- membership ----

  #apply(snapshot: MembershipSnapshot): void {
    if (this.#isClosed) return;
    const { logger } = this.#options;
    const ordered: Endpoint[] = [];
    const listed = new Set<string>();
    for (const instance of snapshot.instances) {
      if (listed.has(instance.instanceId)) continue;
      listed.add(instance.instanceId);
      let endpoint = this.#endpoints.get(instance.instanceId);
      if (endpoint !== undefined && endpoint.instance.address !== instance.address) {
        logger.info(
          { instanceId: instance.instanceId, address: instance.address },
          "instance moved; reconnecting",
        );
        this.#retire(endpoint);
        endpoint = undefined;
      }
      if (endpoint === undefined) {
        endpoint = this.#open(instance);
        this.#endpoints.set(instance.instanceId, endpoint);
        logger.debug({ instanceId: instance.instanceId, address: instance.address }, "instance added");
      } else {
        endpoint.instance = instance; // weight, status, metadata: no reconnect
      }
      ordered.push(endpoint);
    }
    for (const [instanceId, endpoint] of this.#endpoints) {
      if (listed.has(instanceId)) continue;
      this.#endpoints.delete(instanceId);
      this.#retire(endpoint);
      logger.debug({ instanceId }, "instance removed");
    }
    this.#ordered = ordered;
    this.#revision = snapshot.revision;
    this.#rebuild();
  }

  #open(instance: Instance): Endpoint {
    const { service, metrics, logger, breaker: breakerOptions, credentials, channelOptions } = this.#options;
    const instanceId = instance.instanceId;
    const channel = new grpc.Client(instance.address, credentials, channelOptions);
    // The callback runs only after a fire(), when `endpoint` is initialised.
    const breaker = new InstanceBreaker(instanceId, breakerOptions, (state, previous) => {
      if (endpoint.isClosed) return;
      logger[state === "open" ? "warn" : "info"]({ instanceId, state, previous }, `breaker ${state}`);
      metrics?.breakerState.set({ service, instance_id: instanceId }, BREAKER_STATE_VALUE[state]);
      this.#rebuild();
    });
    const endpoint = new Endpoint(instance, channel, breaker);
    metrics?.breakerState.set({ service, instance_id: instanceId }, BREAKER_STATE_VALUE.closed);
    return endpoint;
  }

  #retire(endpoint: Endpoint): void {
    if (endpoint.isClosed) return;
    endpoint.isClosed = true;
    endpoint.breaker.shutdown();
    endpoint.channel.close();
    this.#options.metrics?.forgetInstance(this.service, endpoint.instanceId);
  }

  #rebuild(): void {
    this.#picker = createPicker(this.policy, this.#ordered, {
      random: this.#options.random,
      previous: this.#picker,
    });
    for (const listener of this.#listeners) {
      try {
        listener();
      } catch (error) {
        this.#options.logger.error({ err: error }, "onChange listener threw");
      }
    }
  }

  // ---- calls ----

  async #call(
    method: UnaryMethod,
    request: unknown,
    callOptions: BalancedCallOptions | undefined,
  ): Promise<unknown> {
    if (!this.#isStarted) this.start();
    if (this.#isClosed)
      throw new LeaseholdError("FAILED_PRECONDITION", `balanced client of service ${this.service} is closed`);
    const signal = callOptions?.signal;
    if (isAborted(signal)) throw abortedError(signal);
    const deadlineMs = callOptions?.deadlineMs ?? this.#options.deadlineMs;
    if (!(deadlineMs > 0 && Number.isFinite(deadlineMs))) {
      throw new LeaseholdError("INVALID_ARGUMENT", `deadlineMs must be > 0, got ${deadlineMs}`);
    }
    const deadline = Date.now() + deadlineMs;
    const maxAttempts = this.#options.maxAttempts;
    let tried: Set<string> | undefined;
    let lastError: LeaseholdError | undefined;
    let attempts = 0;
    while (attempts < maxAttempts) {
      const endpoint = this.#picker.pick(tried);
      if (endpoint === undefined) break;
      if (!endpoint.breaker.isCallPermitted) {
        // Half-open with its one trial in flight: pick another without spending an attempt.
        (tried ??= new Set()).add(endpoint.instanceId);
        continue;
      }
      if (attempts > 0 && Date.now() >= deadline) break;
      attempts++;
      try {
        return await endpoint.breaker.fire(() => this.#attempt(endpoint, method, request, deadline, signal));
      } catch (thrown) {
        if (isAborted(signal)) throw abortedError(signal);
        const error = LeaseholdError.from(thrown);
        if (!error.retryable) throw error;
        lastError = error;
        (tried ??= new Set()).add(endpoint.instanceId);
      }
    }
    if (lastError !== undefined) {
      if (attempts < maxAttempts && Date.now() >= deadline) {
        throw new LeaseholdError(
          "DEADLINE_EXCEEDED",
          `deadline of ${deadlineMs} ms exceeded after ${attempts} attempt(s): ${lastError.message}`,
          {
            cause: lastError,
          },
        );
      }
      throw lastError;
    }
    throw this.#noInstanceError(tried);
  }

  #attempt(
    endpoint: Endpoint,
    method: UnaryMethod,
    request: unknown,
    deadline: number,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const started = performance.now();
      let onAbort: (() => void) | undefined;
      const call = endpoint.channel.makeUnaryRequest(
        method.path,
        method.serialize,
        method.deserialize,
        request,
        { deadline },
        (error: grpc.ServiceError | null, response?: unknown) => {
          endpoint.outstanding--;
          if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
          const ms = performance.now() - started;
          if (error === null) {
            this.#record(endpoint, method, "OK", ms);
            resolve(response);
          } else {
            const failure = LeaseholdError.from(error);
            this.#record(endpoint, method, failure.code, ms);
            reject(failure);
          }
        },
      );
      endpoint.outstanding++; // after makeUnaryRequest, which may throw; its callback is always async
      if (signal !== undefined) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  #record(endpoint: Endpoint, method: UnaryMethod, code: StatusCodeName, ms: number): void {
    if (endpoint.isClosed) return; // left meanwhile: its series are gone and must stay gone
    endpoint.calls++;
    if (code !== "OK") endpoint.errors++;
    endpoint.recordLatency(ms);
    this.#options.metrics?.recordCall(this.service, endpoint.instanceId, method.name, code, ms / 1000);
  }

  #noInstanceError(tried: ReadonlySet<string> | undefined): LeaseholdError {
    const counts = {
      draining: 0,
      "weight 0": 0,
      "breaker open": 0,
      "breaker half-open with a trial in flight": 0,
    };
    for (const endpoint of this.#ordered) {
      if (!endpoint.isServing) counts.draining++;
      else if (endpoint.weight <= 0) counts["weight 0"]++;
      else if (!endpoint.breaker.isAdmitting) counts["breaker open"]++;
      else if (tried?.has(endpoint.instanceId) === true) counts["breaker half-open with a trial in flight"]++;
    }
    const reasons = Object.entries(counts)
      .filter(([, n]) => n > 0)
      .map(([reason, n]) => `${n} ${reason}`);
    const listed = `${this.#ordered.length} listed${reasons.length > 0 ? `: ${reasons.join(", ")}` : ""}`;
    return new LeaseholdError("UNAVAILABLE", `no available instance of service ${this.service} (${listed})`);
  }
}

/** A function, not an inline check: TS would keep `aborted` narrowed to false across awaits. */
function isAborted(signal: AbortSignal | undefined): signal is AbortSignal {
  return signal !== undefined && signal.aborted;
}

function abortedError(signal: AbortSignal): LeaseholdError {
  return new LeaseholdError("CANCELLED", "call cancelled by its AbortSignal", { cause: signal.reason });
}

/**
 * Creates a balanced client for the ts-proto grpc-js service `definition` (e.g.
 * `EchoServiceService`). No I/O: channels connect on the first call. Throws `LeaseholdError`
 * `INVALID_ARGUMENT` on bad options. Calls pick an instance (sync), run under its breaker, record
 * metrics, and retry `UNAVAILABLE`/`RESOURCE_EXHAUSTED` (an open breaker included) on a different
 * instance up to `maxAttempts`, within one deadline; never after an abort, never caller faults.
 * With no instance to pick, a call rejects with `UNAVAILABLE` saying why.
 */
export function createBalancedClient<D extends grpc.ServiceDefinition>(
  definition: D,
  options: BalancedClientOptions,
): BalancedClient<D> {
  return new BalancedClientImpl(definition, resolveOptions(options));
}
