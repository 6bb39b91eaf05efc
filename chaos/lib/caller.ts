/**
 * A caller under load: the typed balanced client (`createBalancedClient`) over `leasehold` with
 * its own prom-client registry, `concurrency` workers calling Echo back to back. It counts calls
 * that failed after retries (with their times), failed attempts per instance (the final stats of
 * departed instances included), and successful calls per 250 ms bucket (throughput).
 * A failed call waits 20 ms before the worker's next call: no spin without I/O.
 */
import { Registry } from "prom-client";
import {
  createBalancedClient,
  type BalancedClient,
  type InstanceStats,
} from "../../client/balancing/balanced-client.js";
import type { PolicyName } from "../../client/balancing/policies.js";
import { ClientMetrics } from "../../client/metrics/client-metrics.js";
import { EchoServiceService } from "../../proto/gen/leasehold/demo/v1/echo.js";
import { type Scope, messageOf, mustWaitFor, sleep } from "./scope.js";
import { BUCKET_MS, type Failure } from "./load.js";
import { StockCaller } from "./stock-caller.js";

export class Caller {
  readonly policy: PolicyName;
  readonly concurrency: number;
  readonly client: BalancedClient<typeof EchoServiceService>;
  readonly metricsRegistry = new Registry();
  ok = 0;
  failed = 0;
  readonly failures: Failure[] = [];
  /** Final stats of instances that left membership (each departure once). */
  readonly departed: InstanceStats[] = [];
  /** `[bucket start ms, successful calls in it]`, every {@link BUCKET_MS}. */
  readonly throughput: [number, number][] = [];
  readonly #stop = new AbortController();
  #workers: Promise<void> | undefined;
  #sampler: NodeJS.Timeout | undefined;

  /** Hedging of every call (opt-in, Echo is idempotent), ms; undefined: none. */
  readonly hedgeAfterMs: number | undefined;

  constructor(
    scope: Scope,
    {
      registry,
      policy,
      concurrency = 8,
      hedgeAfterMs,
    }: { registry: string; policy: PolicyName; concurrency?: number; hedgeAfterMs?: number },
  ) {
    this.policy = policy;
    this.concurrency = concurrency;
    this.hedgeAfterMs = hedgeAfterMs;
    this.client = createBalancedClient(EchoServiceService, {
      service: "echo",
      registry,
      policy,
      metrics: new ClientMetrics(this.metricsRegistry),
      deadlineMs: 5000,
    });
    this.client.onChange(({ removed }) => this.departed.push(...removed));
    scope.defer(`caller ${policy}`, async () => {
      await this.stop();
      await this.client.close();
    });
  }

  /** The row's policy column: the policy, and the hedging when on. */
  get label(): string {
    return this.hedgeAfterMs === undefined
      ? this.policy
      : `${this.policy} (hedged after ${this.hedgeAfterMs} ms)`;
  }

  get calls(): number {
    return this.ok + this.failed;
  }

