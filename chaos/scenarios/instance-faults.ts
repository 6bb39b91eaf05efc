/** Instances crash (SIGKILL), freeze (SIGSTOP) or fail every call, under load. */
import type { Caller } from "../lib/caller.js";
import { startCallers } from "../lib/caller.js";
import { Cluster, SERVICE } from "../lib/cluster.js";
import { check, type Scenario } from "../lib/result.js";
import { sleep, waitFor } from "../lib/scope.js";
import {
  callerRow,
  FOUR,
  ms,
  orphanChecks,
  orphans,
  recoveryTime,
  settle,
  TTL_MS,
  untilRemoved,
} from "./common.js";

export const sigkillOne: Scenario = {
  name: "sigkill-1-of-4",
  fast: true,
  summary:
    "SIGKILL 1 of 4 instances: failed attempts on it ≤ calls in flight at the kill + 1 per concurrent caller; 0 failed calls",
  timeoutMs: () => 90_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { instances: FOUR });
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length, {
      withStock: true,
    });
    const victim = "echo-1";
    const inFlight = new Map(
      callers.map((c) => [c, c.stats().find((s) => s.instanceId === victim)?.outstanding ?? 0]),
    );
    const killedAt = Date.now();
    cluster.instance(victim).signal("SIGKILL");
    log(`SIGKILL ${victim}`);
    const removedMs = new Map<Caller, number | null>();
    await Promise.all(
      callers.map(async (c) => removedMs.set(c, await untilRemoved(c, victim, killedAt, TTL_MS + 5000))),
    );
    const okAtRemoval = callers.map((c) => c.ok);
    await waitFor(() => callers.every((c, i) => c.ok > (okAtRemoval[i] ?? 0) + 200), { timeoutMs: 10_000 });
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    return callers.map((caller) => {
      const attempts = caller.failedAttempts(victim);
      const bound = (inFlight.get(caller) ?? 0) + caller.concurrency;
      return callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: removedMs.get(caller) ?? null,
        checks: [
          check(
            "failed attempts on the killed instance ≤ in flight + 1 per caller",
            attempts <= bound,
            `${attempts} ≤ ${inFlight.get(caller)} in flight + ${caller.concurrency}`,
          ),
          check(
            "gone from the caller within TTL + 0.5 s",
            (removedMs.get(caller) ?? Infinity) <= TTL_MS + 500,
            `${ms(removedMs.get(caller) ?? null)} ≤ ${TTL_MS + 500} ms`,
          ),
        ],
        figures: {
          inFlightAtKill: inFlight.get(caller),
          failedAttemptsOnVictim: attempts,
          removedMs: removedMs.get(caller),
        },
      });
    });
  },
};

export const sigkillThree: Scenario = {
  name: "sigkill-3-of-4",
  fast: true,
  summary: "SIGKILL 3 of 4 instances at once: 0 failed calls after retries",
  timeoutMs: () => 90_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { instances: FOUR });
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length, {
      withStock: true,
    });
    const victims = ["echo-1", "echo-2", "echo-3"];
    const killedAt = Date.now();
    for (const id of victims) cluster.instance(id).signal("SIGKILL");
    log(`SIGKILL ${victims.join(", ")}`);
    const onlySurvivor = await recoveryTime(
      () =>
        Promise.resolve(
          callers.every(
            (c) =>
              c
                .stats()
                .map((s) => s.instanceId)
                .join(",") === "echo-4",
          ),
        ),
      { fromMs: killedAt, windowMs: 4 * TTL_MS, stopWhenStableMs: 1000 },
    );
    await sleep(1000);
    const lost = await settle(cluster, callers);
    for (const caller of callers) await caller.stop();
    return callers.map((caller) =>
      callerRow(this.name, caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: onlySurvivor,
        checks: [
          check(
            "the dead left the caller's membership",
            onlySurvivor !== null,
            `only echo-4 listed after ${ms(onlySurvivor)}`,
          ),
        ],
        figures: { failedAttemptsOnVictims: victims.map((id) => caller.failedAttempts(id)) },
      }),
    );
  },
};

export const failingThree: Scenario = {
  name: "failing-3-of-4",
  fast: true,
  summary:
    "3 of 4 instances answer 100 % UNAVAILABLE: never more than 50 % ejected; calls succeed through the healthy one (0 failed calls after 2 s)",
  timeoutMs: () => 90_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { instances: FOUR });
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length);
    const failing = ["echo-1", "echo-2", "echo-3"];
    for (const id of failing) cluster.instance(id).signal("SIGUSR2");
    await Promise.all(
      failing.map((id) => cluster.instance(id).waitForOutput(/^failing true$/m, "fault injection on")),
    );
    const failingAt = Date.now();
    log(`${failing.join(", ")} answer UNAVAILABLE`);
    // Ejected: `stats().ejected` (an open breaker within the max-ejection cap); an open breaker where the
    // balancer has no such field. Open breakers are recorded too.
    const maxEjected = new Map(callers.map((c) => [c, 0]));
    const maxOpen = new Map(callers.map((c) => [c, 0]));
    const allEjectedSamples = new Map(callers.map((c) => [c, 0]));
    while (Date.now() - failingAt < 10_000) {
      for (const caller of callers) {
        const stats = caller.stats();
        const ejected = stats.filter(
          (s) => (s as { ejected?: boolean }).ejected ?? s.breaker === "open",
        ).length;
        const open = stats.filter((s) => s.breaker === "open").length;
        const share = stats.length === 0 ? 1 : ejected / stats.length;
        maxEjected.set(caller, Math.max(maxEjected.get(caller) ?? 0, share));
        maxOpen.set(caller, Math.max(maxOpen.get(caller) ?? 0, stats.length === 0 ? 0 : open / stats.length));
        if (ejected === stats.length) allEjectedSamples.set(caller, (allEjectedSamples.get(caller) ?? 0) + 1);
      }
      await sleep(100);
    }
    for (const caller of callers) await caller.stop();
    return callers.map((caller) => {
      const share = maxEjected.get(caller) ?? 0;
      return callerRow(this.name, caller, {
        lostEvents: null,
        recoverMs: null,
        failedCallsSinceMs: failingAt + 2000,
        checks: [
          check(
            "never more than 50 % ejected",
            share <= 0.5,
            `max ${Math.round(share * 100)} % ejected (open breakers: max ${Math.round((maxOpen.get(caller) ?? 0) * 100)} %)`,
          ),
          check(
            "failed calls in the first 2 s (reported)",
            true,
            `${caller.failures.filter((f) => f.atMs >= failingAt && f.atMs < failingAt + 2000).length} failed calls in the 2 s the breakers open in (not bounded)`,
          ),
        ],
        figures: {
          maxEjectedShare: share,
          samplesWithAllEjected: allEjectedSamples.get(caller),
          breakers: caller.stats().map((s) => `${s.instanceId}:${s.breaker}`),
        },
      });
    });
  },
};

