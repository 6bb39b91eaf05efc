import {
  Metadata,
  credentials,
  status,
  type ClientDuplexStream,
  type ClientReadableStream,
  type ServiceError,
} from "@grpc/grpc-js";
import {
  InstanceStatus,
  RegistryServiceClient,
  type KeepAliveRequest,
  type KeepAliveResponse,
  type RegisterResponse,
  type WatchResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { Backoff, sleep } from "../../client/backoff.js";
import { retryPushbackMs } from "../../client/registration/registrar.js";

/** What {@link startScaleLoad} puts on a registry. */
export interface ScaleLoadOptions {
  /** The registry's `host:port`. */
  readonly address: string;
  /** Instances to register, each with its own KeepAlive stream, as a registrar holds it. */
  readonly instances: number;
  /** Watch streams, each on one service (round robin over the services). */
  readonly watchers: number;
  /** Lease TTL asked for, in seconds; each instance renews every TTL/3 (DESIGN §4). */
  readonly ttlSeconds: number;
  /** Instances per service; default 100. */
  readonly instancesPerService?: number;
  /** Registers in flight at once; default 64. */
  readonly registerConcurrency?: number;
  /**
   * Stop starting Registers after this many ms (a registry that sheds for good would keep the
   * load retrying forever); the instances not registered by then are left out. Default: no limit.
   */
  readonly registerForMs?: number;
}

/** Counts of a running {@link ScaleLoad}; `lostLeases` must stay 0. */
export interface ScaleLoadCounts {
  readonly registered: number;
  /**
   * Registers tried again, as a registrar does: after RESOURCE_EXHAUSTED (an overloaded registry
   * shedding), UNAVAILABLE or DEADLINE_EXCEEDED, waiting the registry's pushback or a jittered
   * backoff, whichever is longer. By the code that refused them.
   */
  readonly registerRetries: Readonly<Record<string, number>>;
  /** The longest `grpc-retry-pushback-ms` a refused Register carried, ms; 0 if none. */
  readonly maxPushbackMs: number;
  readonly renewals: number;
  /**
   * Instances whose lease a registrar would give up or re-register: a KeepAlive answered
   * NOT_FOUND or TTL 0, or went a whole TTL without a successful renewal. Each counted once.
   */
  readonly lostLeases: number;
  /** KeepAlive streams that ended with a status, by gRPC code; one that ended UNAVAILABLE was opened again. */
  readonly keepAliveErrors: Readonly<Record<string, number>>;
  /** The first few KeepAlive errors, `code details`. */
  readonly keepAliveErrorSamples: readonly string[];
  readonly watchMessages: number;
  readonly watchErrors: number;
}

/** The running load: instances held alive, watchers open. */
export interface ScaleLoad {
  /** Lease id of each registered instance, by `service/instance_id`. */
  readonly leases: ReadonlyMap<string, string>;
  counts(): ScaleLoadCounts;
  /** Stops renewing, ends every stream and closes every channel. Idempotent. */
  close(): void;
}

/** KeepAlive streams per channel (one HTTP/2 connection); the registry allows 1,000 per connection. */
const KEEPALIVES_PER_CHANNEL = 500;
/** Watch streams per channel; the registry allows 100 per connection. */
const WATCHES_PER_CHANNEL = 50;

/**
 * A light in-process load on a registry through its gRPC API: `instances` Registers, then one
 * KeepAlive stream per instance renewing every TTL/3 with its registration token, and `watchers`
 * Watch streams. A KeepAlive stream that ends UNAVAILABLE is opened again, as a registrar does; no
 * re-registration: a lost lease is counted, not repaired, so the count is what the registry caused.
 */
export async function startScaleLoad(options: ScaleLoadOptions): Promise<ScaleLoad> {
  const perService = options.instancesPerService ?? 100;
  const concurrency = options.registerConcurrency ?? 64;
  const services = Math.max(1, Math.ceil(options.instances / perService));
  const channels: RegistryServiceClient[] = [];
  // A local subchannel pool gives each client its own connection.
  const newClient = () => {
    const client = new RegistryServiceClient(options.address, credentials.createInsecure(), {
      "grpc.use_local_subchannel_pool": 1,
      "grpc.max_receive_message_length": 64 << 20,
    });
    channels.push(client);
    return client;
  };
  const registerClient = newClient();
  const leases = new Map<string, string>();
  const keepAliveErrors: Record<string, number> = {};
  const renewTimers: NodeJS.Timeout[] = [];
  const streams: (
    ClientDuplexStream<KeepAliveRequest, KeepAliveResponse> | ClientReadableStream<WatchResponse>
  )[] = [];
  let renewals = 0;
  const errorSamples: string[] = [];
  let watchMessages = 0;
  let watchErrors = 0;
  let isClosed = false;
  const lost = new Set<number>();
  const lastRenewedMs: number[] = [];

  const registerRetries: Record<string, number> = {};
  let maxPushbackMs = 0;
  const RETRIED: ReadonlySet<number> = new Set([
    status.RESOURCE_EXHAUSTED,
    status.UNAVAILABLE,
    status.DEADLINE_EXCEEDED,
  ]);
  /** Registers instance `index`, retrying as a registrar does; undefined once `untilMs` passed. */
  const register = async (index: number, untilMs: number): Promise<RegisterResponse | undefined> => {
    const backoff = new Backoff({ initialDelayMs: 100, multiplier: 1.6, maxDelayMs: 1000 });
    for (;;) {
      if (Date.now() >= untilMs) return undefined;
      try {
        return await registerOnce(index);
      } catch (error) {
        const code = (error as Partial<ServiceError>).code;
        if (isClosed || code === undefined || !RETRIED.has(code)) throw error;
        registerRetries[String(code)] = (registerRetries[String(code)] ?? 0) + 1;
        const pushbackMs = retryPushbackMs(error);
        maxPushbackMs = Math.max(maxPushbackMs, pushbackMs ?? 0);
        await sleep(Math.max(pushbackMs ?? 0, backoff.next()));
      }
    }
  };
  const registerOnce = (index: number) =>
    new Promise<RegisterResponse>((resolve, reject) => {
      registerClient.register(
        {
          service: `scale-${index % services}`,
          instanceId: `i-${index}`,
          address: `10.${(index >> 16) & 255}.${(index >> 8) & 255}.${index & 255}:9000`,
          weight: 1,
          zone: "z1",
          metadata: {},
          metricsAddress: "",
          ttlSeconds: String(options.ttlSeconds),
          status: InstanceStatus.INSTANCE_STATUS_SERVING,
          // As a registrar: a retried Register adopts what an earlier attempt (cut at its
          // deadline, completed later) granted, instead of ALREADY_EXISTS.
          registrationId: `scale-load-${index}`,
        },
        new Metadata(),
        { deadline: Date.now() + 30_000 },
        (error: ServiceError | null, response?: RegisterResponse) =>
          error === null && response !== undefined
            ? resolve(response)
            : reject(error ?? new Error("no response")),
      );
    });

  const renewEveryMs = (options.ttlSeconds * 1000) / 3;
  let keepAliveClient = newClient();
  let keepAlives = 0;
  // Each instance starts renewing as soon as it is registered, as a registrar does.
  const holdAlive = (index: number, registration: RegisterResponse) => {
    if (keepAlives > 0 && keepAlives % KEEPALIVES_PER_CHANNEL === 0) keepAliveClient = newClient();
    keepAlives += 1;
    leases.set(`scale-${index % services}/i-${index}`, registration.leaseId);
    lastRenewedMs[index] = Date.now();
    const request = { leaseId: registration.leaseId, registrationToken: registration.registrationToken };
    const client = keepAliveClient;
    let stream: ClientDuplexStream<KeepAliveRequest, KeepAliveResponse> | undefined;
    // As a registrar: a stream that ends UNAVAILABLE is opened again and renewing goes on; only
    // NOT_FOUND (or a whole TTL without a renewal) loses the lease (DESIGN §4, §11).
    const open = () => {
      const opened = client.keepAlive();
      stream = opened;
      streams.push(opened);
      opened.on("data", (response: KeepAliveResponse) => {
        renewals += 1;
        if (Number(response.ttlSeconds) > 0) lastRenewedMs[index] = Date.now();
        else lost.add(index);
      });
      opened.on("error", (error: ServiceError) => {
        if (isClosed) return;
        keepAliveErrors[String(error.code)] = (keepAliveErrors[String(error.code)] ?? 0) + 1;
        if (errorSamples.length < 5) errorSamples.push(`${error.code} ${error.details}`);
        if (error.code === status.NOT_FOUND) lost.add(index);
        if (error.code === status.UNAVAILABLE) {
          stream = undefined;
          clearTimeout(renewTimers[index]);
          renewTimers[index] = setTimeout(
            () => {
              open();
              renew();
            },
            100 + Math.random() * 400,
          );
        }
      });
    };
    const renew = () => {
      if (isClosed || stream === undefined) return;
      stream.write(request);
      renewTimers[index] = setTimeout(renew, renewEveryMs);
    };
    open();
    // Spread the first renewals over one interval, as independently started registrars are.
    renewTimers[index] = setTimeout(renew, Math.random() * renewEveryMs);
  };

  let registered = 0;
  let next = 0;
  const registerUntilMs = Date.now() + (options.registerForMs ?? Number.POSITIVE_INFINITY);
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < options.instances && Date.now() < registerUntilMs) {
        const index = next++;
        const registration = await register(index, registerUntilMs);
        if (registration === undefined) return;
        holdAlive(index, registration);
        registered += 1;
      }
    }),
  );

  // A registrar re-registers after a whole TTL without a successful keepalive (DESIGN §4).
  const staleSweep = setInterval(() => {
    const cutoff = Date.now() - options.ttlSeconds * 1000;
    lastRenewedMs.forEach((renewedMs, index) => {
      if (renewedMs < cutoff) lost.add(index);
    });
  }, 500);

  let watchClient = newClient();
  for (let index = 0; index < options.watchers; index += 1) {
    if (index > 0 && index % WATCHES_PER_CHANNEL === 0) watchClient = newClient();
    const watch = watchClient.watch({
      service: `scale-${index % services}`,
      startRevision: "0",
      splitSnapshots: true,
    });
    streams.push(watch);
    watch.on("data", () => (watchMessages += 1));
    watch.on("error", () => {
      if (!isClosed) watchErrors += 1;
    });
  }

  return {
    leases,
    counts: () => ({
      registered,
      registerRetries: { ...registerRetries },
      maxPushbackMs,
      renewals,
      lostLeases: lost.size,
      keepAliveErrors: { ...keepAliveErrors },
      keepAliveErrorSamples: [...errorSamples],
      watchMessages,
      watchErrors,
    }),
    close: () => {
      if (isClosed) return;
      isClosed = true;
      clearInterval(staleSweep);
      for (const timer of renewTimers) clearTimeout(timer);
      for (const stream of streams) stream.cancel();
      for (const channel of channels) channel.close();
    },
  };
}
