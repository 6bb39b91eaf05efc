#!/usr/bin/env node
// Registration rate (issue 10, item 3; DESIGN §8: ≥ 80 % of raw etcd3 lease grant + put).
// Starts its own etcd and a registry child process (the compiled CLI: `npm run build`), then per
// round runs, in rotating order, N Leasehold Registers (gRPC, `--concurrency` in flight), N raw
// etcd3 lease grant + put pairs (the same value size, the same concurrency) and, for context, N
// etcd3 lease grant + the registry's txn (create if absent) from this process; prints the rate of
// each and the Leasehold / grant + put ratio per round: median [min–max] over the rounds.
//
//   node bench/register-rate.mjs [--count 1000 --concurrency 64 --rounds 5 --ttl 10
//     --registry-root DIR --registry-node-args="--cpu-prof --cpu-prof-dir=/tmp/p" --out DIR]
//
// --registry-root runs another checkout's registry (e.g. /work/main) for a before/after figure.
import { spawn } from "node:child_process";
import { loadavg } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { credentials, Metadata } from "@grpc/grpc-js";
import { Etcd3 } from "etcd3";
import { freePort, startLocalEtcd } from "../dist/cli/local-etcd.js";
import { RegistryServiceClient } from "../dist/proto/gen/leasehold/registry/v1/registry.js";
import { processCpuMs, registerRequest, sleep } from "./cluster.mjs";
import { environment, gitState, median, writeRecord } from "./harness.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: {
    count: { type: "string", default: "1000" },
    concurrency: { type: "string", default: "64" },
    rounds: { type: "string", default: "5" },
    ttl: { type: "string", default: "10" },
    "registry-root": { type: "string", default: root },
    "registry-node-args": { type: "string", default: "" },
    out: { type: "string" },
  },
});
const count = Number(values.count);
const concurrency = Number(values.concurrency);
const rounds = Number(values.rounds);
const ttlSeconds = Number(values.ttl);
const registryRoot = values["registry-root"];

/** Runs `task(index)` for index 0..count-1 with `concurrency` in flight; returns per second. */
async function rate(task) {
  const startedNs = process.hrtime.bigint();
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await task(next++);
    }),
  );
  return count / (Number(process.hrtime.bigint() - startedNs) / 1e9);
}

const instance = (round, index) => registerRequest(`rate-${round}`, index, ttlSeconds);

