/** The per-instance distribution of a load run: `call --json`'s object and the human table. */
import Table from "cli-table3";
import type { InstanceStats } from "../../client/balancing/balanced-client.js";
import type { PolicyName } from "../../client/balancing/policies.js";

/** The summary of a run of balanced calls; `call --json` prints it as one JSON object. */
export interface CallSummary {
  service: string;
  policy: PolicyName;
  total: number;
  errors: number;
  instances: {
    instance_id: string;
    address: string;
    weight: number;
    calls: number;
    errors: number;
    p50_ms: number;
    p99_ms: number;
    breaker: string;
  }[];
}

/** Builds the `call --json` object from a balanced client's per-instance stats. */
export function summarize(
  service: string,
  policy: PolicyName,
  total: number,
  errors: number,
  stats: readonly InstanceStats[],
): CallSummary {
  return {
    service,
    policy,
    total,
    errors,
    instances: stats.map((instance) => ({
      instance_id: instance.instanceId,
      address: instance.address,
      weight: instance.weight,
      calls: instance.calls,
      errors: instance.errors,
      p50_ms: round(instance.p50Ms),
      p99_ms: round(instance.p99Ms),
      breaker: instance.breaker,
    })),
  };
}

/** `calls` as a percentage of `total`, e.g. `33.3 %` ("-" before any call). */
export function share(calls: number, total: number): string {
  return total === 0 ? "-" : `${((100 * calls) / total).toFixed(1)} %`;
}

/** Colours only on a terminal, so piped output stays plain text. */
export function tableStyle(): { head: string[]; border: string[] } | undefined {
  return process.stdout.isTTY ? undefined : { head: [], border: [] };
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000;

/** The human distribution table: calls, share, errors, p50/p99 and breaker per instance. */
export function renderSummary(summary: CallSummary): string {
  const table = new Table({
    head: ["instance", "address", "weight", "calls", "share", "errors", "p50 ms", "p99 ms", "breaker"],
    style: tableStyle(),
  });
  const calls = summary.instances.reduce((sum, instance) => sum + instance.calls, 0);
  for (const instance of summary.instances) {
    table.push([
      instance.instance_id,
      instance.address,
      instance.weight,
      instance.calls,
      share(instance.calls, calls),
      instance.errors,
      instance.p50_ms.toFixed(2),
      instance.p99_ms.toFixed(2),
      instance.breaker,
    ]);
  }
  return `${summary.service} via ${summary.policy}: ${summary.total} calls, ${summary.errors} failed\n${table.toString()}`;
}
