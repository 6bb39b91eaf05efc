/**
 * Load-aware policies over real parts: a real etcd and registry, demo echo instances
 * (`startServiceInstance`, as `leasehold serve echo`) whose ORCA load reports simulate CPU
 * 20 %, 50 % and 90 %, or that add 50 ms of latency; the typed balanced client and a stock
 * grpc-js client on `leasehold:///echo`.
 *
 * LEASEHOLD_LOAD_TEST_SECONDS=30 runs each measurement for that long instead of a fixed number of
 * calls (the README's 30 s figures).
 */
import * as grpc from "@grpc/grpc-js";
import type { ExecutionContext } from "ava";
import { Registry } from "prom-client";
import { registerLeasehold } from "../client/leasehold.js";
import { POLICY_CONFIG_OPTION, POLICY_OPTION } from "../client/discovery/leasehold-resolver.js";
import { ClientMetrics } from "../client/metrics/client-metrics.js";
import { EchoServiceClient, type EchoResponse } from "../proto/gen/leasehold/demo/v1/echo.js";
import { echo } from "../services/echo.js";
import { startServiceInstance, type ServiceInstanceOptions } from "../services/service-host.js";
import { connected, newClient } from "./helpers/echo-servers.js";
import { eventually } from "./helpers/eventually.js";
import { testWithSharedFixture } from "./helpers/registry-fixture.js";
import { seeded } from "./helpers/seeded-random.js";

const test = testWithSharedFixture();
/** The metrics of every stock `leasehold:///` channel of this file. */
const stockMetrics = new Registry();
let isRegistered = false;
/** `leasehold:///` for stock clients, toward this file's registry (once: hooks run concurrently). */
function registerOnce(registry: string): void {
  if (!isRegistered) registerLeasehold({ registry, metrics: new ClientMetrics(stockMetrics) });
  isRegistered = true;
}
const SECONDS = Number(process.env.LEASEHOLD_LOAD_TEST_SECONDS ?? 0);
const CPU = { cpu20: 0.2, cpu50: 0.5, cpu90: 0.9 } as const;

async function startInstances(
  t: ExecutionContext<{ registry: { address: string } }>,
  specs: Record<string, Partial<ServiceInstanceOptions>>,
): Promise<void> {
  const started = await Promise.all(
    Object.entries(specs).map(([instanceId, options]) =>
      startServiceInstance(echo, {
        registry: t.context.registry.address,
        instanceId,
        listen: "127.0.0.1:0",
        drainMs: 0,
        ...options,
      }),
    ),
  );
  t.teardown(async () => await Promise.all(started.map((instance) => instance.shutdown())));
}

/**
 * Runs `call` at `concurrency` for `calls` calls (or SECONDS seconds), tallying answers per instance.
 * least_loaded is measured with one call at a time: its P2C also weighs outstanding calls, and
 * with several in flight on instances that answer equally fast (all in this process) that shifts
 * shares by up to ±25 % (README, "least_loaded").
 */
