#!/usr/bin/env node
// Capacity of one registry process (issue 10, item 2; DESIGN §8: 10,000 instances and 1,000 Watch
// streams in < 500 MB RSS, holding every lease). Starts its own etcd and a registry child process
// (the compiled CLI, `npm run build`), then a light in-process load through the registry's gRPC API
// (test/helpers/scale-load.ts): every instance Registers and renews over its own KeepAlive stream
// every TTL/3, and Watch streams stay open. Holds for --hold-seconds (default 2 TTLs + 5 s), then
// checks every key in etcd is still held by the lease it was registered with. Prints and records:
// lost leases, KeepAlive errors, registry peak/final RSS and CPU.
//
//   node --import tsx bench/registry-scale.mjs [--instances 10000 --watchers 1000 --ttl 10
//     --hold-seconds 25 --runs 1 --etcd-stall-seconds 0 --registry-root DIR --out bench/results]
//
// --etcd-stall-seconds S freezes etcd (SIGSTOP, then SIGCONT) for S seconds, 2 s into the hold:
// every KeepAlive answers UNAVAILABLE and every registrar's stream reconnects at once. With S
// below TTL × 2/3 no lease may expire, so a lost lease is the registry's doing.
// --registry-root runs another checkout's registry (e.g. /work/main) for a before/after figure;
// --registry-node-args="FLAGS" gives the registry node flags, with `=` (parseArgs refuses a separate
// value starting with `-`), e.g. "--cpu-prof --cpu-prof-dir=/tmp/p", "--max-old-space-size=1024",
// or "--heapsnapshot-signal=SIGUSR2" with LEASEHOLD_BENCH_SIGNAL_AT_END=SIGUSR2 (the snapshot lands
// in this script's working directory; bench/heap-summary.mjs reads it). Recorded as registryNodeArgs.
// Not part of `npm run bench` (minutes long, and ~1.5 GB of memory between the processes).
import { execFileSync, spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Etcd3 } from "etcd3";
import { freePort, startLocalEtcd } from "../cli/local-etcd.ts";
import { startScaleLoad } from "../test/helpers/scale-load.ts";
import { processCpuMs, processRssBytes, sleep } from "./cluster.mjs";
import { environment, gitState, writeRecord } from "./harness.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: {
    instances: { type: "string", default: "10000" },
    watchers: { type: "string", default: "1000" },
    ttl: { type: "string", default: "10" },
    "hold-seconds": { type: "string" },
    runs: { type: "string", default: "1" },
    "registry-root": { type: "string", default: root },
    out: { type: "string" },
    "registry-node-args": { type: "string", default: "" },
    "etcd-stall-seconds": { type: "string", default: "0" },
    "register-seconds": { type: "string" },
    "registry-args": { type: "string", default: "" },
  },
});
const instances = Number(values.instances);
const watchers = Number(values.watchers);
const ttlSeconds = Number(values.ttl);
const holdSeconds = Number(values["hold-seconds"] ?? 2 * ttlSeconds + 5);
const runs = Number(values.runs);
const registryRoot = values["registry-root"];
const etcdStallSeconds = Number(values["etcd-stall-seconds"]);

/** RSS in bytes and CPU seconds (user + system) of process `pid`, from /proc. */
function processUsage(pid) {
  return { rssBytes: processRssBytes(pid), cpuSeconds: processCpuMs(pid) / 1000 };
}

