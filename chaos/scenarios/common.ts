/** Helpers shared by the scenarios: the standard cluster, convergence, orphans and recovery timelines. */
import type { Caller } from "../lib/caller.js";
import { type Cluster, type InstanceSpec, SERVICE, TTL_SECONDS } from "../lib/cluster.js";
import type { EtcdInstance } from "../lib/etcd.js";
import { type Check, check, row, type Row } from "../lib/result.js";
import { sleep, waitFor } from "../lib/scope.js";

/** Four echo instances with weights 1:2:3:4 (so `weighted_round_robin` is not round robin). */
export const FOUR: readonly InstanceSpec[] = [1, 2, 3, 4].map((n) => ({
  instanceId: `echo-${n}`,
  weight: n,
}));

export const TTL_MS = TTL_SECONDS * 1000;

/**
 * Differences between what a caller lists and what etcd holds: ids on one side only, plus ids whose
 * address differs. 0 means the caller converged to etcd's exact membership.
 */
export function membershipDiff(
  etcd: readonly EtcdInstance[],
  listed: readonly { instanceId: string; address: string }[],
): number {
  const want = new Map(etcd.map((i) => [i.instanceId, String(i.value.address ?? "")]));
  const have = new Map(listed.map((i) => [i.instanceId, i.address]));
  let diff = 0;
  for (const [id, address] of want) if (have.get(id) !== address) diff++;
  for (const id of have.keys()) if (!want.has(id)) diff++;
  return diff;
}

/**
 * Waits (up to TTL + 3 s) until every caller lists exactly etcd's membership; returns each caller's
 * remaining difference (its "lost events").
 */
export async function settle(cluster: Cluster, callers: readonly Caller[]): Promise<Map<Caller, number>> {
  const result = new Map<Caller, number>();
  const deadline = Date.now() + TTL_MS + 3000;
  for (;;) {
    const etcd = (await cluster.etcd.instances(SERVICE)).instances;
    for (const caller of callers) result.set(caller, membershipDiff(etcd, caller.stats()));
    if ([...result.values()].every((d) => d === 0) || Date.now() > deadline) return result;
    await sleep(100);
  }
}

export interface OrphanReport {
  /** Keys of instances with no live process. */
  readonly ghostKeys: string[];
  /** Live processes with no key. */
  readonly missingKeys: string[];
  /** Leases attached to no key (granted and abandoned). */
  readonly orphanLeases: string[];
  /** Keys whose lease changed or that vanished within TTL + 1.5 s of the check (held by nobody). */
  readonly unheldKeys: string[];
}

/** Compares etcd with the live instance processes, then watches the keys for TTL + 1.5 s. */
export async function orphans(cluster: Cluster): Promise<OrphanReport> {
  const live = new Set(cluster.liveInstanceIds());
  const first = (await cluster.etcd.instances(SERVICE)).instances;
  const leases = await cluster.etcd.leases();
  const held = new Set(first.map((i) => i.leaseId));
  await sleep(TTL_MS + 1500);
  const later = new Map(
    (await cluster.etcd.instances(SERVICE)).instances.map((i) => [i.instanceId, i.leaseId]),
  );
  return {
    ghostKeys: first.filter((i) => !live.has(i.instanceId)).map((i) => i.instanceId),
    missingKeys: [...live].filter((id) => !first.some((i) => i.instanceId === id)),
    orphanLeases: leases.filter((lease) => !held.has(lease)),
    unheldKeys: first.filter((i) => later.get(i.instanceId) !== i.leaseId).map((i) => i.instanceId),
  };
}

