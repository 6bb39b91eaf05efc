/** Registry replicas killed: the only one (and back), one of two, and one that watchers use while etcd compacts. */
import { connectRegistry } from "../../client/registry-connection.js";
import { MembershipWatcher } from "../../client/discovery/membership-watcher.js";
import { InstanceStatus } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { startCallers } from "../lib/caller.js";
import { Cluster, SERVICE } from "../lib/cluster.js";
import { check, type Scenario } from "../lib/result.js";
import { mustWaitFor, sleep } from "../lib/scope.js";
import { membershipFromNdjson, spawnWatchJson, spawnWatchTty } from "../lib/watch-cli.js";
import {
  callerRow,
  etcdHasExactly,
  FOUR,
  ms,
  orphanChecks,
  orphans,
  recoveryTime,
  settle,
  STABLE_MS,
  TTL_MS,
} from "./common.js";

const BACK_WITHIN_MS = 2000;

export const registryDown: Scenario = {
  name: "registry-down",
  fast: true,
  summary:
    "the only registry SIGKILLed for 2×TTL, restarted: 0 failed calls; every instance re-registered within 2 s of its return; `leasehold watch` still running and showed STALE",
  timeoutMs: () => 150_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { instances: FOUR });
    const replica = cluster.registries[0];
    if (replica === undefined) throw new Error("no registry");
    const watchJson = spawnWatchJson(scope, "watch --json", cluster.registryAddress, SERVICE);
    const watchTty = spawnWatchTty(scope, "watch (tty)", cluster.registryAddress, SERVICE);
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length, {
      withStock: true,
    });
    await mustWaitFor(
      () => membershipFromNdjson(watchJson.stdout).size === FOUR.length,
      "watch --json lists 4 instances",
      15_000,
    );
    await mustWaitFor(
      () => watchTty.stdout.includes("echo-4"),
      "the watch table drawn on the terminal",
      15_000,
    );
    const ttyBefore = watchTty.stdout.length;
    const jsonBefore = watchJson.stdout.length;
    const downMs = 2 * TTL_MS;
    log(`registry SIGKILL for ${downMs} ms`);
    await replica.process.kill();
    const killedAt = Date.now();
    // While it is down: how many instances etcd still lists (leases held through the outage?).
    let minInEtcd = FOUR.length;
    while (Date.now() - killedAt < downMs) {
      minInEtcd = Math.min(minInEtcd, (await cluster.etcd.instanceIds(SERVICE)).length);
      await sleep(200);
    }
    await cluster.restartRegistry(replica);
    const backAt = Date.now();
    const outageMs = backAt - killedAt; // 2×TTL plus the replica's start-up
    log(`registry back after ${outageMs} ms`);
    const backMs = await recoveryTime(
      etcdHasExactly(
        cluster,
        FOUR.map((s) => s.instanceId),
      ),
      {
        fromMs: backAt,
        windowMs: 6 * TTL_MS,
        stopWhenStableMs: STABLE_MS,
      },
    );
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    const report = await orphans(cluster);
    const ttyDuring = watchTty.stdout.slice(ttyBefore);
    const jsonDuring = watchJson.stdout.slice(jsonBefore);
    const ttyShowedStale = /STALE/.test(ttyDuring);
    const jsonShowedStale = /"type":"stale","stale":true/.test(jsonDuring);
    const showedStale = ttyShowedStale || jsonShowedStale;
    const watchAlive = watchJson.isRunning && watchTty.isRunning;
    const exits = [watchJson, watchTty]
      .filter((w) => !w.isRunning)
      .map((w) => `${w.name} exited ${JSON.stringify(w.exit)} ${w.stderr.slice(-200).trim()}`);
    return callers.map((caller) =>
      callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: backMs,
        checks: [
          check(
            "every instance re-registered within 2 s of the registry's return",
            backMs !== null && backMs <= BACK_WITHIN_MS,
            `${ms(backMs)} ≤ ${BACK_WITHIN_MS} ms (fewest in etcd while down: ${minInEtcd})`,
          ),
          check(
            "leasehold watch still running",
            watchAlive,
            watchAlive ? "both running" : exits.join("; "),
            true,
          ),
          check(
            "leasehold watch showed STALE",
            showedStale,
            `terminal: ${ttyShowedStale ? "STALE drawn" : `no STALE (${ttyDuring.length} chars drawn during the outage)`}; --json: ${jsonShowedStale ? '{"type":"stale","stale":true}' : "no stale event"}`,
          ),
          ...orphanChecks(report),
        ],
        figures: {
          downMs,
          backMs,
          minInEtcdWhileDown: minInEtcd,
          watchExits: exits,
          watchJsonDuringOutage: jsonDuring.slice(-2000),
          watchTtyHeadersDuringOutage: [
            ...new Set(stripAnsi(ttyDuring).match(/[^\r\n]*instance\(s\) at revision[^\r\n]*/g) ?? []),
          ].slice(-5),
          watchTtyDuringOutage: stripAnsi(ttyDuring).slice(-1500),
          orphans: report,
        },
      }),
    );
  },
};

