// Crash detection: a Leasehold instance (a Registrar holding a TTL 3 lease through the registry)
// and a raw etcd3 lease holder (etcd3's own keepalive, TTL 3), each alone in a child process, are
// SIGKILLed at the same instant; the time until a registry Watch stream sees the instance removed,
// and until a raw etcd3 watcher sees the key deleted, is measured from the kill. Each round kills
// a fresh pair a random 0–1 s after both hold their lease, so the kill lands anywhere in the
// keepalive period (TTL/3).
// DESIGN §8: gone within TTL + 0.5 s (the etcd floor).
import { connectRegistry } from "../dist/client/index.js";
import { servicePrefix, sleep, startChild, startEtcd, startRegistryProcess } from "./cluster.mjs";
import { ratioRow, summarizeVariants } from "./harness.mjs";

export const description =
  "SIGKILL → removal seen by a watcher, TTL 3: Leasehold instance vs raw etcd3 lease holder, killed together";
export const defaultRounds = 7;

const TTL_SECONDS = 3;
const SERVICE = "crash";
const RAW_PREFIX = "/bench-raw/crash/";
const LEASEHOLD = "leasehold";
const ETCD3 = "etcd3";

/** @param {{ rounds: number, warmupRounds: number }} options */
export async function run({ rounds, warmupRounds }) {
  const { Etcd3 } = await import("etcd3");
  const etcd = await startEtcd();
  const raw = new Etcd3({ hosts: etcd.endpoint });
  let registry;
  let client;
  let stream;
  let watcher;
  try {
    registry = await startRegistryProcess(etcd.endpoint);
    client = connectRegistry(registry.address);
    const removedAt = new Map(); // `${variant} ${id}` → when a watcher saw it go
    stream = client.watch({ service: SERVICE, startRevision: "0" });
    stream.on("data", (message) => {
      if (message.event?.$case !== "delta") return;
      for (const key of message.event.value.removed)
        removedAt.set(`${LEASEHOLD} ${key.instanceId}`, Date.now());
    });
    stream.on("error", () => undefined); // cancelled at the end
    watcher = await raw.watch().prefix(RAW_PREFIX).create();
    watcher.on("delete", (kv) =>
      removedAt.set(`${ETCD3} ${kv.key.toString().slice(RAW_PREFIX.length)}`, Date.now()),
    );

    const samples = { [LEASEHOLD]: [], [ETCD3]: [] };
    for (let round = -warmupRounds; round < rounds; round += 1) {
      const id = `r${round + warmupRounds}`;
      const holders = await Promise.all([
        startChild("holders.mjs", {
          kind: LEASEHOLD,
          registry: registry.address,
          service: SERVICE,
          count: 1,
          idPrefix: id,
          ttlSeconds: TTL_SECONDS,
        }),
        startChild("holders.mjs", {
          kind: ETCD3,
          etcd: etcd.endpoint,
          prefix: RAW_PREFIX,
          service: SERVICE,
          count: 1,
          idPrefix: id,
          ttlSeconds: TTL_SECONDS,
        }),
      ]);
      await sleep(Math.random() * 1000); // the keepalive period is TTL/3 = 1 s for both
      const killedAt = Date.now();
      await Promise.all(holders.map((holder) => holder.kill()));
      const deadline = killedAt + (TTL_SECONDS + 10) * 1000;
      const keys = [`${LEASEHOLD} ${id}-0`, `${ETCD3} ${id}-0`];
      while (!keys.every((key) => removedAt.has(key))) {
        if (Date.now() > deadline)
          throw new Error(`not removed within ${TTL_SECONDS + 10} s: ${keys.join(", ")}`);
        await sleep(20);
      }
      if (round < 0) continue;
      samples[LEASEHOLD].push({ removalMs: removedAt.get(keys[0]) - killedAt });
      samples[ETCD3].push({ removalMs: removedAt.get(keys[1]) - killedAt });
    }
    return {
      columns: [{ key: "removalMs", label: "kill → removal", unit: "ms", digits: 0 }],
      variants: summarizeVariants(samples, ["removalMs"]),
      ratios: [
        ratioRow(samples, { metric: "removalMs", of: "removal", numerator: LEASEHOLD, denominator: ETCD3 }),
      ],
      notes: [
        `goal: Leasehold removal ≤ TTL + 0.5 s = ${TTL_SECONDS * 1000 + 500} ms (DESIGN §8); ` +
          `watched through ${servicePrefix(SERVICE)} and ${RAW_PREFIX}`,
      ],
    };
  } finally {
    stream?.cancel();
    await watcher?.cancel();
    client?.close();
    raw.close();
    await registry?.kill();
    await etcd.stop();
  }
}
