// Lease holders in one process, so a benchmark can SIGKILL them (crash detection) or hold many
// (memory). Kind "leasehold": `count` Registrars (client/registration/registrar.ts) through the
// registry, each with its own KeepAlive stream, as `count` real instances would. Kind "etcd3": `count`
// raw etcd3 leases with etcd3's own keepalive, each with one key under `prefix`.
// Prints `ready` once every lease is held. Command `state` → `state {"held","reRegistrations","lost"}`:
// re-registrations (a Registrar that registered again) and leases etcd3 reported lost.
import { createInterface } from "node:readline";
import { instanceValue } from "../cluster.mjs";

const options = JSON.parse(process.argv[2]);
const ids = Array.from({ length: options.count }, (_, i) => `${options.idPrefix ?? "holder"}-${i}`);
const state = { held: 0, reRegistrations: 0, lost: 0 };

if (options.kind === "leasehold") {
  const { connectRegistry, Registrar } = await import("../../dist/client/index.js");
  const channels = Array.from({ length: 8 }, (_, i) =>
    connectRegistry(options.registry, { "grpc.bench": i }),
  );
  const registrars = ids.map(
    (instanceId, i) =>
      new Registrar({
        registry: channels[i % channels.length],
        instance: { service: options.service, instanceId, address: "127.0.0.1:9" },
        ttlSeconds: options.ttlSeconds,
        callTimeoutMs: 30_000,
        onStateChanged: (next, previous) => {
          if (next === "registered" && previous === "registering") state.held += 1;
          if (next === "registering" && previous !== "idle") {
            state.held -= 1;
            state.reRegistrations += 1;
          }
        },
      }),
  );
  // At most 64 Register calls in flight, as a fleet starting up would not all start in one tick.
  for (let i = 0; i < registrars.length; i += 64)
    await Promise.all(registrars.slice(i, i + 64).map((r) => r.start()));
} else {
  const { Etcd3 } = await import("etcd3");
  const client = new Etcd3({ hosts: options.etcd });
  for (let i = 0; i < ids.length; i += 64)
    await Promise.all(
      ids.slice(i, i + 64).map(async (instanceId) => {
        const lease = client.lease(options.ttlSeconds);
        lease.on("lost", () => (state.lost += 1));
        await lease.put(`${options.prefix}${instanceId}`).value(instanceValue(options.service, instanceId));
        state.held += 1;
      }),
    );
}

process.stdout.write("ready\n");
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "state") process.stdout.write(`state ${JSON.stringify(state)}\n`);
});
process.stdin.on("end", () => process.exit(0));