export const twoRegistries: Scenario = {
  name: "two-registries",
  fast: true,
  summary:
    "two registries, the one in use SIGKILLed: 0 lease losses; keepalives moved within TTL/3 (no lease's remaining TTL falls below TTL − 2×TTL/3)",
  timeoutMs: () => 120_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { registries: 2, instances: FOUR });
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length, {
      withStock: true,
    });
    const before = new Map(
      (await cluster.etcd.instances(SERVICE)).instances.map((i) => [i.instanceId, i.leaseId]),
    );
    const victim = cluster.registries[0];
    if (victim === undefined) throw new Error("no registry");
    log("SIGKILL registry 0 (first in every list)");
    await victim.process.kill();
    const killedAt = Date.now();
    // Remaining TTL of every lease (etcd truncates to whole seconds), sampled every 100 ms for 2×TTL.
    const minTtl = new Map([...before.keys()].map((id) => [id, Infinity]));
    while (Date.now() - killedAt < 2 * TTL_MS) {
      await Promise.all(
        [...before.entries()].map(async ([id, lease]) => {
          const ttl = await cluster.etcd.leaseTtlSeconds(lease).catch(() => -1);
          minTtl.set(id, Math.min(minTtl.get(id) ?? Infinity, ttl));
        }),
      );
      await sleep(100);
    }
    const after = new Map(
      (await cluster.etcd.instances(SERVICE)).instances.map((i) => [i.instanceId, i.leaseId]),
    );
    const lostLeases = [...before.entries()]
      .filter(([id, lease]) => after.get(id) !== lease)
      .map(([id]) => id);
    const lowest = Math.min(...minTtl.values());
    const floor = (TTL_MS - (2 * TTL_MS) / 3) / 1000;
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    return callers.map((caller) =>
      callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: null,
        checks: [
          check(
            "0 lease losses",
            lostLeases.length === 0,
            `${lostLeases.length} of ${before.size} leases replaced${lostLeases.length > 0 ? ` (${lostLeases.join(",")})` : ""}`,
            true,
          ),
          check(
            "keepalives moved within TTL/3",
            lowest >= floor,
            `lowest remaining TTL ${lowest} s ≥ ${floor} s`,
          ),
        ],
        figures: {
          leasesBefore: Object.fromEntries(before),
          leasesAfter: Object.fromEntries(after),
          minRemainingTtlSeconds: Object.fromEntries(minTtl),
        },
      }),
    );
  },
};

