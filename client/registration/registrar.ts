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
  /** Deadline of each unary call to the registry; default 3000. */
  readonly callTimeoutMs?: number | undefined;
  /** Re-registration backoff; default 100 ms × 1.6 up to 5 s, full jitter. */
  readonly backoff?: BackoffOptions | undefined;
  readonly logger?: Logger | undefined;
}

/** idle → registering → registered → (lease lost) registering … ; stop() → idle; close() → closed. */
export type RegistrarState = "idle" | "registering" | "registered" | "closed";

/** Codes after which retrying the same Register cannot succeed. */
const PERMANENT_CODES: ReadonlySet<number> = new Set([
  status.INVALID_ARGUMENT,
  status.UNIMPLEMENTED,
  status.PERMISSION_DENIED,
  status.UNAUTHENTICATED,
]);

/**
 * Holds one instance's registration: Register → KeepAlive every TTL/3 (as etcd3 does) → on
 * `NOT_FOUND`, or when no keepalive was answered for a whole TTL, register again with backoff.
 * That detects a lost lease within one TTL, where etcd3's own lease reports `lost` only after 2 × TTL.
 *
 * Shutdown is the caller's sequence: {@link drain} (callers stop picking it), wait a drain window,
 * then {@link stop} (Deregister: the key disappears at once). A crash is cleaned up by TTL expiry.
 */
export class Registrar {
  readonly #registry: RegistryServiceClient;
  readonly #ttlSeconds: number;
  readonly #callTimeoutMs: number;
  readonly #backoff: Backoff;
  readonly #logger: Logger | undefined;
  #instance: InstanceRegistration & { status: InstanceStatus };
  #state: RegistrarState = "idle";
  #lease: RegisterResponse | undefined;
  #stopping: AbortController | undefined;
  #loop: Promise<void> | undefined;

  constructor(options: RegistrarOptions) {
    this.#registry = options.registry;
    this.#ttlSeconds = options.ttlSeconds ?? 10;
    this.#callTimeoutMs = options.callTimeoutMs ?? 3000;
    this.#backoff = new Backoff(options.backoff);
    this.#logger = options.logger;
    this.#instance = { ...options.instance, status: InstanceStatus.INSTANCE_STATUS_SERVING };
  }

  get state(): RegistrarState {
    return this.#state;
  }