export function orphanChecks(report: OrphanReport): Check[] {
  const list = (ids: string[]): string => (ids.length === 0 ? "none" : ids.join(","));
  return [
    check(
      "no orphan keys",
      report.ghostKeys.length === 0 && report.unheldKeys.length === 0,
      `ghost keys: ${list(report.ghostKeys)}; keys on a lease nobody renews (replaced or gone within TTL + 1.5 s): ${list(report.unheldKeys)}`,
      true,
    ),
    check(
      "every live instance listed",
      report.missingKeys.length === 0,
      `live instances missing from etcd: ${list(report.missingKeys)}`,
      true,
    ),
    check(
      "no orphan leases",
      report.orphanLeases.length === 0,
      `leases with no key: ${report.orphanLeases.length}`,
    ),
  ];
}

/**
 * Samples `probe` every `intervalMs` for `windowMs` from now; returns when it last turned true and
 * stayed true to the end (ms after `fromMs`), or null when it was false at the end.
 */
export async function recoveryTime(
  probe: () => Promise<boolean>,
  {
    fromMs,
    windowMs,
    intervalMs = 100,
    stopWhenStableMs = 1500,
  }: { fromMs: number; windowMs: number; intervalMs?: number; stopWhenStableMs?: number },
): Promise<number | null> {
  const endMs = Date.now() + windowMs;
  let trueSinceMs: number | undefined;
  while (Date.now() < endMs) {
    let value: boolean;
    try {
      value = await probe();
    } catch {
      value = false;
    }
    const now = Date.now();
    if (value) trueSinceMs ??= now;
    else trueSinceMs = undefined;
    if (trueSinceMs !== undefined && now - trueSinceMs >= stopWhenStableMs) break;
    await sleep(intervalMs);
  }
  return trueSinceMs === undefined ? null : trueSinceMs - fromMs;
}

/** True once etcd lists exactly `ids` (sorted compare). */
export function etcdHasExactly(cluster: Cluster, ids: readonly string[]): () => Promise<boolean> {
  const want = [...ids].sort().join(",");
  return async () => (await cluster.etcd.instanceIds(SERVICE, 500)).join(",") === want;
}

/** Recovery must hold this long: a lease etcd restored or that was abandoned expires within TTL (+0.5 s). */
export const STABLE_MS = 2 * TTL_MS + 500;

/** The standard per-caller row: 0 failed calls (robust) plus the scenario's own checks. */
export function callerRow(
  scenario: string,
  caller: Caller,
  {
    checks,
    lostEvents,
    recoverMs,
    figures = {},
    failedCallsSinceMs,
    note,
  }: {
    checks: Check[];
    lostEvents: number | null;
    recoverMs: number | null;
    figures?: Record<string, unknown>;
    failedCallsSinceMs?: number;
    note?: string;
  },
): Row {
  const failed = failedCallsSinceMs === undefined ? caller.failed : caller.failedSince(failedCallsSinceMs);
  const failedCheck = check(
    "0 failed calls",
    failed === 0,
    `${failed} failed calls${failed > 0 ? ` (${caller.failureSummary(3, failedCallsSinceMs ?? 0)})` : ""}`,
    true,
  );
  return row({
    scenario,
    policy: caller.label,
    calls: caller.calls,
    failedCalls: caller.failed,
    failedAttempts: caller.failedAttempts(),
    lostEvents,
    recoverMs,
    checks: [
      failedCheck,
      ...checks,
      ...(lostEvents === null
        ? []
        : [check("caller converged to etcd", lostEvents === 0, `caller vs etcd: ${lostEvents} differences`)]),
    ],
    figures: { ...figures, failures: caller.failures.slice(0, 20) },
    ...(note === undefined ? {} : { note }),
  });
}

/** Waits until `caller` no longer lists `instanceId` (or `timeoutMs`); ms it took, or null. */
export async function untilRemoved(
  caller: Caller,
  instanceId: string,
  sinceMs: number,
  timeoutMs: number,
): Promise<number | null> {
  const removed = await waitFor(() => !caller.stats().some((s) => s.instanceId === instanceId), {
    timeoutMs,
    intervalMs: 50,
  });
  return removed === undefined ? null : Date.now() - sinceMs;
}

export const ms = (value: number | null): string => (value === null ? "never" : `${Math.round(value)} ms`);
