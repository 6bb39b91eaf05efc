// Registration throughput: N Register calls (64 in flight) through a registry in its own process,
// against the same N as raw etcd3 lease grant + put straight to etcd, interleaved per round.
// DESIGN §8: registration ≥ 80 % of raw etcd3. Leases are revoked after each sample, untimed.
import { randomBytes } from "node:crypto";
import { instanceValue, pool, servicePrefix, startEtcd, startRegistryProcess, unary } from "./cluster.mjs";
import { interleave, ratioRow, summarizeVariants } from "./harness.mjs";

export const description =
  "Register through the registry (64 in flight), as a ratio to raw etcd3 lease grant + put of the same N";
export const defaultRounds = 5;
// A fresh registry process spends 620–790 µs of CPU per Register in its first 1,000 and 240–450 µs
// by its fifth (register-rate rounds, 2026-12-08, the same for --ttl 60): the measure is a running
// registry, so 3 rounds (3,000 Registers per size, and as many raw) warm both sides first.
export const defaultWarmupRounds = 3;

const CONCURRENCY = 64;
const TTL_SECONDS = 10;

/** @param {{ rounds: number, warmupRounds: number, quick: boolean, large: boolean }} options */
export async function run({ rounds, warmupRounds, quick, large }) {
  const sizes = quick ? [200] : large ? [1000, 5000] : [1000];
  const { Etcd3 } = await import("etcd3");
  const { connectRegistry, registryV1 } = await import("../dist/client/index.js");
  const etcd = await startEtcd();
  const raw = new Etcd3({ hosts: etcd.endpoint });
  let registry;
  let client;
  try {
    registry = await startRegistryProcess(etcd.endpoint);
    client = connectRegistry(registry.address);
    let batch = 0;
    const revoke = (leaseIds) =>
      pool(leaseIds.length, CONCURRENCY, (i) => raw.leaseClient.leaseRevoke({ ID: leaseIds[i] }));
    const timed = async (count, register) => {
      batch += 1;
      const began = performance.now();
      const leaseIds = await pool(count, CONCURRENCY, (i) => register(`b${batch}-${i}`));
      const wallMs = performance.now() - began;
      await revoke(leaseIds);
      return { perSecond: (count * 1000) / wallMs, wallMs };
    };
    const leasehold = (count) => () =>
      timed(count, async (instanceId) => {
        const request = registryV1.RegisterRequest.fromPartial({
          service: "reg",
          instanceId,
          address: "127.0.0.1:9",
          weight: 1,
          ttlSeconds: String(TTL_SECONDS),
          registrationId: randomBytes(16).toString("hex"),
        });
        return (await unary(client, "register", request)).leaseId;
      });
    const etcd3 = (count) => () =>
      timed(count, async (instanceId) => {
        const { ID } = await raw.leaseClient.leaseGrant({ TTL: TTL_SECONDS });
        await raw.kv.put({
          key: Buffer.from(`/bench-raw/reg/${instanceId}`),
          value: Buffer.from(instanceValue("reg", instanceId)),
          lease: ID,
        });
        return ID;
      });
    const variants = sizes.flatMap((count) => [
      { name: `leasehold N=${count}`, run: leasehold(count) },
      { name: `etcd3 N=${count}`, run: etcd3(count) },
    ]);
    const samples = await interleave(variants, { rounds, warmupRounds });
    return {
      columns: [
        { key: "perSecond", label: "rate", unit: "/s", digits: 0 },
        { key: "wallMs", label: "wall", unit: "ms", digits: 0 },
      ],
      variants: summarizeVariants(samples, ["perSecond", "wallMs"]),
      ratios: sizes.map((count) =>
        ratioRow(samples, {
          metric: "perSecond",
          of: "rate",
          numerator: `leasehold N=${count}`,
          denominator: `etcd3 N=${count}`,
          target: 0.8,
          goal: "≥",
        }),
      ),
      notes: [
        `registry prefix ${servicePrefix("reg")}, TTL ${TTL_SECONDS} s, ${CONCURRENCY} calls in flight`,
      ],
    };
  } finally {
    client?.close();
    raw.close();
    await registry?.kill();
    await etcd.stop();
  }
}
