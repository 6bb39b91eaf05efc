// Push latency: etcd put → event received, at 1, 100 and 1,000 watchers in one process
// (bench/children/watchers.mjs): Registry Watch streams of one service (through a registry in its
// own process) against raw etcd3 watchers of one key prefix. Each sample writes the same number of
// puts, paced, to its variant's keys only; every put carries its send time. Lost events (expected −
// distinct received) and duplicates are counted. DESIGN §8: p99 ≤ 1.25× raw at 1,000 watchers (the
// issue's goal; DESIGN says 2×), 0 lost.
import {
  collectDeliveries,
  instanceValue,
  paced,
  nowMs,
  servicePrefix,
  startChild,
  startEtcd,
  startRegistryProcess,
} from "./cluster.mjs";
import { interleave, ratioRow, summarizeVariants } from "./harness.mjs";

export const description =
  "push p99, etcd put → watcher: Registry Watch streams vs raw etcd3 watch(), same run";
export const defaultRounds = 7;

const SERVICE = "push";
const RAW_PREFIX = "/bench-raw/";
const EVENTS_PER_SECOND = 50;

/** @param {{ rounds: number, warmupRounds: number, quick: boolean }} options */
export async function run({ rounds, warmupRounds, quick }) {
  const sizes = quick ? [1, 100] : [1, 100, 1000];
  const events = quick ? 20 : 50;
  const { Etcd3 } = await import("etcd3");
  const etcd = await startEtcd();
  const raw = new Etcd3({ hosts: etcd.endpoint });
  const children = [];
  let registry;
  try {
    registry = await startRegistryProcess(etcd.endpoint);
    let batch = 0;
    const sample = (child, service, count, keyOf) => async () => {
      batch += 1;
      await paced(raw, events, EVENTS_PER_SECOND, (i) => {
        const id = `b${batch}-${i}`;
        return { key: keyOf(id), value: instanceValue(service, id, { sent_ms: String(nowMs()) }) };
      });
      const report = await collectDeliveries(child, events * count);
      const [p50Ms, p99Ms, maxMs] = report.latenciesMs;
      return {
        p50Ms,
        p99Ms,
        maxMs,
        lost: report.lost,
        duplicates: report.duplicates,
      };
    };
    const variants = [];
    for (const count of sizes) {
      // A service and a prefix per size, so watchers of one size never see another's events.
      const service = `${SERVICE}-${count}`;
      const rawPrefix = `${RAW_PREFIX}${service}/`;
      const leasehold = await startChild("watchers.mjs", {
        kind: "leasehold",
        registry: registry.address,
        service,
        count,
      });
      children.push(leasehold);
      const etcd3 = await startChild("watchers.mjs", {
        kind: "etcd3",
        etcd: etcd.endpoint,
        prefix: rawPrefix,
        count,
      });
      children.push(etcd3);
      variants.push(
        {
          name: `leasehold ${count}w`,
          run: sample(leasehold, service, count, (id) => `${servicePrefix(service)}${id}`),
        },
        { name: `etcd3 ${count}w`, run: sample(etcd3, service, count, (id) => `${rawPrefix}${id}`) },
      );
    }
    const samples = await interleave(variants, { rounds, warmupRounds });
    const metrics = ["p50Ms", "p99Ms", "maxMs", "lost", "duplicates"];
    const totals = (name, key) => samples[name].reduce((sum, s) => sum + s[key], 0);
    return {
      columns: [
        { key: "p50Ms", label: "p50", unit: "ms" },
        { key: "p99Ms", label: "p99", unit: "ms" },
        { key: "maxMs", label: "max", unit: "ms" },
        { key: "lost", label: "lost", unit: "events", digits: 0 },
        { key: "duplicates", label: "dup", unit: "events", digits: 0 },
      ],
      variants: summarizeVariants(samples, metrics),
      ratios: sizes.map((count) =>
        ratioRow(samples, {
          metric: "p99Ms",
          of: "p99",
          numerator: `leasehold ${count}w`,
          denominator: `etcd3 ${count}w`,
          target: 1.25,
        }),
      ),
      notes: sizes.map(
        (count) =>
          `${count} watchers: lost ${totals(`leasehold ${count}w`, "lost")} (leasehold), ` +
          `${totals(`etcd3 ${count}w`, "lost")} (etcd3) of ${events * count * rounds} events each; ` +
          `${events} puts per sample at ${EVENTS_PER_SECOND}/s`,
      ),
    };
  } finally {
    for (const child of children) await child.kill();
    raw.close();
    await registry?.kill();
    await etcd.stop();
  }
}
