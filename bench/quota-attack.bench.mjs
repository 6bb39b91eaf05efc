// A well-behaved caller's Register while one anonymous caller floods another service (issue 7:
// "a well-behaved client's Register stays under 50 ms while they run"). Per round: the caller's
// 20 sequential Registers alone, and the same while a process of its own sends 2,000 Registers
// (32 in flight) into a service capped at 50 instances (`--max-instances-per-service 50`).
import { randomBytes } from "node:crypto";
import { startChild, startEtcd, startRegistryProcess, unary } from "./cluster.mjs";
import { interleave, percentile, ratioRow, summarizeVariants } from "./harness.mjs";

export const description =
  "a well-behaved Register's latency while a flood of 2,000 Registers is refused at the instance quota, vs no flood";
export const defaultRounds = 5;

const MAX_INSTANCES = 50;
const CALLS = 20;

/** @param {{ rounds: number, warmupRounds: number, quick: boolean }} options */
export async function run({ rounds, warmupRounds, quick }) {
  const floodSize = quick ? 500 : 2000;
  const { connectRegistry, registryV1 } = await import("../dist/client/index.js");
  const etcd = await startEtcd();
  let registry;
  let client;
  const tally = { ok: 0, limited: 0, other: 0 };
  try {
    registry = await startRegistryProcess(etcd.endpoint, {
      limits: { maxInstancesPerService: MAX_INSTANCES },
    });
    client = connectRegistry(registry.address);
    let batch = 0;
    const registerAll = async () => {
      batch += 1;
      const latencies = [];
      for (let i = 0; i < CALLS; i += 1) {
        const request = registryV1.RegisterRequest.fromPartial({
          service: `good-${batch}`, // a service of its own per sample: the quota caps each at 50
          instanceId: `b${batch}-${i}`,
          address: "127.0.0.1:9",
          weight: 1,
          ttlSeconds: "10",
          registrationId: randomBytes(16).toString("hex"),
        });
        const began = performance.now();
        await unary(client, "register", request);
        latencies.push(performance.now() - began);
      }
      latencies.sort((a, b) => a - b);
      return { p50Ms: percentile(latencies, 0.5), maxMs: latencies.at(-1) };
    };
    const flooded = async () => {
      const flood = await startChild("register-flood.mjs", {
        registry: registry.address,
        service: `flooded-${batch}`,
        count: floodSize,
        concurrency: 32,
      });
      const sample = await registerAll();
      const result = await flood.next("done", 120_000); // the JSON after the word, parsed
      for (const key of Object.keys(tally)) tally[key] += result[key];
      await flood.kill();
      return sample;
    };
    const samples = await interleave(
      [
        { name: "during flood", run: flooded },
        { name: "alone", run: registerAll },
      ],
      { rounds, warmupRounds },
    );
    return {
      columns: [
        { key: "p50Ms", label: "Register p50", unit: "ms", digits: 1 },
        { key: "maxMs", label: `max of ${CALLS}`, unit: "ms", digits: 1 },
      ],
      variants: summarizeVariants(samples, ["p50Ms", "maxMs"]),
      ratios: [
        ratioRow(samples, { metric: "maxMs", of: "max", numerator: "during flood", denominator: "alone" }),
      ],
      notes: [
        `flood: ${floodSize} Registers per round, 32 in flight, from another process; all rounds: ${tally.ok} accepted, ${tally.limited} RESOURCE_EXHAUSTED, ${tally.other} other`,
        `goal: the well-behaved Register stays under 50 ms during the flood`,
      ],
    };
  } finally {
    client?.close();
    await registry?.kill();
    await etcd.stop();
  }
}