const etcd = await startLocalEtcd();
const [port, adminPort] = [await freePort(), await freePort()];
const registry = spawn(
  process.execPath,
  [
    ...values["registry-node-args"].split(" ").filter(Boolean),
    join(registryRoot, "leasehold.mjs"),
    "registry",
    `--listen=127.0.0.1:${port}`,
    `--admin-listen=127.0.0.1:${adminPort}`,
    `--etcd=${etcd.endpoint}`,
  ],
  {
    stdio: ["ignore", "ignore", "ignore"],
  },
);
const etcd3 = new Etcd3({ hosts: etcd.endpoint });
const client = new RegistryServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
try {
  while (
    !(await fetch(`http://127.0.0.1:${adminPort}/readyz`).then(
      (r) => r.ok,
      () => false,
    ))
  ) {
    if (registry.exitCode !== null) throw new Error(`registry exited ${registry.exitCode}`);
    await sleep(100);
  }
  const variants = {
    leasehold: (round) =>
      rate(
        (index) =>
          new Promise((resolve, reject) =>
            client.register(
              instance(round, index),
              new Metadata(),
              { deadline: Date.now() + 30_000 },
              (error) => (error === null ? resolve() : reject(error)),
            ),
          ),
      ),
    "etcd3 grant + put": (round) =>
      rate(async (index) => {
        const lease = await etcd3.leaseClient.leaseGrant({ TTL: ttlSeconds });
        await etcd3
          .put(`/raw/v1/services/rate-${round}/i-${index}`)
          .value(JSON.stringify({ ...instance(round, index), registered_at: new Date().toISOString() }))
          .lease(lease.ID);
      }),
    // The registry's own etcd requests, without the registry: what the extra hop costs.
    "etcd3 grant + txn": (round) =>
      rate(async (index) => {
        const key = `/txn/v1/services/rate-${round}/i-${index}`;
        const lease = await etcd3.leaseClient.leaseGrant({ TTL: ttlSeconds });
        await etcd3
          .if(key, "Create", "==", 0)
          .then(
            etcd3
              .put(key)
              .value(JSON.stringify({ ...instance(round, index), registered_at: new Date().toISOString() }))
              .lease(lease.ID),
          )
          .else(etcd3.get(key))
          .commit();
      }),
  };
  const names = Object.keys(variants);
  const samples = Object.fromEntries(names.map((name) => [name, []]));
  const registryCpuUsPerRegister = [];
  // CPU µs per registration of each process (registry, etcd, this benchmark's client), per variant.
  const cpuUsPerOp = Object.fromEntries(names.map((name) => [name, { registry: [], etcd: [], client: [] }]));
  const cpuNowMs = () => ({
    registry: processCpuMs(registry.pid),
    etcd: processCpuMs(etcd.process.pid),
    client: (process.cpuUsage().user + process.cpuUsage().system) / 1e3,
  });
  // One warm-up round (JIT, connections), not recorded.
  for (const name of names) await variants[name](-1);
  for (let round = 0; round < rounds; round += 1) {
    const order = names.map((_, at) => names[(at + round) % names.length]);
    for (const name of order) {
      const before = cpuNowMs();
      samples[name].push(await variants[name](round));
      const after = cpuNowMs();
      for (const part of ["registry", "etcd", "client"])
        cpuUsPerOp[name][part].push(((after[part] - before[part]) * 1e3) / count);
      if (name === "leasehold") registryCpuUsPerRegister.push(cpuUsPerOp[name].registry.at(-1));
    }
  }
  const cpuSummary = names
    .map((name) => {
      const parts = cpuUsPerOp[name];
      const total = median(
        parts.registry.map((_, at) => parts.registry[at] + parts.etcd[at] + parts.client[at]),
      );
      return `${name} ${Math.round(total)} µs (registry ${Math.round(median(parts.registry))}, etcd ${Math.round(median(parts.etcd))}, client ${Math.round(median(parts.client))})`;
    })
    .join("; ");
  const ratios = samples.leasehold.map((value, round) => value / samples["etcd3 grant + put"][round]);
  const fmt = (values) =>
    `${Math.round(median(values))}/s [${Math.round(Math.min(...values))}–${Math.round(Math.max(...values))}]`;
  console.log(
    `register rate, N=${count}, concurrency ${concurrency}, ${rounds} rounds: ` +
      `leasehold ${fmt(samples.leasehold)}, etcd3 grant + put ${fmt(samples["etcd3 grant + put"])}, ` +
      `etcd3 grant + txn ${fmt(samples["etcd3 grant + txn"])}, ` +
      `ratio ${median(ratios).toFixed(2)} [${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}] (goal ≥ 0.80); ` +
      `registry CPU per Register ${Math.round(median(registryCpuUsPerRegister))} µs; ` +
      `CPU per registration, all processes (median): ${cpuSummary}; load average ${loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}`,
  );
  // How many etcd requests the registry made, by operation: batching shows as fewer txns than grants.
  const metricsText = await fetch(`http://127.0.0.1:${adminPort}/metrics`).then((r) => r.text());
  const etcdRequests = Object.fromEntries(
    [
      ...metricsText.matchAll(
        /^leasehold_registry_etcd_request_duration_seconds_count\{op="([^"]+)"\} (\d+)/gm,
      ),
    ].map(([, op, n]) => [op, Number(n)]),
  );
  console.log(`registry etcd requests over the whole run: ${JSON.stringify(etcdRequests)}`);
  const record = {
    benchmark: "register-rate",
    registryRoot,
    ...gitState(registryRoot),
    environment: environment(),
    count,
    concurrency,
    samples,
    ratios,
    registryCpuUsPerRegister,
    cpuUsPerOp,
    etcdRequests,
  };
  if (values.out !== undefined) console.log(`wrote ${writeRecord(values.out, "register-rate", record)}`);
} finally {
  client.close();
  etcd3.close();
  registry.kill("SIGTERM");
  await new Promise((resolve) => (registry.exitCode !== null ? resolve() : registry.once("exit", resolve)));
  await etcd.stop();
}