async function tally(
  call: () => Promise<string>,
  calls: number,
  concurrency = 1,
): Promise<Record<string, number>> {
  const result: Record<string, number> = {};
  const endMs = performance.now() + SECONDS * 1000;
  let started = 0;
  const worker = async (): Promise<void> => {
    while (SECONDS > 0 ? performance.now() < endMs : started < calls) {
      started++;
      const instanceId = await call();
      result[instanceId] = (result[instanceId] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return result;
}

/** A longer timeout for LEASEHOLD_LOAD_TEST_SECONDS runs (each test runs up to 3 measurements). */
function allowLongRun(t: ExecutionContext): void {
  if (SECONDS > 0) t.timeout(4 * SECONDS * 1000 + 60_000);
}

function sharesOf(counts: Record<string, number>): Record<string, number> {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return Object.fromEntries(Object.entries(counts).map(([id, n]) => [id, n / total]));
}

/** Expected least_loaded shares: in inverse proportion to the simulated CPU. */
const INVERSE: Record<string, number> = (() => {
  const sum = Object.values(CPU).reduce((a, u) => a + 1 / u, 0);
  return Object.fromEntries(Object.entries(CPU).map(([id, u]) => [id, 1 / u / sum]));
})();

async function gaugeValues(registry: Registry, name: string): Promise<Record<string, number>> {
  const metric = await registry.getSingleMetric(name)?.get();
  return Object.fromEntries((metric?.values ?? []).map((v) => [String(v.labels.instance_id), v.value]));
}

test.serial(
  "least_loaded, typed client, one call at a time: instances reporting CPU 20 %, 50 %, 90 % get calls in inverse proportion, each share within 10 % of it",
  async (t) => {
    allowLongRun(t);
    await startInstances(t, {
      cpu20: { simulateCpu: CPU.cpu20 },
      cpu50: { simulateCpu: CPU.cpu50 },
      cpu90: { simulateCpu: CPU.cpu90 },
    });
    const { client, registry } = newClient(t, {
      registry: t.context.registry.address,
      policy: "least_loaded",
      leastLoaded: { updatePeriodMs: 100 },
      random: seeded(5),
    });
    await connected(client, 3);
    // Every instance has reported (a call each at least), and the picker was rebuilt since.
    await eventually(
      async () => {
        await tally(async () => (await client.methods.echo({ message: "warm" })).instanceId, 16);
        const reported = await gaugeValues(registry, "leasehold_client_instance_utilization");
        return Object.keys(reported).length === 3;
      },
      { what: "a load report from every instance" },
    );
    await new Promise((resolve) => setTimeout(resolve, 200)); // one picker refresh (100 ms) past the last report
    t.deepEqual(await gaugeValues(registry, "leasehold_client_instance_utilization"), { ...CPU });
    const weights = await gaugeValues(registry, "leasehold_client_instance_effective_weight");
    t.true(Math.abs((weights.cpu20 ?? 0) - 5) < 1e-9 && Math.abs((weights.cpu90 ?? 0) - 1 / 0.9) < 1e-9);
    const counts = await tally(async () => (await client.methods.echo({ message: "m" })).instanceId, 6_000);
    const shares = sharesOf(counts);
    t.log("calls", counts, "expected shares", INVERSE);
    for (const id of Object.keys(CPU))
      t.true(Math.abs((shares[id] ?? 0) / (INVERSE[id] as number) - 1) <= 0.1, `${id} share ${shares[id]}`);
  },
);

test.serial(
  "stock grpc-js clients on leasehold:///echo: least_loaded (one call at a time) shares in inverse proportion; under weighted_round_robin+orca (A58) the 90 % instance gets the smallest share",
  async (t) => {
    allowLongRun(t);
    await startInstances(t, {
      cpu20: { simulateCpu: CPU.cpu20 },
      cpu50: { simulateCpu: CPU.cpu50 },
      cpu90: { simulateCpu: CPU.cpu90 },
    });
    registerOnce(t.context.registry.address);
    const stock = (options: grpc.ChannelOptions): { call: () => Promise<string>; close: () => void } => {
      const client = new EchoServiceClient("leasehold:///echo", grpc.credentials.createInsecure(), options);
      t.teardown(() => client.close());
      const call = (): Promise<string> =>
        new Promise((resolve, reject) =>
          client.echo({ message: "m" }, (error: grpc.ServiceError | null, response?: EchoResponse) =>
            error === null && response !== undefined
              ? resolve(response.instanceId)
              : reject(error ?? new Error("no answer")),
          ),
        );
      return { call, close: () => client.close() };
    };
    /** Calls until the channel's picker weighs the 3 instances apart (its effective weights differ). */
    const untilWeighted = async (call: () => Promise<string>): Promise<Record<string, number>> => {
      let weights: Record<string, number> = {};
      await eventually(
        async () => {
          await tally(call, 16);
          weights = await gaugeValues(stockMetrics, "leasehold_client_instance_effective_weight");
          return Object.keys(weights).length === 3 && new Set(Object.values(weights)).size === 3;
        },
        { what: "weights from load reports" },
      );
      return weights;
    };

    const leastLoaded = stock({
      "grpc.service_config": JSON.stringify({
        loadBalancingConfig: [{ leasehold_least_loaded: { leastLoaded: { updatePeriodMs: 100 } } }],
      }),
    });
    await untilWeighted(leastLoaded.call);
    const leastLoadedCounts = await tally(leastLoaded.call, 6_000);
    leastLoaded.close(); // its balancer leaves the metrics: the next channel's weights are the only ones

    const wrr = stock({
      [POLICY_OPTION]: "weighted_round_robin",
      [POLICY_CONFIG_OPTION]: { orca: { blackoutPeriodMs: 500, weightUpdatePeriodMs: 100 } },
    });
    const weights = await untilWeighted(wrr.call);
    const wrrCounts = await tally(wrr.call, 3_000, 8);
    t.log("least_loaded", leastLoadedCounts, "weighted_round_robin+orca", wrrCounts, "A58 weights", weights);
    const shares = sharesOf(leastLoadedCounts);
    for (const id of Object.keys(CPU))
      t.true(Math.abs((shares[id] ?? 0) / (INVERSE[id] as number) - 1) <= 0.1, `${id} share ${shares[id]}`);
    const smallest = Object.entries(wrrCounts).sort((a, b) => a[1] - b[1])[0]?.[0];
    t.is(smallest, "cpu90");
  },
);

test.serial(
  "peak_ewma: an instance with 50 ms added latency among three fast ones gets < 5 % of calls, typed and stock clients alike",
  async (t) => {
    allowLongRun(t);
    await startInstances(t, { fast1: {}, fast2: {}, fast3: {}, slow: { latencyMs: 50 } });
    const { client } = newClient(t, {
      registry: t.context.registry.address,
      policy: "peak_ewma",
      random: seeded(7),
    });
    await connected(client, 4);
    registerOnce(t.context.registry.address);
    const stock = new EchoServiceClient("leasehold:///echo", grpc.credentials.createInsecure(), {
      [POLICY_OPTION]: "peak_ewma",
    });
    t.teardown(() => stock.close());
    const typedCounts = await tally(
      async () => (await client.methods.echo({ message: "m" })).instanceId,
      4_000,
      4,
    );
    const stockCounts = await tally(
      () =>
        new Promise<string>((resolve, reject) =>
          stock.echo({ message: "m" }, (error: grpc.ServiceError | null, response?: EchoResponse) =>
            error === null && response !== undefined
              ? resolve(response.instanceId)
              : reject(error ?? new Error("no answer")),
          ),
        ),
      4_000,
      4,
    );
    t.log("typed", typedCounts, "stock", stockCounts);
    for (const counts of [typedCounts, stockCounts]) {
      const shares = sharesOf(counts);
      t.true((shares.slow ?? 0) < 0.05, `slow share ${shares.slow}`);
      t.is(Object.keys(counts).length >= 3, true);
    }
  },
);
