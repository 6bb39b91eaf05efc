// Registry memory at steady state: a fresh registry process holding N instances with live
// keepalives (bench/children/holders.mjs: one Registrar and KeepAlive stream each) and W Watch
// streams of their service, against a fresh idle registry, interleaved. RSS after a full GC (the
// registry child's SIGUSR2), lost leases (each makes its Registrar register again), instances not
// held at the end, and registry and etcd CPU over the steady window (% of one CPU, from /proc).
// Default 1,000 instances and 1,000 streams; `--large` 10,000 and 1,000 (50,000: see
// bench/registry-scale.mjs, a lighter load than a Registrar each). DESIGN §8: 10,000 instances and
// 1,000 streams in < 500 MB RSS.
import {
  processCpuMs,
  registryAllocator,
  sleep,
  startChild,
  startEtcd,
  startRegistryProcess,
} from "./cluster.mjs";
import { interleave, ratioRow, summarizeVariants } from "./harness.mjs";

export const description =
  "registry RSS after GC with N instances (live keepalives) and W Watch streams, vs an idle registry";
export const defaultRounds = 5;

const SERVICE = "mem";
const IDLE = "idle registry";
const MIB = 1024 * 1024;

/** @param {{ rounds: number, warmupRounds: number, quick: boolean, large: boolean }} options */
export async function run({ rounds, warmupRounds, quick, large }) {
  const size = quick
    ? { instances: 200, streams: 20, ttlSeconds: 3 }
    : large
      ? { instances: 10_000, streams: 1000, ttlSeconds: 10 }
      : { instances: 1000, streams: 1000, ttlSeconds: 5 };
  const loaded = `leasehold N=${size.instances} W=${size.streams}`;
  const { Etcd3 } = await import("etcd3");
  const etcd = await startEtcd();
  const raw = new Etcd3({ hosts: etcd.endpoint });
  try {
    const sample = (withLoad) => async () => {
      const registry = await startRegistryProcess(etcd.endpoint);
      const children = [];
      try {
        let state = { held: 0, reRegistrations: 0 };
        let steadyMs = 1000;
        const cpuOf = [registry.pid, etcd.process.pid];
        let cpuBefore;
        if (withLoad) {
          const holders = await startChild(
            "holders.mjs",
            {
              kind: "leasehold",
              registry: registry.address,
              service: SERVICE,
              count: size.instances,
              ttlSeconds: size.ttlSeconds,
            },
            { timeoutMs: 600_000 },
          );
          children.push(holders);
          const watchers = await startChild("watchers.mjs", {
            kind: "leasehold",
            registry: registry.address,
            service: SERVICE,
            count: size.streams,
          });
          children.push(watchers);
          steadyMs = size.ttlSeconds * 1000; // keepalives every TTL/3: every lease renewed about 3 times
        }
        cpuBefore = cpuOf.map(processCpuMs);
        await sleep(steadyMs);
        const [registryCpu, etcdCpu] = cpuOf.map(
          (pid, i) => ((processCpuMs(pid) - cpuBefore[i]) * 100) / steadyMs,
        );
        if (withLoad) state = await children[0].ask("state", "state");
        const rssMiB = (await registry.rssAfterGc()) / MIB;
        return {
          rssMiB,
          lostLeases: state.reRegistrations,
          notHeld: withLoad ? size.instances - state.held : 0,
          registryCpu,
          etcdCpu,
        };
      } finally {
        for (const child of children) await child.kill();
        await registry.kill();
        await raw.delete().all(); // the next registry starts empty; the leases expire by themselves
      }
    };
    const samples = await interleave(
      [
        { name: IDLE, run: sample(false) },
        { name: loaded, run: sample(true) },
      ],
      { rounds, warmupRounds },
    );
    return {
      columns: [
        { key: "rssMiB", label: "RSS", unit: "MiB" },
        { key: "lostLeases", label: "lost", unit: "leases", digits: 0 },
        { key: "notHeld", label: "not held", unit: "at end", digits: 0 },
        { key: "registryCpu", label: "registry CPU", unit: "%", digits: 0 },
        { key: "etcdCpu", label: "etcd CPU", unit: "%", digits: 0 },
      ],
      variants: summarizeVariants(samples, ["rssMiB", "lostLeases", "notHeld", "registryCpu", "etcdCpu"]),
      ratios: [ratioRow(samples, { metric: "rssMiB", of: "RSS", numerator: loaded, denominator: IDLE })],
      notes: [
        `TTL ${size.ttlSeconds} s, CPU over the ${size.ttlSeconds} s after the last Register (1 s idle), RSS after it and a full GC, registry under ${registryAllocator}; ` +
          `goal at 10,000 instances + 1,000 streams: < 500 MB, 0 lost leases`,
      ],
    };
  } finally {
    raw.close();
    await etcd.stop();
  }
}