export const compactionAway: Scenario = {
  name: "compaction-away",
  fast: true,
  summary:
    "the watchers' registry down while instances change and etcd compacts: MembershipWatcher and `leasehold watch --json` converge to etcd's exact state",
  timeoutMs: () => 150_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { registries: 2 });
    const [front, away] = cluster.registries;
    if (front === undefined || away === undefined) throw new Error("two registries expected");
    await Promise.all(FOUR.map((spec) => cluster.startInstance({ ...spec, registry: front.address })));
    const callers = await startCallers(scope, front.address, policies, FOUR.length, { withStock: true });
    const registryClient = connectRegistry(away.address);
    const watcher = new MembershipWatcher({ registry: registryClient, service: SERVICE });
    scope.defer("membership watcher", async () => {
      await watcher.close();
      registryClient.close();
    });
    watcher.start();
    await watcher.ready(15_000);
    const watchJson = spawnWatchJson(scope, "watch --json", away.address, SERVICE);
    await mustWaitFor(
      () => membershipFromNdjson(watchJson.stdout).size === FOUR.length,
      "watch --json lists 4 instances",
      15_000,
    );
    log("SIGKILL the watchers' registry; change membership; compact");
    await away.process.kill();
    await cluster.instance("echo-4").terminate();
    await cluster.instance("echo-3").kill();
    await cluster.startInstance({ instanceId: "echo-5", weight: 5, registry: front.address });
    await cluster.startInstance({ instanceId: "echo-6", weight: 6, registry: front.address });
    await cluster.untilEtcdHas(
      ["echo-1", "echo-2", "echo-5", "echo-6"],
      "echo-3 expired, echo-4 gone, echo-5/6 in",
      4 * TTL_MS,
    );
    const compactedAt = await cluster.etcd.compact();
    await cluster.restartRegistry(away);
    const backAt = Date.now();
    log(`compacted at revision ${compactedAt}; watchers' registry back`);
    const exact = async (): Promise<{ library: number; cli: number }> => {
      const etcd = (await cluster.etcd.instances(SERVICE)).instances;
      const want = new Map(
        etcd.map((i) => [
          i.instanceId,
          `${String(i.value.address)} w${String(i.value.weight)} ${String(i.value.status)}`,
        ]),
      );
      const diff = (have: Map<string, string>): number =>
        [...want].filter(([id, v]) => have.get(id) !== v).length +
        [...have.keys()].filter((id) => !want.has(id)).length;
      const library = new Map(
        watcher
          .current()
          .instances.map((i) => [i.instanceId, `${i.address} w${i.weight} ${statusName(i.status)}`]),
      );
      const cli = new Map(
        [...membershipFromNdjson(watchJson.stdout)].map(([id, i]) => [
          id,
          `${i.address} w${i.weight} ${i.status}`,
        ]),
      );
      return { library: diff(library), cli: diff(cli) };
    };
    const libraryMs = await recoveryTime(async () => (await exact()).library === 0, {
      fromMs: backAt,
      windowMs: 10_000,
    });
    const cliMs = await recoveryTime(async () => (await exact()).cli === 0, {
      fromMs: backAt,
      windowMs: 3000,
    });
    const final = await exact();
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    const cliAlive = watchJson.isRunning;
    return callers.map((caller) =>
      callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: libraryMs,
        checks: [
          check(
            "MembershipWatcher converged to etcd",
            final.library === 0,
            `library watcher: ${final.library} differences, converged ${ms(libraryMs)} after the registry's return`,
            true,
          ),
          check(
            "leasehold watch --json converged to etcd",
            final.cli === 0 && cliAlive,
            `watch --json: ${final.cli} differences, converged ${ms(cliMs)} after the registry's return${cliAlive ? "" : `; it exited ${JSON.stringify(watchJson.exit)}: ${watchJson.stderr.slice(-200).trim()}`}`,
          ),
        ],
        figures: { compactedAt, libraryMs, cliMs, final, cliOutput: watchJson.stdout.slice(-3000) },
      }),
    );
  },
};

function statusName(status: InstanceStatus): string {
  if (status === InstanceStatus.INSTANCE_STATUS_SERVING) return "SERVING";
  if (status === InstanceStatus.INSTANCE_STATUS_DRAINING) return "DRAINING";
  return String(status);
}

/** Terminal output without escape sequences (for the record). */
function stripAnsi(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\u001b\[[0-9;?]*[A-Za-z]/g, "");
}