  /** The lease id (decimal string) while registered. */
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
   * Changes weight, status or zone; remembered for later re-registrations too.
   * @throws ServiceError NOT_FOUND/PERMISSION_DENIED when the lease no longer holds the instance.
   */
  async update(change: { weight?: number; status?: InstanceStatus; zone?: string }): Promise<void> {
    this.#instance = { ...this.#instance, ...change };
    const lease = this.#lease;
    if (lease === undefined) return;
    await this.#unary<UpdateInstanceRequest, UpdateInstanceResponse>((request, metadata, options, callback) =>
      this.#registry.updateInstance(request, metadata, options, callback),
    )({
      service: this.#instance.service,
      instanceId: this.#instance.instanceId,
      leaseId: lease.leaseId,
      ...change,
      metadata: undefined,
    });
  }

  /** Stops keepalives and deregisters (the key disappears at once); {@link start} may follow. Idempotent. */
  async stop(): Promise<void> {
    this.#stopping?.abort();
    await this.#loop;
    this.#loop = undefined;
    const lease = this.#lease;
    this.#lease = undefined;
    if (this.#state !== "closed") this.#state = "idle";
    if (lease === undefined) return;
    try {
      await this.#unary<DeregisterRequest, DeregisterResponse>((request, metadata, options, callback) =>
        this.#registry.deregister(request, metadata, options, callback),
      )({ service: this.#instance.service, instanceId: this.#instance.instanceId, leaseId: lease.leaseId });
      this.#logger?.info({ instanceId: this.#instance.instanceId }, "deregistered");
    } catch (error) {
      // The lease expires by itself after its TTL; nothing else to do.
      this.#logger?.warn({ err: error }, "deregister failed; the lease will expire after its TTL");
    }
  }

  /** {@link stop}, for good. Idempotent. */
  async close(): Promise<void> {
    await this.stop();
    this.#state = "closed";
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
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
      this.#state = "registering";
      try {
        this.#lease = await this.#register();
      } catch (error) {
        const code = (error as Partial<ServiceError>).code;
        if (code !== undefined && PERMANENT_CODES.has(code)) {
          hooks.onRefused(error);
          this.#state = "idle";
          return;
        }
        const delayMs = this.#backoff.next();
        this.#logger?.warn({ err: error, retryInMs: Math.round(delayMs) }, "register failed; retrying");
        await sleep(delayMs, signal);
        continue;
      }
      if (signal.aborted) return; // stop() deregisters the lease just granted
      this.#backoff.reset();
      this.#state = "registered";
      this.#logger?.info(
        {
          instanceId: this.#instance.instanceId,
          leaseId: this.#lease.leaseId,
          ttlSeconds: this.#lease.ttlSeconds,
        },
        "registered",
      );
      hooks.onRegistered();
      const reason = await this.#holdLease(this.#lease, signal);
      if (signal.aborted) return;
      this.#lease = undefined;
      this.#logger?.warn({ instanceId: this.#instance.instanceId, reason }, "lease lost; registering again");
    }
  }

  async #register(): Promise<RegisterResponse> {
    const instance = this.#instance;
    return await this.#unary<RegisterRequest, RegisterResponse>((request, metadata, options, callback) =>
      this.#registry.register(request, metadata, options, callback),
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
    });
  }

  /**
   * Sends a keepalive every TTL/3 over one KeepAlive stream (reopened on the next tick after a
   * break) and resolves with the reason once the lease is lost: NOT_FOUND, or no answer for a TTL.
   */
  async #holdLease(lease: RegisterResponse, signal: AbortSignal): Promise<string> {
    const ttlMs = Number(lease.ttlSeconds) * 1000;
    return await new Promise<string>((resolve) => {
      let stream: ClientDuplexStream<KeepAliveRequest, KeepAliveResponse> | undefined;
      let lossTimer: NodeJS.Timeout | undefined;
      const armLossTimer = (): void => {
        clearTimeout(lossTimer);
        lossTimer = setTimeout(() => finish(`no keepalive answered for a whole TTL (${ttlMs} ms)`), ttlMs);
        lossTimer.unref();
      };
      const finish = (reason: string): void => {
        clearInterval(ticker);
        clearTimeout(lossTimer);
        signal.removeEventListener("abort", onAbort);
        stream?.cancel();
        stream = undefined;
        resolve(reason);
      };
      const onAbort = (): void => finish("stopped");
      const open = (): void => {
        const opened = this.#registry.keepAlive();
        stream = opened;
        opened.on("data", (response: KeepAliveResponse) => {
          if (Number(response.ttlSeconds) > 0) armLossTimer();
        });
        opened.on("error", (error: ServiceError) => {
          if (opened !== stream) return;
          stream = undefined;
          if (error.code === status.NOT_FOUND) finish(`lease ${lease.leaseId} not found`);
        });
        opened.on("end", () => {
          if (opened === stream) stream = undefined;
        });
        opened.write({ leaseId: lease.leaseId });
      };
      const ticker = setInterval(() => {
        if (stream === undefined) open();
        else stream.write({ leaseId: lease.leaseId });
      }, ttlMs / 3);
      ticker.unref();
      armLossTimer();
      signal.addEventListener("abort", onAbort, { once: true });
      open();
    });
  }

  /** Promise form of a generated unary method, with this registrar's deadline. */
  #unary<Req, Res>(
    method: (
      request: Req,
      metadata: Metadata,
      options: { deadline: Date },
      callback: (error: ServiceError | null, response: Res) => void,
    ) => unknown,
  ): (request: Req) => Promise<Res> {
    return async (request) =>
      await new Promise<Res>((resolve, reject) => {
        method(
          request,
          new Metadata(),
          { deadline: new Date(Date.now() + this.#callTimeoutMs) },
          (error, response) => (error === null ? resolve(response) : reject(error)),
        );
      });
  }
}