/**
 * One freeze, two scenarios: the membership facts (evicted, back under the same id within 1 s of
 * SIGCONT, no duplicate or ghost) and the throughput fact (never below 50 % of before, per 250 ms).
 */
export const sigstopInstance: Scenario = {
  name: "instance-sigstop",
  fast: true,
  summary:
    "instance SIGSTOP 1.5×TTL, then SIGCONT: evicted, back under the same id within 1 s, no duplicate or ghost; (instance-sigstop-load) throughput per 250 ms never below 50 % of before; a third caller hedges after 50 ms",
  timeoutMs: () => 120_000,
  async run({ scope, policies, log }) {
    const cluster = await Cluster.start(scope, { instances: FOUR });
    const callers = await startCallers(scope, cluster.registryAddress, policies, FOUR.length, {
      hedgeAfterMs: 50,
    });
    await sleep(2000); // the baseline throughput
    const victim = "echo-2";
    const ids = FOUR.map((s) => s.instanceId);
    const stoppedAt = Date.now();
    cluster.instance(victim).signal("SIGSTOP");
    log(`SIGSTOP ${victim}`);
    let evictedAfterMs: number | null = null;
    while (Date.now() - stoppedAt < 1.5 * TTL_MS) {
      if (evictedAfterMs === null && !(await cluster.etcd.instanceIds(SERVICE)).includes(victim))
        evictedAfterMs = Date.now() - stoppedAt;
      await sleep(100);
    }
    cluster.instance(victim).signal("SIGCONT");
    const resumedAt = Date.now();
    log(`SIGCONT ${victim}`);
    const backMs = await recoveryTime(
      async () => (await cluster.etcd.instanceIds(SERVICE, 500)).includes(victim),
      {
        fromMs: resumedAt,
        windowMs: 3 * TTL_MS,
        intervalMs: 50,
      },
    );
    await sleep(2000);
    const lost = await settle(cluster, callers);
    const endAt = Date.now();
    for (const caller of callers) await caller.stop();
    const etcdIds = await cluster.etcd.instanceIds(SERVICE);
    const report = await orphans(cluster);
    return callers.flatMap((caller) => {
      const listed = caller.stats().map((s) => s.instanceId);
      const unique = new Set(listed).size === listed.length && listed.sort().join(",") === ids.join(",");
      const membership = callerRow("instance-sigstop", caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: backMs,
        checks: [
          check(
            "evicted while stopped",
            evictedAfterMs !== null,
            `gone from etcd after ${ms(evictedAfterMs)}`,
          ),
          check(
            "back under the same id within 1 s of SIGCONT",
            backMs !== null && backMs <= 1000,
            `${ms(backMs)} ≤ 1000 ms`,
          ),
          check(
            "no duplicate or ghost",
            unique && etcdIds.join(",") === ids.join(","),
            `etcd: ${etcdIds.join(",")}; caller: ${listed.join(",")}`,
            true,
          ),
          ...orphanChecks(report),
        ],
        figures: { evictedAfterMs, backMs },
      });
      const baseline = caller.meanThroughput(stoppedAt - 2000, stoppedAt);
      const lowest = caller.minThroughput(stoppedAt, resumedAt + 2000) ?? 0;
      const belowHalfMs =
        caller.throughput.filter(([at, n]) => at >= stoppedAt && at < resumedAt + 2000 && n < 0.5 * baseline)
          .length * 250;
      const series = caller.throughput
        .filter(([at]) => at >= stoppedAt - 2000 && at < endAt)
        .map(([, n]) => n);
      const load = callerRow("instance-sigstop-load", caller, {
        lostEvents: lost.get(caller) ?? null,
        recoverMs: null,
        checks: [
          check(
            "throughput never below 50 % of before",
            lowest >= 0.5 * baseline,
            `lowest ${lowest} calls/250 ms vs ${baseline.toFixed(1)} before (${baseline > 0 ? Math.round((100 * lowest) / baseline) : 0} %); below 50 % for ${belowHalfMs} ms of the ${Math.round(resumedAt + 2000 - stoppedAt)} ms from SIGSTOP to SIGCONT + 2 s`,
          ),
        ],
        figures: { belowHalfMs, baselinePer250ms: baseline, lowestPer250ms: lowest, seriesPer250ms: series },
      });
      return [membership, load];
    });
  },
};
