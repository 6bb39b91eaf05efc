import { randomBytes } from "node:crypto";
import { Metadata, status, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import type { Logger } from "pino";
import {
  InstanceStatus,
  type DeregisterRequest,
  type DeregisterResponse,
  type KeepAliveRequest,
  type KeepAliveResponse,
  type RegisterRequest,
  type RegisterResponse,
  type RegistryServiceClient,
  type UpdateInstanceRequest,
  type UpdateInstanceResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { Backoff, sleep, type BackoffOptions } from "../backoff.js";

/** What a service instance registers; see DESIGN §2 for the rules the registry enforces. */
export interface InstanceRegistration {
  readonly service: string;
  readonly instanceId: string;
  /** host:port callers dial. */
  readonly address: string;
  /** 0..10000; default 1. */
  readonly weight?: number | undefined;
  readonly zone?: string | undefined;
  readonly metadata?: Readonly<Record<string, string>> | undefined;
  /** host:port of this instance's /metrics, for Prometheus service discovery. */
  readonly metricsAddress?: string | undefined;
}

/** Options of {@link Registrar}. */
export interface RegistrarOptions {
  readonly registry: RegistryServiceClient;
  readonly instance: InstanceRegistration;
  /** Lease TTL in seconds; default 10. etcd raises TTLs below 2 s to 2 s; the registry refuses > 300. */
  readonly ttlSeconds?: number | undefined;
  /**
   * Deadline of each unary call to the registry, in ms; default 3000. Register waits for a ready
   * connection within it (gRPC wait-for-ready), so it goes out as soon as a registry answers.
   */
  readonly callTimeoutMs?: number | undefined;
  /**
   * Backoff between Register attempts, and between reopens of a broken KeepAlive stream (there
   * capped at TTL/3); default 100 ms × 1.6 up to 1000 ms, full jitter. The cap bounds how long a
   * registrar waits after the registry or etcd answers again.
   */
  readonly backoff?: BackoffOptions | undefined;
  readonly logger?: Logger | undefined;
  /**
   * Called synchronously on every change of {@link Registrar.state}, with the new and the previous
   * state (e.g. to show `stale` in a UI or a health check). Must not throw.
   */
  readonly onStateChanged?: ((state: RegistrarState, previous: RegistrarState) => void) | undefined;
}

/**
 * idle → registering → registered ⇄ stale; registered/stale → (NOT_FOUND: lease lost) registering …;
 * stop() → idle; close() → closed.
 *
 * `stale`: the registrar holds a lease but no keepalive was answered for a whole TTL (etcd or every
 * registry replica is away). It keeps the lease and keeps trying; the lease may still be alive (an
 * etcd restart restores leases with a full TTL), and only the registry's `NOT_FOUND` proves it gone.
 */
export type RegistrarState = "idle" | "registering" | "registered" | "stale" | "closed";

/** Codes after which retrying the same Register cannot succeed. */
const PERMANENT_CODES: ReadonlySet<number> = new Set([
  status.INVALID_ARGUMENT,
  status.UNIMPLEMENTED,
  status.PERMISSION_DENIED,
  status.UNAUTHENTICATED,
]);

/**
 * The server's retry pushback of a failed call, in ms: its `grpc-retry-pushback-ms` trailer
 * (gRFC A6), a non-negative integer; undefined when absent or malformed.
 */
export function retryPushbackMs(error: unknown): number | undefined {
  const metadata = (error as Partial<ServiceError> | undefined)?.metadata;
  const value = metadata instanceof Metadata ? metadata.get("grpc-retry-pushback-ms")[0] : undefined;
  return typeof value === "string" && /^\d{1,9}$/.test(value) ? Number(value) : undefined;
}

/**
 * Holds one instance's registration: Register → KeepAlive every TTL/3 (as etcd3 does) → on
 * `NOT_FOUND` only, register again (at once, then with backoff). A failed Register is retried after
 * a jittered backoff, or after the registry's `grpc-retry-pushback-ms` if that is longer (an
 * overloaded registry sheds Registers with RESOURCE_EXHAUSTED and a pushback). A lease is never abandoned because
 * keepalives went unanswered: while etcd or the registry is away the registrar turns `stale`, keeps
 * its lease and keeps sending keepalives; an etcd that comes back restores the lease, and a lease
 * that expired meanwhile answers `NOT_FOUND` on the first keepalive the registry can answer.
 *
 * Every Register of one {@link start} carries the same random registration id (128 bits, hex), so a
 * Register abandoned at its deadline and completed later is adopted by the next attempt instead of
 * blocking it with `ALREADY_EXISTS`.
 *
 * The registration token each Register returns goes with every KeepAlive, UpdateInstance and
 * Deregister (the lease id alone proves nothing). A KeepAlive refused with `PERMISSION_DENIED`
 * (the token is not the instance's, e.g. a value written before tokens) registers again: the same
 * registration id adopts the same lease and gets a fresh token. The token is never logged.
 *
 * With several registry replicas on one channel ({@link connectRegistry} with `a:1,b:2`), a broken
 * KeepAlive stream is reopened at once on a ready replica, and a stream whose keepalive is
 * unanswered for TTL/6 is replaced by a new one, which the channel's round robin puts on the next
 * replica. Register and KeepAlive wait for a ready connection (gRPC wait-for-ready).
 *
 * Shutdown is the caller's sequence: {@link drain} (callers stop picking it), wait a drain window,
 * then {@link stop} (Deregister: the key disappears at once). A crash is cleaned up by TTL expiry.
 */
export class Registrar {
  readonly #registry: RegistryServiceClient;
  readonly #ttlSeconds: number;
  readonly #callTimeoutMs: number;
  readonly #backoffOptions: BackoffOptions & { readonly initialDelayMs: number; readonly maxDelayMs: number };
  readonly #backoff: Backoff;
  readonly #logger: Logger | undefined;
  readonly #onStateChanged: ((state: RegistrarState, previous: RegistrarState) => void) | undefined;
  #instance: InstanceRegistration & { status: InstanceStatus };
  #state: RegistrarState = "idle";
  #lease: RegisterResponse | undefined;
  #registrationId: string | undefined;
  #stopping: AbortController | undefined;
  #loop: Promise<void> | undefined;

  constructor(options: RegistrarOptions) {
    this.#registry = options.registry;
    this.#ttlSeconds = options.ttlSeconds ?? 10;
    this.#callTimeoutMs = options.callTimeoutMs ?? 3000;
    this.#backoffOptions = Object.freeze({
      initialDelayMs: 100,
      multiplier: 1.6,
      maxDelayMs: 1000,
      ...options.backoff,
    });
    this.#backoff = new Backoff(this.#backoffOptions);
    this.#logger = options.logger;
    this.#onStateChanged = options.onStateChanged;
    this.#instance = { ...options.instance, status: InstanceStatus.INSTANCE_STATUS_SERVING };
  }

  get state(): RegistrarState {
    return this.#state;
  }

  /** The lease id (decimal string) while registered (also while `stale`). */
  get leaseId(): string | undefined {
    return this.#lease?.leaseId;
  }

  /**
   * Registers and keeps the lease alive until {@link stop}. Resolves after the first successful
   * Register; re-registrations after a lost lease happen in the background.
   * @throws ServiceError with the registry's code when Register is refused for good (INVALID_ARGUMENT ...).
   */
  async start(): Promise<void> {
    if (this.#state === "closed") throw new Error("registrar is closed");
    if (this.#loop !== undefined) return;
    const stopping = new AbortController();
    this.#stopping = stopping;
    this.#registrationId = randomBytes(16).toString("hex");
    let settle: { resolve: () => void; reject: (error: unknown) => void } | undefined;
    const registered = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    this.#loop = this.#run(stopping.signal, {
      onRegistered: () => settle?.resolve(),
      onRefused: (error) => settle?.reject(error),
    });
    try {
      await registered;
    } catch (error) {
      this.#loop = undefined;
      throw error;
    }
  }

  /** Marks the instance DRAINING: it stays listed but callers send it no new calls. */
  async drain(): Promise<void> {
    await this.update({ status: InstanceStatus.INSTANCE_STATUS_DRAINING });
  }

  /**
   * Changes weight (0–10000), status, zone and/or metadata (the whole map, replaced) live: callers
   * see the change through their Watch stream and keep their connections. Remembered for later
   * re-registrations too. Before the first registration it only changes what will be registered.
   * @throws ServiceError INVALID_ARGUMENT for a bad value (DESIGN §2 limits);
   *   NOT_FOUND/PERMISSION_DENIED when the lease or token no longer holds the instance.
   */
  async update(change: {
    weight?: number;
    status?: InstanceStatus;
    zone?: string;
    metadata?: Readonly<Record<string, string>>;
  }): Promise<void> {
    this.#instance = { ...this.#instance, ...change };
    const lease = this.#lease;
    if (lease === undefined) return;
    const { metadata, ...rest } = change;
    await this.#unary<UpdateInstanceRequest, UpdateInstanceResponse>(
      (request, callMetadata, options, callback) =>
        this.#registry.updateInstance(request, callMetadata, options, callback),
    )({
      service: this.#instance.service,
      instanceId: this.#instance.instanceId,
      leaseId: lease.leaseId,
      registrationToken: lease.registrationToken,
      ...rest,
      metadata: metadata === undefined ? undefined : { entries: { ...metadata } },
    });
  }

  /** Stops keepalives and deregisters (the key disappears at once); {@link start} may follow. Idempotent. */
  async stop(): Promise<void> {
    this.#stopping?.abort();
    await this.#loop;
    this.#loop = undefined;
    const lease = this.#lease;
    this.#lease = undefined;
    if (this.#state !== "closed") this.#setState("idle");
    if (lease === undefined) return;
    try {
      await this.#unary<DeregisterRequest, DeregisterResponse>((request, metadata, options, callback) =>
        this.#registry.deregister(request, metadata, options, callback),
      )({
        service: this.#instance.service,
        instanceId: this.#instance.instanceId,
        leaseId: lease.leaseId,
        registrationToken: lease.registrationToken,
      });
      this.#logger?.info({ instanceId: this.#instance.instanceId }, "deregistered");
    } catch (error) {
      // The lease expires by itself after its TTL; nothing else to do.
      this.#logger?.warn({ err: error }, "deregister failed; the lease will expire after its TTL");
    }
  }

  /** {@link stop}, for good. Idempotent. */
  async close(): Promise<void> {
    await this.stop();
    this.#setState("closed");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #setState(state: RegistrarState): void {
    const previous = this.#state;
    if (state === previous) return;
    this.#state = state;
    this.#onStateChanged?.(state, previous);
  }

  async #run(
    signal: AbortSignal,
    hooks: { onRegistered: () => void; onRefused: (error: unknown) => void },
  ): Promise<void> {
    // stop() before the first Register succeeded: start() must not wait forever.
    signal.addEventListener(
      "abort",
      () => hooks.onRefused(new Error("registrar stopped before it registered")),
      {
        once: true,
      },
    );
    while (!signal.aborted) {
      this.#setState("registering");
      try {
        this.#lease = await this.#register(signal);
      } catch (error) {
        if (signal.aborted) return; // stop() cancelled it
        const code = (error as Partial<ServiceError>).code;
        if (code !== undefined && PERMANENT_CODES.has(code)) {
          hooks.onRefused(error);
          this.#setState("idle");
          return;
        }
        // An overloaded registry says when to come back (gRFC A6 pushback): never sooner.
        const pushbackMs = retryPushbackMs(error);
        const delayMs = Math.max(pushbackMs ?? 0, this.#backoff.next());
        this.#logger?.warn(
          { err: error, code, pushbackMs, retryInMs: Math.round(delayMs) },
          "register failed; retrying",
        );
        await sleep(delayMs, signal);
        continue;
      }
      if (signal.aborted) return; // stop() deregisters the lease just granted
      this.#backoff.reset();
      this.#setState("registered");
      this.#logger?.info(
        { instanceId: this.#instance.instanceId, ttlSeconds: this.#lease.ttlSeconds },
        "registered",
      );
      // Lease ids stay at debug level; the registration token is never logged.
      this.#logger?.debug({ instanceId: this.#instance.instanceId, leaseId: this.#lease.leaseId }, "lease");
      hooks.onRegistered();
      const reason = await this.#holdLease(this.#lease, signal);
      if (signal.aborted) return;
      this.#lease = undefined;
      this.#logger?.warn({ instanceId: this.#instance.instanceId, reason }, "lease lost; registering again");
    }
  }

  async #register(signal: AbortSignal): Promise<RegisterResponse> {
    const instance = this.#instance;
    return await this.#unary<RegisterRequest, RegisterResponse>(
      (request, metadata, options, callback) => this.#registry.register(request, metadata, options, callback),
      { isWaitingForReady: true, signal },
    )({
      service: instance.service,
      instanceId: instance.instanceId,
      address: instance.address,
      weight: instance.weight ?? 1,
      zone: instance.zone ?? "",
      metadata: { ...instance.metadata },
      metricsAddress: instance.metricsAddress ?? "",
      ttlSeconds: String(this.#ttlSeconds),
      status: instance.status,
      registrationId: this.#registrationId,
    });
  }

  /**
   * Sends a keepalive every TTL/3 over one KeepAlive stream and resolves with the reason once the
   * lease is gone (`NOT_FOUND`) or `signal` aborts. A broken stream is reopened after a short
   * backoff; a stream whose keepalive is unanswered for half a tick (TTL/6) is replaced at once (the
   * new one lands on the next ready replica), so keepalives reach a live replica within TTL/2 of the
   * last answer even when a replica freezes instead of failing; further moves without an answer
   * wait a whole tick (TTL/3). No answer for a whole TTL turns the
   * state `stale` (one warning per episode) until the next answer; the lease is kept all along.
   */
  async #holdLease(lease: RegisterResponse, signal: AbortSignal): Promise<string> {
    const ttlMs = Math.max(1, Number(lease.ttlSeconds)) * 1000;
    const intervalMs = ttlMs / 3;
    const reopenBackoff = new Backoff({
      ...this.#backoffOptions,
      initialDelayMs: Math.min(this.#backoffOptions.initialDelayMs, intervalMs),
      maxDelayMs: Math.min(this.#backoffOptions.maxDelayMs, intervalMs),
    });
    const fields = { instanceId: this.#instance.instanceId };
    return await new Promise<string>((resolve) => {
      let stream: ClientDuplexStream<KeepAliveRequest, KeepAliveResponse> | undefined;
      /** Armed by a keepalive sent on `stream`, disarmed by an answer; when it fires the stream moves. */
      let answerTimer: NodeJS.Timeout | undefined;
      /** Streams moved since the last answer: after the first, moves wait a whole tick (less churn). */
      let movesWithoutAnswer = 0;
      let lastAnsweredAt = Date.now();
      let reopenTimer: NodeJS.Timeout | undefined;
      let staleTimer: NodeJS.Timeout | undefined;
      const disarmAnswerTimer = (): void => {
        clearTimeout(answerTimer);
        answerTimer = undefined;
      };
      const armStaleTimer = (): void => {
        clearTimeout(staleTimer);
        staleTimer = setTimeout(markStale, lastAnsweredAt + ttlMs - Date.now());
      };
      const markStale = (): void => {
        if (this.#state !== "registered") return;
        this.#setState("stale");
        this.#logger?.warn(
          { ...fields, unansweredMs: Date.now() - lastAnsweredAt },
          "no keepalive answered for a whole TTL (registry or etcd away); keeping the lease and retrying",
        );
      };
      const finish = (reason: string): void => {
        clearInterval(ticker);
        clearTimeout(staleTimer);
        clearTimeout(reopenTimer);
        clearTimeout(answerTimer);
        signal.removeEventListener("abort", onAbort);
        const last = stream;
        stream = undefined;
        last?.cancel();
        resolve(reason);
      };
      const onAbort = (): void => finish("stopped");
      const send = (): void => {
        stream?.write({ leaseId: lease.leaseId, registrationToken: lease.registrationToken });
        answerTimer ??= setTimeout(
          () => {
            answerTimer = undefined;
            if (stream === undefined) return;
            // No answer in half a tick: this replica (or etcd behind it) is stuck. A new stream goes
            // to the next ready replica (the channel's round robin), the one answering if any. While
            // nothing answers (etcd away), one move per tick, so a registry is not flooded with streams.
            const stuck = stream;
            stream = undefined;
            stuck.cancel();
            movesWithoutAnswer += 1;
            open();
          },
          movesWithoutAnswer === 0 ? intervalMs / 2 : intervalMs,
        );
      };
      const reopenLater = (): void => {
        clearTimeout(reopenTimer);
        reopenTimer = setTimeout(open, reopenBackoff.next());
      };
      const open = (): void => {
        clearTimeout(reopenTimer);
        reopenTimer = undefined;
        disarmAnswerTimer();
        const opened = this.#registry.keepAlive(new Metadata({ waitForReady: true }));
        stream = opened;
        opened.on("data", (response: KeepAliveResponse) => {
          if (opened !== stream) return;
          if (!(Number(response.ttlSeconds) > 0)) {
            finish(`lease ${lease.leaseId} not found (TTL ${response.ttlSeconds})`); // etcd's word for it
            return;
          }
          disarmAnswerTimer();
          lastAnsweredAt = Date.now();
          movesWithoutAnswer = 0;
          reopenBackoff.reset();
          armStaleTimer();
          if (this.#state === "stale") {
            this.#setState("registered");
            this.#logger?.info(fields, "keepalives answered again; the lease was kept");
          }
        });
        opened.on("error", (error: ServiceError) => {
          if (opened !== stream) return;
          stream = undefined;
          disarmAnswerTimer();
          if (error.code === status.NOT_FOUND) {
            finish(`lease ${lease.leaseId} not found`);
            return;
          }
          // The token is not (or no longer) the instance's, e.g. a value written before tokens:
          // Register again; the same registration id adopts the same lease with a fresh token.
          if (error.code === status.PERMISSION_DENIED) {
            finish(`registration token refused: ${error.details}`);
            return;
          }
          this.#logger?.debug({ ...fields, err: error }, "keepalive stream broke; reopening");
          reopenLater();
        });
        opened.on("end", () => {
          if (opened !== stream) return;
          stream = undefined;
          disarmAnswerTimer();
          reopenLater();
        });
        send();
      };
      const ticker = setInterval(() => {
        if (stream !== undefined) send(); // else a reopen is scheduled
      }, intervalMs);
      armStaleTimer();
      signal.addEventListener("abort", onAbort, { once: true });
      open();
    });
  }

  /**
   * Promise form of a generated unary method, with this registrar's deadline; `isWaitingForReady`
   * queues the call until a connection is ready (within the deadline) instead of failing at once;
   * `signal` cancels it (stop() need not wait out a Register queued for a registry that is away).
   */
  #unary<Req, Res>(
    method: (
      request: Req,
      metadata: Metadata,
      options: { deadline: Date },
      callback: (error: ServiceError | null, response: Res) => void,
    ) => { cancel(): void },
    { isWaitingForReady = false, signal }: { isWaitingForReady?: boolean; signal?: AbortSignal } = {},
  ): (request: Req) => Promise<Res> {
    return async (request) =>
      await new Promise<Res>((resolve, reject) => {
        if (signal?.aborted === true) {
          reject(new Error("registrar stopped"));
          return;
        }
        const cancel = (): void => call.cancel();
        const call = method(
          request,
          new Metadata({ waitForReady: isWaitingForReady }),
          { deadline: new Date(Date.now() + this.#callTimeoutMs) },
          (error, response) => {
            signal?.removeEventListener("abort", cancel);
            if (error === null) resolve(response);
            else reject(error);
          },
        );
        signal?.addEventListener("abort", cancel, { once: true });
      });
  }
}
