// Push latency: etcd put → event received, at 1, 100 and 1,000 watchers in one process and 1,000
// split over two (bench/children/watchers.mjs): Registry Watch streams of one service (through a
// registry in its own process) against raw etcd3 watchers of one key prefix. Each sample writes the same number of
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
// 200 puts per sample, so a sample's p99 at 1 watcher is the 2nd-slowest event, not the slowest.
const EVENTS = 200;

/** @param {{ rounds: number, warmupRounds: number, quick: boolean }} options */
export async function run({ rounds, warmupRounds, quick }) {
  // Watchers, and how many processes they are split over.
  const sizes = quick
    ? [
        { count: 1, processes: 1 },
        { count: 100, processes: 1 },
      ]
    : [1, 100, 1000].map((count) => ({ count, processes: 1 })).concat({ count: 1000, processes: 2 });
  const events = quick ? 20 : EVENTS;
  const label = ({ count, processes }) => `${count}w${processes > 1 ? `/${processes}p` : ""}`;
  const { Etcd3 } = await import("etcd3");
  const etcd = await startEtcd();
  const raw = new Etcd3({ hosts: etcd.endpoint });
  const children = [];
  let registry;
  try {
    registry = await startRegistryProcess(etcd.endpoint);
    let batch = 0;
    const sample = (watchers, service, count, keyOf) => async () => {
      batch += 1;
      await paced(raw, events, EVENTS_PER_SECOND, (i) => {
        const id = `b${batch}-${i}`;
        return { key: keyOf(id), value: instanceValue(service, id, { sent_ms: String(nowMs()) }) };
      });
      const report = await collectDeliveries(watchers, events * count);
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
    for (const size of sizes) {
      const { count, processes } = size;
      // A service and a prefix per size, so watchers of one size never see another's events.
      const service = `${SERVICE}-${label(size)}`.replace("/", "-");
      const rawPrefix = `${RAW_PREFIX}${service}/`;
      const start = (options) =>
        Promise.all(
          Array.from({ length: processes }, () =>
            startChild("watchers.mjs", { ...options, count: count / processes }),
          ),
        );
      const leasehold = await start({ kind: "leasehold", registry: registry.address, service });
      children.push(...leasehold);
      const etcd3 = await start({ kind: "etcd3", etcd: etcd.endpoint, prefix: rawPrefix });
      children.push(...etcd3);
      variants.push(
        {
          name: `leasehold ${label(size)}`,
          run: sample(leasehold, service, count, (id) => `${servicePrefix(service)}${id}`),
        },
        { name: `etcd3 ${label(size)}`, run: sample(etcd3, service, count, (id) => `${rawPrefix}${id}`) },
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
      ratios: sizes.map((size) =>
        ratioRow(samples, {
          metric: "p99Ms",
          of: "p99",
          numerator: `leasehold ${label(size)}`,
          denominator: `etcd3 ${label(size)}`,
          target: 1.25,
        }),
      ),
      notes: sizes.map(
        (size) =>
          `${size.count} watchers in ${size.processes} process(es): lost ${totals(`leasehold ${label(size)}`, "lost")} (leasehold), ` +
          `${totals(`etcd3 ${label(size)}`, "lost")} (etcd3) of ${events * size.count * rounds} events each; ` +
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