async function runOnce() {
  // Others measure on this box too: the load average goes with every figure.
  const uptimeBefore = execFileSync("uptime", { encoding: "utf8" }).trim();
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
      ...values["registry-args"].split(" ").filter(Boolean),
    ],
    {
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  const logLevels = {};
  const warnings = [];
  let isStopping = false;
  let logTail = "";
  registry.stderr.setEncoding("utf8").on("data", (chunk) => {
    const lines = (logTail + chunk).split("\n");
    logTail = lines.pop() ?? "";
    for (const line of lines) {
      const level = /"level":(\d+)/.exec(line)?.[1] ?? "other";
      logLevels[level] = (logLevels[level] ?? 0) + 1;
      if ((Number(level) >= 40 || level === "other") && warnings.length < 10)
        warnings.push(line.slice(0, 600));
    }
  });
  let load;
  // 10,000 keys with their hashes are over grpc-js's default 4 MiB per message.
  const etcd3 = new Etcd3({
    hosts: etcd.endpoint,
    grpcOptions: { "grpc.max_receive_message_length": 64 << 20 },
  });
  try {
    for (;;) {
      const ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`).then(
        (response) => response.ok,
        () => false,
      );
      if (ready) break;
      if (registry.exitCode !== null) throw new Error(`registry exited ${registry.exitCode}`);
      await sleep(100);
    }
    const idle = processUsage(registry.pid);
    let peakRssBytes = idle.rssBytes;
    const sampler = setInterval(() => {
      if (registry.exitCode !== null || registry.signalCode !== null) return;
      peakRssBytes = Math.max(peakRssBytes, processUsage(registry.pid).rssBytes);
    }, 250);
    registry.once("exit", (code, signal) => {
      if (!isStopping)
        console.error(`registry exited early: ${code ?? signal}; last lines: ${warnings.join("\n")}`);
    });
    const registerStartedMs = Date.now();
    load = await startScaleLoad({
      address: `127.0.0.1:${port}`,
      instances,
      watchers,
      ttlSeconds,
      registerForMs:
        values["register-seconds"] === undefined ? undefined : Number(values["register-seconds"]) * 1000,
    });
    const registerSeconds = (Date.now() - registerStartedMs) / 1000;
    const afterRegister = processUsage(registry.pid);
    const uptimeAfterRegister = execFileSync("uptime", { encoding: "utf8" }).trim();
    if (etcdStallSeconds > 0) {
      await sleep(2000);
      etcd.process.kill("SIGSTOP");
      await sleep(etcdStallSeconds * 1000);
      etcd.process.kill("SIGCONT");
      await sleep(Math.max(0, holdSeconds - 2 - etcdStallSeconds) * 1000);
    } else await sleep(holdSeconds * 1000);
    const end = processUsage(registry.pid);
    // Where the registry's memory is, from its own process metrics (prom-client defaults).
    const metrics = await fetch(`http://127.0.0.1:${adminPort}/metrics`).then((response) => response.text());
    const gauge = (name) =>
      Math.round(Number(new RegExp(`^${name} (\\S+)$`, "m").exec(metrics)?.[1] ?? NaN) / 2 ** 20);
    const registryMemoryMb = {
      heapUsed: gauge("nodejs_heap_size_used_bytes"),
      heapTotal: gauge("nodejs_heap_size_total_bytes"),
      external: gauge("nodejs_external_memory_bytes"),
    };
    if (process.env.LEASEHOLD_BENCH_SIGNAL_AT_END) {
      registry.kill(process.env.LEASEHOLD_BENCH_SIGNAL_AT_END);
      await sleep(Number(process.env.LEASEHOLD_BENCH_SIGNAL_WAIT_MS ?? 20_000));
    }
    clearInterval(sampler);
    peakRssBytes = Math.max(peakRssBytes, end.rssBytes);
    const counts = load.counts();
    // Shed Registers and the registry's own view of them (leasehold_registry_limited_total).
    const shedByRegistry = Object.fromEntries(
      [
        ...metrics.matchAll(
          /^leasehold_registry_limited_total\{limit="(overload_\w+|renewals_per_second)"\} (\S+)$/gm,
        ),
      ].map(([, limit, value]) => [limit, Number(value)]),
    );
    const projectedRenewalsPerSecond = Number(
      /^leasehold_registry_projected_renewals_per_second (\S+)$/m.exec(metrics)?.[1] ?? NaN,
    );
    const keys = await etcd3.getAll().prefix("/leasehold/v1/services/scale-").exec();
    const held = new Map(
      keys.kvs.map((kv) => [kv.key.toString().slice("/leasehold/v1/services/".length), kv.lease]),
    );
    const keysMoved = [...load.leases].filter(([key, leaseId]) => held.get(key) !== leaseId).length;
    const mb = (bytes) => Math.round(bytes / 2 ** 20);
    return {
      instances,
      watchers,
      ttlSeconds,
      holdSeconds,
      etcdStallSeconds,
      registerSeconds,
      ...counts,
      registerPerSecond: Math.round(counts.registered / registerSeconds),
      keysNotHeldByTheirLease: keysMoved,
      shedByRegistry,
      projectedRenewalsPerSecond,
      uptimeBefore,
      uptimeAfterRegister,
      uptimeEnd: execFileSync("uptime", { encoding: "utf8" }).trim(),
      registryRssMb: {
        idle: mb(idle.rssBytes),
        afterRegister: mb(afterRegister.rssBytes),
        end: mb(end.rssBytes),
        peak: mb(peakRssBytes),
      },
      registryMemoryMb,
      registryCpuPercentWhileRegistering:
        Math.round(((afterRegister.cpuSeconds - idle.cpuSeconds) / registerSeconds) * 1000) / 10,
      registryCpuPercentWhileHolding:
        Math.round(((end.cpuSeconds - afterRegister.cpuSeconds) / holdSeconds) * 1000) / 10,
      registryLogLinesByLevel: logLevels,
      registryWarnings: warnings,
    };
  } finally {
    load?.close();
    etcd3.close();
    isStopping = true;
    registry.kill("SIGTERM");
    await new Promise((resolve) => (registry.exitCode !== null ? resolve() : registry.once("exit", resolve)));
    await etcd.stop();
  }
}

const results = [];
for (let run = 0; run < runs; run += 1) {
  const result = await runOnce();
  results.push(result);
  console.log(
    `run ${run + 1}/${runs}: ${result.registered} of ${instances} instances registered + ${watchers} Watch streams, TTL ${ttlSeconds} s, held ${holdSeconds} s${etcdStallSeconds > 0 ? ` (etcd frozen ${etcdStallSeconds} s)` : ""}: ` +
      `lost leases ${result.lostLeases}, keys not held by their lease ${result.keysNotHeldByTheirLease}, ` +
      `register retries ${JSON.stringify(result.registerRetries)} (max pushback ${result.maxPushbackMs} ms), ` +
      `refused by the registry ${JSON.stringify(result.shedByRegistry)}, projected renewals/s ${Math.round(result.projectedRenewalsPerSecond)}, ` +
      `KeepAlive errors ${JSON.stringify(result.keepAliveErrors)}, registry RSS peak ${result.registryRssMb.peak} MB ` +
      `(idle ${result.registryRssMb.idle}, end ${result.registryRssMb.end}; JS heap used ${result.registryMemoryMb.heapUsed} of ${result.registryMemoryMb.heapTotal}, external ${result.registryMemoryMb.external}), registry CPU ${result.registryCpuPercentWhileHolding} % holding, ${result.registryCpuPercentWhileRegistering} % registering, ` +
      `Register ${result.registerPerSecond}/s; uptime at end: ${result.uptimeEnd}`,
  );
}
const record = {
  benchmark: "registry-scale",
  registryRoot,
  registryNodeArgs: values["registry-node-args"],
  registryArgs: values["registry-args"],
  ...gitState(registryRoot),
  environment: environment(),
  results,
};
if (values.out !== undefined) console.log(`wrote ${writeRecord(values.out, "registry-scale", record)}`);
else console.log(JSON.stringify(record));
