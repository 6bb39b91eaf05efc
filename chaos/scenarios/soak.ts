/** The soak: 6 instances, 2 callers × 8, a random SIGKILL or SIGTERM plus restart every 20 s. */
import { startCallers } from "../lib/caller.js";
import { Cluster, SERVICE } from "../lib/cluster.js";
import { check, type Scenario } from "../lib/result.js";
import { sleep, waitFor } from "../lib/scope.js";
import { callerRow, settle, TTL_MS } from "./common.js";

const SIX = [1, 2, 3, 4, 5, 6].map((n) => ({ instanceId: `echo-${n}`, weight: n }));
const FAULT_EVERY_MS = 20_000;

export const soak: Scenario = {
  name: "soak",
  fast: false,
  summary:
    "soak (6 instances, concurrency 16 = 2 callers × 8, random SIGKILL or SIGTERM + restart every 20 s): 0 failed calls, etcd keys == live processes, registry RSS growth < 10 %",
  timeoutMs: ({ soakMinutes }) => soakMinutes * 60_000 + 180_000,
  async run({ scope, policies, soakMinutes, log }) {
    const cluster = await Cluster.start(scope, { instances: SIX });
    const replica = cluster.registries[0];
    if (replica === undefined) throw new Error("no registry");
    const callers = await startCallers(scope, cluster.registryAddress, policies, SIX.length, {
      concurrency: 8,
    });
    await sleep(2000);
    const rssBefore = await cluster.registryRssAfterGc(replica);
    const endAt = Date.now() + soakMinutes * 60_000;
    const faults: { atMs: number; instanceId: string; signal: string; readyMs: number | null }[] = [];
    let restarts: Promise<void>[] = [];
    while (Date.now() + FAULT_EVERY_MS <= endAt) {
      await sleep(FAULT_EVERY_MS);
      const candidates = cluster.liveInstanceIds();
      const instanceId = candidates[Math.floor(Math.random() * candidates.length)];
      if (instanceId === undefined) continue;
      const signal = Math.random() < 0.5 ? "SIGKILL" : "SIGTERM";
      const child = cluster.instance(instanceId);
      const fault = { atMs: Date.now(), instanceId, signal, readyMs: null as number | null };
      faults.push(fault);
      log(`${signal} ${instanceId}`);
      if (signal === "SIGKILL") await child.kill();
      else await child.terminate();
      const spec = SIX.find((s) => s.instanceId === instanceId) ?? { instanceId, weight: 1 };
      const restarted = await cluster.startInstance(spec, { waitReady: false });
      restarts.push(
        restarted.waitForOutput(/^ready \S+ \S+$/m, "registered again", FAULT_EVERY_MS * 3).then(
          () => void (fault.readyMs = Date.now() - fault.atMs),
          () => undefined,
        ),
      );
      restarts = restarts.slice(-10);
    }
    await Promise.all(restarts);
    const live = cluster.liveInstanceIds();
    const keysMatch = await waitFor(
      async () => (await cluster.etcd.instanceIds(SERVICE)).join(",") === live.join(","),
      {
        timeoutMs: TTL_MS + 5000,
        intervalMs: 200,
      },
    );
    const etcdIds = await cluster.etcd.instanceIds(SERVICE);
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    const rssAfter = await cluster.registryRssAfterGc(replica);
    const growth = (rssAfter - rssBefore) / rssBefore;
    const slowest = Math.max(0, ...faults.map((f) => f.readyMs ?? Infinity));
    return callers.map((caller) =>
      callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: Number.isFinite(slowest) ? slowest : null,
        checks: [
          check(
            "etcd keys == live processes",
            keysMatch !== undefined,
            `etcd ${etcdIds.join(",")} vs live ${live.join(",")}`,
            true,
          ),
          check(
            "every restarted instance registered again",
            faults.every((f) => f.readyMs !== null),
            `${faults.filter((f) => f.readyMs === null).length} of ${faults.length} never printed ready; slowest ${Number.isFinite(slowest) ? slowest : "never"} ms`,
            true,
          ),
          check(
            "registry RSS growth < 10 %",
            growth < 0.1,
            `${(rssBefore / 2 ** 20).toFixed(0)} → ${(rssAfter / 2 ** 20).toFixed(0)} MiB (${(growth * 100).toFixed(1)} %)`,
          ),
        ],
        figures: { minutes: soakMinutes, faults, rssBefore, rssAfter },
      }),
    );
  },
};
