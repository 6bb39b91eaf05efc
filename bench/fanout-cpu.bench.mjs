// Fan-out cost: W watchers of one service (bench/children/watchers.mjs, in a process of their own)
// while the benchmark writes C changes/s for D s to K instance keys of that service. Leasehold:
// Registry Watch streams through a registry process, so the cost is registry + etcd CPU; baseline:
// the same W watchers as raw etcd3 watches, served by etcd alone. CPU is read from /proc for the
// write window plus delivery of the last change. Issue 10's goal: ≤ 1.2× raw etcd.
import {
  collectDeliveries,
  instanceValue,
  nowMs,
  paced,
  processCpuMs,
  servicePrefix,
  startChild,
  startEtcd,
  startRegistryProcess,
} from "./cluster.mjs";
import { interleave, ratioRow, summarizeVariants } from "./harness.mjs";

export const description =
  "registry + etcd CPU serving W Watch streams × C changes/s, as a ratio to etcd serving W raw etcd3 watchers";
export const defaultRounds = 5;

const SERVICE = "fanout";
const RAW_PREFIX = "/bench-raw/fanout/";
const KEYS = 100;
const LEASEHOLD = "leasehold";
const ETCD3 = "etcd3";

/** @param {{ rounds: number, warmupRounds: number, quick: boolean }} options */
export async function run({ rounds, warmupRounds, quick }) {
  const streams = quick ? 100 : 1000;
  const perSecond = quick ? 20 : 100;
  const seconds = quick ? 2 : 10;
  const changes = perSecond * seconds;
  const { Etcd3 } = await import("etcd3");
  const etcd = await startEtcd();
  const raw = new Etcd3({ hosts: etcd.endpoint });
  const children = [];
  let registry;
  try {
    registry = await startRegistryProcess(etcd.endpoint);
    const leasehold = await startChild("watchers.mjs", {
      kind: LEASEHOLD,
      registry: registry.address,
      service: SERVICE,
      count: streams,
    });
    children.push(leasehold);
    const etcd3 = await startChild("watchers.mjs", {
      kind: ETCD3,
      etcd: etcd.endpoint,
      prefix: RAW_PREFIX,
      count: streams,
    });
    children.push(etcd3);
    let batch = 0;
    const sample = (watchers, prefix, pids) => async () => {
      batch += 1;
      const cpuBefore = pids().map(processCpuMs);
      const began = performance.now();
      await paced(raw, changes, perSecond, (i) => {
        const id = `i${i % KEYS}`;
        const metadata = { sent_ms: String(nowMs()), event: `b${batch}-${i}` };
        return { key: `${prefix}${id}`, value: instanceValue(SERVICE, id, metadata) };
      });
      const report = await collectDeliveries(watchers, changes * streams);
      const wallMs = performance.now() - began;
      const cpuMs = pids()
        .map(processCpuMs)
        .reduce((sum, after, i) => sum + after - cpuBefore[i], 0);
      return {
        cpuMs,
        cpuPercent: (cpuMs / wallMs) * 100,
        p99Ms: report.latenciesMs[1],
        lost: report.lost,
        messages: report.messages,
        endedStreams: report.ended,
      };
    };
    const samples = await interleave(
      [
        {
          name: LEASEHOLD,
          run: sample(leasehold, servicePrefix(SERVICE), () => [registry.pid, etcd.process.pid]),
        },
        { name: ETCD3, run: sample(etcd3, RAW_PREFIX, () => [etcd.process.pid]) },
      ],
      { rounds, warmupRounds },
    );
    return {
      columns: [
        { key: "cpuMs", label: "CPU", unit: "ms", digits: 0 },
        { key: "cpuPercent", label: "CPU", unit: "%" },
        { key: "p99Ms", label: "p99", unit: "ms" },
        { key: "lost", label: "lost", unit: "events", digits: 0 },
        { key: "messages", label: "messages", unit: "", digits: 0 },
        { key: "endedStreams", label: "ended", unit: "streams", digits: 0 },
      ],
      variants: summarizeVariants(samples, [
        "cpuMs",
        "cpuPercent",
        "p99Ms",
        "lost",
        "messages",
        "endedStreams",
      ]),
      ratios: [
        ratioRow(samples, {
          metric: "cpuMs",
          of: "CPU",
          numerator: LEASEHOLD,
          denominator: ETCD3,
          target: 1.2,
        }),
      ],
      notes: [
        `${streams} watchers × ${perSecond} changes/s for ${seconds} s over ${KEYS} keys; ` +
          `CPU: registry + etcd (leasehold), etcd (etcd3), from /proc; lost: versions a watcher never saw ` +
          `(a backed-up Registry stream gets only the latest version of each instance, by design: ` +
          `registry/watch/watch-subscription.ts), messages: delta messages (leasehold) or etcd watch responses ` +
          `(etcd3) that carried them, all watchers together (changes of one event-loop turn share one), ended: watchers cut so far, not reopened`,
      ],
    };
  } finally {
    for (const child of children) await child.kill();
    raw.close();
    await registry?.kill();
    await etcd.stop();
  }
}