  /** Starts the client, waits until it lists `expected` instances, then starts the workers. */
  async start(expected: number): Promise<void> {
    this.client.start();
    await mustWaitFor(
      () => this.client.stats().length === expected,
      `${this.policy} caller lists ${expected} instances`,
    );
    let last = this.ok;
    this.#sampler = setInterval(() => {
      this.throughput.push([Date.now(), this.ok - last]);
      last = this.ok;
    }, BUCKET_MS);
    this.#workers = Promise.all(Array.from({ length: this.concurrency }, () => this.#worker())).then(
      () => undefined,
    );
  }

  async #worker(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      try {
        await this.client.methods.echo(
          { message: "chaos" },
          this.hedgeAfterMs === undefined ? undefined : { hedgeAfterMs: this.hedgeAfterMs },
        );
        this.ok++;
      } catch (error) {
        this.failed++;
        if (this.failures.length < 10_000)
          this.failures.push({ atMs: Date.now(), message: messageOf(error) });
        await sleep(20);
      }
    }
  }

  /** Waits until every listed instance has served at least `calls` attempts (a warmed-up balancer). */
  async warmUp(calls = 20): Promise<void> {
    await mustWaitFor(
      () => this.client.stats().every((stats) => stats.calls >= calls),
      `${this.policy} caller: every instance served ${calls} calls`,
    );
  }

  /** Stops the workers (calls in flight finish). Idempotent. */
  async stop(): Promise<void> {
    this.#stop.abort();
    clearInterval(this.#sampler);
    await this.#workers;
  }

  stats(): InstanceStats[] {
    return this.client.stats();
  }

  /** Failed attempts on `instanceId` over all its incarnations (departed ones included), or on all. */
  failedAttempts(instanceId?: string): number {
    const match = (stats: InstanceStats): boolean =>
      instanceId === undefined || stats.instanceId === instanceId;
    const sum = (list: readonly InstanceStats[]): number =>
      list.filter(match).reduce((total, stats) => total + stats.errors, 0);
    return sum(this.departed) + sum(this.stats());
  }

  /** `leasehold_client_membership_stale_seconds` of this caller (max over its series), or undefined. */
  async staleSeconds(): Promise<number | undefined> {
    const metric = this.metricsRegistry.getSingleMetric("leasehold_client_membership_stale_seconds");
    if (metric === undefined) return undefined;
    const { values } = await metric.get();
    if (values.length === 0) return undefined;
    return Math.max(...values.map((v) => v.value));
  }

  /** Failures at or after `sinceMs`. */
  failedSince(sinceMs: number): number {
    return this.failures.filter((failure) => failure.atMs >= sinceMs).length;
  }

  /** Distinct failure messages with counts (evidence), most frequent first. */
  failureSummary(limit = 3, sinceMs = 0): string {
    const counts = new Map<string, number>();
    for (const { message } of this.failures.filter((f) => f.atMs >= sinceMs))
      counts.set(message.slice(0, 140), (counts.get(message.slice(0, 140)) ?? 0) + 1);
    return [...counts.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([message, count]) => `${count}× ${message}`)
      .join(" | ");
  }

  /** Mean successful calls per bucket in [fromMs, toMs). */
  meanThroughput(fromMs: number, toMs: number): number {
    const buckets = this.throughput.filter(([at]) => at >= fromMs && at < toMs).map(([, n]) => n);
    return buckets.length === 0 ? 0 : buckets.reduce((a, b) => a + b, 0) / buckets.length;
  }

  /** The lowest bucket in [fromMs, toMs), or undefined when there is none. */
  minThroughput(fromMs: number, toMs: number): number | undefined {
    const buckets = this.throughput.filter(([at]) => at >= fromMs && at < toMs).map(([, n]) => n);
    return buckets.length === 0 ? undefined : Math.min(...buckets);
  }
}

const stockCallers = new WeakMap<Scope, StockCaller[]>();

/**
 * One typed caller per policy, started together against the same cluster; with `withStock`, also a
 * stock grpc-js caller (round_robin), whose row the runner adds when the scenario ends.
 */
export async function startCallers(
  scope: Scope,
  registry: string,
  policies: readonly PolicyName[],
  expected: number,
  {
    concurrency = 8,
    withStock = false,
    hedgeAfterMs,
  }: { concurrency?: number; withStock?: boolean; hedgeAfterMs?: number } = {},
): Promise<Caller[]> {
  const callers = policies.map((policy) => new Caller(scope, { registry, policy, concurrency }));
  // With `hedgeAfterMs`, one more round_robin caller that hedges every call.
  if (hedgeAfterMs !== undefined)
    callers.push(new Caller(scope, { registry, policy: "round_robin", concurrency, hedgeAfterMs }));
  await Promise.all(callers.map((caller) => caller.start(expected)));
  await Promise.all(callers.map((caller) => caller.warmUp()));
  if (withStock) {
    const stock = new StockCaller(scope, registry, concurrency);
    await stock.start();
    stockCallers.set(scope, [...(stockCallers.get(scope) ?? []), stock]);
  }
  return callers;
}

/** The stock grpc-js callers a scenario started in `scope`. */
export function stockCallersOf(scope: Scope): readonly StockCaller[] {
  return stockCallers.get(scope) ?? [];
}
