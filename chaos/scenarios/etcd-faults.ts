/** etcd stalls (SIGSTOP) and crashes (SIGKILL + restart on the same data dir) under load. */
import { startCallers } from "../lib/caller.js";
import { Cluster, SERVICE } from "../lib/cluster.js";
import { check, type Scenario } from "../lib/result.js";
import { sleep } from "../lib/scope.js";
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

const STALE_WITHIN_MS = 5000;
const BACK_WITHIN_MS = 2000;

export const etcdSigstop: Scenario = {
  name: "etcd-sigstop",
  fast: true,
  summary:
    "etcd SIGSTOP 1.5×TTL then SIGCONT: 0 failed calls; stale gauge > 0 within 5 s; every instance in etcd within 2 s of SIGCONT; no orphan keys",
  timeoutMs: () => 120_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { instances: FOUR });
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length, {
      withStock: true,
    });
    const ids = FOUR.map((s) => s.instanceId);
    const leasesBefore = await leaseIds(cluster);
    const stallMs = 1.5 * TTL_MS;
    log(`etcd SIGSTOP for ${stallMs} ms`);
    const stoppedAt = Date.now();
    cluster.etcd.pause();
    // Each caller's stale gauge, sampled every 250 ms for 5 s from the stall (past SIGCONT when the stall is shorter).
    const staleAt = new Map(callers.map((c) => [c, null as number | null]));
    const maxStale = new Map(callers.map((c) => [c, 0]));
    const sampling = (async () => {
      while (Date.now() - stoppedAt <= STALE_WITHIN_MS) {
        for (const caller of callers) {
          const value = (await caller.staleSeconds()) ?? 0;
          maxStale.set(caller, Math.max(maxStale.get(caller) ?? 0, value));
          if (value > 0 && staleAt.get(caller) === null) staleAt.set(caller, Date.now() - stoppedAt);
        }
        await sleep(250);
      }
    })();
    await sleep(stallMs);
    cluster.etcd.resume();
    const resumedAt = Date.now();
    log("etcd SIGCONT");
    const backMs = await recoveryTime(etcdHasExactly(cluster, ids), {
      fromMs: resumedAt,
      windowMs: 5 * TTL_MS,
      stopWhenStableMs: STABLE_MS,
    });
    await sampling;
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    const report = await orphans(cluster);
    const leasesAfter = await leaseIds(cluster);
    const replaced = [...leasesBefore]
      .filter(([id, lease]) => leasesAfter.get(id) !== lease)
      .map(([id]) => id);
    const leaseNote = `leases replaced across the fault: ${replaced.length} of ${leasesBefore.size} (DESIGN §11: abandoned only on NOT_FOUND)`;
    return callers.map((caller) =>
      callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: backMs,
        checks: [
          check(
            "stale gauge > 0 within 5 s",
            (staleAt.get(caller) ?? Infinity) <= STALE_WITHIN_MS,
            `stale after ${ms(staleAt.get(caller) ?? null)} (max ${maxStale.get(caller)} s) ≤ ${STALE_WITHIN_MS} ms`,
          ),
          check(
            "every instance in etcd within 2 s of SIGCONT",
            backMs !== null && backMs <= BACK_WITHIN_MS,
            `${ms(backMs)} ≤ ${BACK_WITHIN_MS} ms`,
          ),
          ...orphanChecks(report),
        ],
        note: leaseNote,
        figures: {
          leasesBefore: Object.fromEntries(leasesBefore),
          leasesAfter: Object.fromEntries(leasesAfter),
          stallMs,
          staleAtMs: staleAt.get(caller),
          maxStaleSeconds: maxStale.get(caller),
          backMs,
          orphans: report,
        },
      }),
    );
  },
};

export const etcdSigkill: Scenario = {
  name: "etcd-sigkill",
  fast: true,
  summary:
    "etcd SIGKILL 2×TTL then restart on the same data dir: 0 failed calls; membership whole within 2 s of etcd answering",
  timeoutMs: () => 120_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { instances: FOUR });
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length, {
      withStock: true,
    });
    const ids = FOUR.map((s) => s.instanceId);
    const leasesBefore = await leaseIds(cluster);
    const downMs = 2 * TTL_MS;
    log(`etcd SIGKILL for ${downMs} ms`);
    await cluster.etcd.kill();
    await sleep(downMs);
    await cluster.etcd.restart();
    const answeringAt = Date.now();
    log("etcd restarted and answering");
    const want = ids.join(",");
    const whole = async (): Promise<boolean> =>
      (await etcdHasExactly(cluster, ids)()) &&
      callers.every(
        (c) =>
          c
            .stats()
            .map((s) => s.instanceId)
            .sort()
            .join(",") === want,
      );
    const wholeMs = await recoveryTime(whole, {
      fromMs: answeringAt,
      windowMs: 5 * TTL_MS,
      stopWhenStableMs: STABLE_MS,
    });
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    const report = await orphans(cluster);
    const leasesAfter = await leaseIds(cluster);
    const replaced = [...leasesBefore]
      .filter(([id, lease]) => leasesAfter.get(id) !== lease)
      .map(([id]) => id);
    const leaseNote = `leases replaced across the fault: ${replaced.length} of ${leasesBefore.size} (DESIGN §11: abandoned only on NOT_FOUND)`;
    return callers.map((caller) =>
      callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: wholeMs,
        checks: [
          check(
            "membership whole within 2 s of etcd answering",
            wholeMs !== null && wholeMs <= BACK_WITHIN_MS,
            `${ms(wholeMs)} ≤ ${BACK_WITHIN_MS} ms (etcd keys and both callers)`,
          ),
          ...orphanChecks(report),
        ],
        note: leaseNote,
        figures: {
          leasesBefore: Object.fromEntries(leasesBefore),
          leasesAfter: Object.fromEntries(leasesAfter),
          downMs,
          wholeMs,
          orphans: report,
        },
      }),
    );
  },
};

async function leaseIds(cluster: Cluster): Promise<Map<string, string>> {
  return new Map((await cluster.etcd.instances(SERVICE)).instances.map((i) => [i.instanceId, i.leaseId]));
}
