// A registration flood from a process of its own: `count` Register calls into `service` with
// `concurrency` in flight, as one anonymous attacker would send them. Prints `ready` at once, then
// `done {"ok","limited","other"}` when every call has been answered.
import { randomBytes } from "node:crypto";
import { pool, unary } from "../cluster.mjs";

const options = JSON.parse(process.argv[2]);
const { connectRegistry, registryV1 } = await import("../../dist/client/index.js");
const client = connectRegistry(options.registry);
const tally = { ok: 0, limited: 0, other: 0 };
process.stdout.write("ready {}\n");
await pool(options.count, options.concurrency, async (i) => {
  const request = registryV1.RegisterRequest.fromPartial({
    service: options.service,
    instanceId: `flood-${i}`,
    address: "127.0.0.1:9",
    weight: 10000,
    ttlSeconds: "10",
    registrationId: randomBytes(16).toString("hex"),
  });
  try {
    await unary(client, "register", request);
    tally.ok += 1;
  } catch (error) {
    if (error.code === 8)
      tally.limited += 1; // RESOURCE_EXHAUSTED
    else tally.other += 1;
  }
});
process.stdout.write(`done ${JSON.stringify(tally)}\n`);
client.close();
