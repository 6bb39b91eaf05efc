/**
 * A stock grpc-js caller: ts-proto's `EchoServiceClient` on `leasehold:///echo` after
 * `registerLeasehold({ registry, metrics })`, retries by the resolver's default grpc-js
 * `retryPolicy`. It counts calls that failed (what the application saw) and, from the
 * `leasehold_client_requests_total` series sampled every 250 ms (series of departed instances are
 * removed, so the highest value seen per instance is kept), failed attempts.
 */
import {
  credentials,
  InterceptingCall,
  ListenerBuilder,
  Metadata,
  status,
  type Interceptor,
  type ServiceError,
} from "@grpc/grpc-js";
import { Registry } from "prom-client";
import { POLICY_OPTION } from "../../client/discovery/leasehold-resolver.js";
import { registerLeasehold } from "../../client/leasehold.js";
import { ClientMetrics } from "../../client/metrics/client-metrics.js";
import { EchoServiceClient } from "../../proto/gen/leasehold/demo/v1/echo.js";
import { BUCKET_MS, type Failure } from "./load.js";
import { type Scope, messageOf, sleep } from "./scope.js";

/**
 * A per-call client interceptor noting whether the call received response headers: once it has,
 * gRFC A6 commits the call and no retry policy may send it again. grpc-js servers write a unary
 * status in a later write than its headers and message (on http2's `wantTrailers`), so an
 * instance SIGKILLed in between leaves such a call UNAVAILABLE ("Connection dropped", "read
 * ECONNRESET") with nothing a stock client may do (README, Development).
 */
export function headersSeen(state: { headers: boolean }): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, _listener, next) {
        next(
          metadata,
          new ListenerBuilder()
            .withOnReceiveMetadata((received, onward) => {
              state.headers = true;
              onward(received);
            })
            .build(),
        );
      },
    });
}

export class StockCaller {
  readonly policy = "round_robin (stock grpc-js client)";
  readonly concurrency: number;
  readonly metricsRegistry = new Registry();
  readonly client: EchoServiceClient;
  ok = 0;
  /** Calls that failed before any answer began: what a retry policy should have hidden. */
  failed = 0;
  /** Calls that failed UNAVAILABLE after their response headers came: committed, not retryable. */
  committed = 0;
  readonly failures: Failure[] = [];
  readonly #failedAttempts = new Map<string, number>();
  readonly #stop = new AbortController();
  #workers: Promise<void> | undefined;
  #sampler: NodeJS.Timeout | undefined;

  constructor(scope: Scope, registry: string, concurrency = 8) {
    this.concurrency = concurrency;
    registerLeasehold({ registry, metrics: new ClientMetrics(this.metricsRegistry) });
    this.client = new EchoServiceClient("leasehold:///echo", credentials.createInsecure(), {
      [POLICY_OPTION]: "round_robin",
    });
    scope.defer("stock grpc-js caller", async () => {
      await this.stop();
      this.client.close();
    });
  }

  get calls(): number {
    return this.ok + this.failed + this.committed;
  }

  /** Waits until a call succeeds, then starts the workers. */
  async start(): Promise<void> {
    for (let attempt = 0; attempt < 200; attempt++) {
      if (
        await this.#echo().then(
          (isAnswered) => isAnswered,
          () => false,
        )
      )
        break;
      await sleep(50);
    }
    this.#sampler = setInterval(() => void this.#sample(), BUCKET_MS);
    this.#workers = Promise.all(Array.from({ length: this.concurrency }, () => this.#worker())).then(
      () => undefined,
    );
  }

  /** One call; resolves `false` when it failed UNAVAILABLE after its response headers came. */
  #echo(): Promise<boolean> {
    const state = { headers: false };
    return new Promise((resolve, reject) => {
      this.client.echo(
        { message: "chaos" },
        new Metadata(),
        { deadline: Date.now() + 5000, interceptors: [headersSeen(state)] },
        (error: ServiceError | null) => {
          if (error === null) resolve(true);
          else if (state.headers && error.code === status.UNAVAILABLE) resolve(false);
          else reject(error);
        },
      );
    });
  }

  async #worker(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      try {
        if (await this.#echo()) this.ok++;
        else this.committed++;
      } catch (error) {
        this.failed++;
        if (this.failures.length < 10_000)
          this.failures.push({ atMs: Date.now(), message: messageOf(error) });
        await sleep(20);
      }
    }
  }

  async #sample(): Promise<void> {
    const metric = this.metricsRegistry.getSingleMetric("leasehold_client_requests_total");
    if (metric === undefined) return;
    const perInstance = new Map<string, number>();
    for (const { labels, value } of (await metric.get()).values) {
      if (labels["code"] === "OK") continue;
      const id = String(labels["instance_id"]);
      perInstance.set(id, (perInstance.get(id) ?? 0) + value);
    }
    for (const [id, value] of perInstance)
      this.#failedAttempts.set(id, Math.max(this.#failedAttempts.get(id) ?? 0, value));
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    clearInterval(this.#sampler);
    await this.#workers;
    await this.#sample();
  }

  /** Failed attempts seen in the metrics (all instances). */
  failedAttempts(): number {
    return [...this.#failedAttempts.values()].reduce((a, b) => a + b, 0);
  }

  failureSummary(limit = 3): string {
    const counts = new Map<string, number>();
    for (const { message } of this.failures)
      counts.set(message.slice(0, 140), (counts.get(message.slice(0, 140)) ?? 0) + 1);
    return [...counts.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([message, count]) => `${count}× ${message}`)
      .join(" | ");
  }
}
