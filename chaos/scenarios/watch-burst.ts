/** 10,000 registrations in a burst while 300 Watch streams read and 1 is paused. */
import { existsSync } from "node:fs";
import { Metadata, type ServiceError } from "@grpc/grpc-js";
import { connectRegistry } from "../../client/registry-connection.js";
import {
  RegisterRequest,
  type RegistryServiceClient,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { spawnTsx } from "../lib/child.js";
import { Cluster, JEMALLOC } from "../lib/cluster.js";
import { check, row, type Scenario } from "../lib/result.js";
import { mustWaitFor, sleep, waitFor } from "../lib/scope.js";
import { ms } from "./common.js";

const REGISTRATIONS = 10_000;
const READERS = 300;
const BURST_SERVICE = "burst";

interface StreamsState {
  open: number;
  ended: string[];
  endedCount: number;
  pausedOpen: number;
  pausedEnded: string[];
  minUpserts: number;
  minRemoves: number;
}

function lastState(stdout: string): StreamsState | undefined {
  const lines = stdout.match(/^state .*$/gm);
  const last = lines?.at(-1);
  return last === undefined ? undefined : (JSON.parse(last.slice("state ".length)) as StreamsState);
}

/** Runs `count` tasks with at most `concurrency` at a time. */
async function pool(
  count: number,
  concurrency: number,
  task: (index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

function unary<Res>(
  invoke: (callback: (error: ServiceError | null, response: Res) => void) => unknown,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    invoke((error, response) => (error === null ? resolve(response) : reject(error)));
  });
}

export const watchBurst: Scenario = {
  name: "watch-burst",
  fast: false,
  summary:
    "10,000 registrations in a burst (then their removal), 300 Watch streams reading, 1 paused: only the paused one ended; stream gauge back to the live count; registry RSS within 10 % of before",
  timeoutMs: () => 900_000,
  async run({ scope, log }) {
    // The paused stream must stay paused longer than the behind limit (the burst takes 8-15 s here),
    // so the limit is 5 s, not the 30 s default: what is checked is that only it is ended.
    const cluster = await Cluster.start(scope, { maxWatchBehindMs: 5000 });
    const replica = cluster.registries[0];
    if (replica === undefined) throw new Error("no registry");
    const streams = spawnTsx(scope, "watch streams", "chaos/children/watch-streams.ts", [
      JSON.stringify({ registry: replica.address, service: BURST_SERVICE, count: READERS, paused: 1 }),
    ]);
    await mustWaitFor(() => lastState(streams.stdout)?.open === READERS, `${READERS} streams open`, 30_000);
    await mustWaitFor(
      async () => (await cluster.registryMetric(replica, "leasehold_registry_watch_streams")) === READERS + 1,
      "stream gauge at 301",
      15_000,
    );
    await sleep(2000);
    const before = await cluster.registryMemoryAfterGc(replica);
    const rssBefore = before.rss;
    const client: RegistryServiceClient = connectRegistry(replica.address);
    scope.defer("registry client", () => client.close());
    log(`${REGISTRATIONS} registrations`);
    const leases: string[] = new Array<string>(REGISTRATIONS).fill("");
    const tokens: string[] = new Array<string>(REGISTRATIONS).fill("");
    let registerFailures = 0;
    const burstAt = Date.now();
    await pool(REGISTRATIONS, 128, async (i) => {
      const request = RegisterRequest.fromPartial({
        service: BURST_SERVICE,
        instanceId: `burst-${String(i).padStart(5, "0")}`,
        address: `127.0.0.1:${10_000 + (i % 50_000)}`,
        ttlSeconds: "300", // outlives the burst: every key is removed by Deregister, not by expiry
      });
      try {
        const response = await unary<{ leaseId: string; registrationToken: string }>((cb) =>
          client.register(request, new Metadata(), { deadline: Date.now() + 30_000 }, cb),
        );
        leases[i] = response.leaseId;
        tokens[i] = response.registrationToken;
      } catch {
        registerFailures++;
      }
    });
    const burstMs = Date.now() - burstAt;
    const registered = REGISTRATIONS - registerFailures;
    const allSeenMs = await waitFor(
      () => ((lastState(streams.stdout)?.minUpserts ?? 0) >= registered ? Date.now() - burstAt : undefined),
      {
        timeoutMs: 60_000,
        intervalMs: 250,
      },
    );
    log(`registered ${registered} in ${burstMs} ms; removing them`);
    let deregisterFailures = 0;
    const deregisterCodes: Record<string, number> = {};
    await pool(REGISTRATIONS, 128, async (i) => {
      if (leases[i] === "") return;
      try {
        await unary((cb) =>
          client.deregister(
            {
              service: BURST_SERVICE,
              instanceId: `burst-${String(i).padStart(5, "0")}`,
              leaseId: leases[i] ?? "0",
              registrationToken: tokens[i] ?? "",
            },
            new Metadata(),
            { deadline: Date.now() + 30_000 },
            cb,
          ),
        );
      } catch (error) {
        deregisterFailures++;
        const code = String((error as Partial<ServiceError>).code ?? "?");
        deregisterCodes[code] = (deregisterCodes[code] ?? 0) + 1;
      }
    });
    await waitFor(() => (lastState(streams.stdout)?.minRemoves ?? 0) >= registered - deregisterFailures, {
      timeoutMs: 60_000,
      intervalMs: 250,
    });
    streams.signal("SIGUSR2"); // the paused stream reads again: its end (if it was ended) arrives
    await waitFor(() => (lastState(streams.stdout)?.pausedEnded.length ?? 0) > 0, {
      timeoutMs: 10_000,
      intervalMs: 250,
    });
    await sleep(1000);
    const state = lastState(streams.stdout);
    const gauge = await waitFor(
      async () => {
        const value = await cluster.registryMetric(replica, "leasehold_registry_watch_streams");
        return value === (state?.open ?? READERS) + (state?.pausedOpen ?? 0) ? value : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 250 },
    );
    const gaugeNow = gauge ?? (await cluster.registryMetric(replica, "leasehold_registry_watch_streams"));
    await sleep(3000);
    const after = await cluster.registryMemoryAfterGc(replica);
    const rssAfter = after.rss;
    const growth = (rssAfter - rssBefore) / rssBefore;
    const liveCount = (state?.open ?? 0) + (state?.pausedOpen ?? 0);
    return [
      row({
        scenario: this.name,
        policy: "-",
        calls: registered,
        failedCalls: registerFailures,
        failedAttempts: deregisterFailures,
        // Events a reader missed: upserts and removals below what was registered and deregistered.
        lostEvents:
          Math.max(0, registered - (state?.minUpserts ?? 0)) +
          Math.max(0, registered - deregisterFailures - (state?.minRemoves ?? 0)),
        recoverMs: allSeenMs ?? null,
        checks: [
          check(
            "every registration accepted",
            registerFailures === 0,
            `${registerFailures} Register failures, ${deregisterFailures} Deregister failures`,
          ),
          check(
            "no reading stream ended",
            state?.endedCount === 0,
            `${state?.endedCount} of ${READERS} reading streams ended ${JSON.stringify(state?.ended ?? [])}`,
            true,
          ),
          check(
            "the paused stream ended",
            (state?.pausedEnded.length ?? 0) === 1,
            `paused: ${JSON.stringify(state?.pausedEnded ?? [])}`,
          ),
          check(
            "stream gauge back to the live count",
            gaugeNow === liveCount,
            `gauge ${gaugeNow} vs ${liveCount} live`,
            true,
          ),
          check(
            `registry RSS within 10 % of before (${existsSync(JEMALLOC) ? "jemalloc" : "glibc malloc: install libjemalloc2"})`,
            Math.abs(growth) <= 0.1,
            `${(rssBefore / 2 ** 20).toFixed(0)} → ${(rssAfter / 2 ** 20).toFixed(0)} MiB (${(growth * 100).toFixed(1)} %; V8 heap used ${(before.heapUsed / 2 ** 20).toFixed(0)} → ${(after.heapUsed / 2 ** 20).toFixed(0)} MiB, total ${(before.heapTotal / 2 ** 20).toFixed(0)} → ${(after.heapTotal / 2 ** 20).toFixed(0)} MiB, external ${(before.external / 2 ** 20).toFixed(0)} → ${(after.external / 2 ** 20).toFixed(0)} MiB)`,
          ),
          check(
            "every reader saw the burst",
            allSeenMs !== undefined,
            `all ${registered} upserts on every reader after ${ms(allSeenMs ?? null)}`,
          ),
        ],
        figures: {
          burstMs,
          registrationsPerSecond: Math.round((1000 * registered) / burstMs),
          allSeenMs,
          rssBefore,
          rssAfter,
          memoryBefore: before,
          memoryAfter: after,
          deregisterCodes,
          state,
          gaugeNow,
        },
      }),
    ];
  },
};
