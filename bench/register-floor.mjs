#!/usr/bin/env node
// The registry's CPU per Register against its floor (issue 10, item 3): a "floor server", a bare
// grpc-js server whose Register handler does only one etcd3 LeaseGrant (no validation, no key, no
// watch, no metrics), so its CPU is what the two gRPC calls of a Register cost by themselves.
// Each registry checkout given (ROOT: a built checkout, e.g. this one and a build of main) and the
// floor server run in their own child process against one etcd; rounds rotate their order.
// Prints each one's CPU per Register (from /proc, 10 µs resolution at N=1000: use N ≥ 2000).
//
//   node bench/register-floor.mjs [--count 2000 --concurrency 64 --rounds 5 --out DIR] ROOT...
import { spawn } from "node:child_process";
import { loadavg } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { credentials, Metadata, Server, ServerCredentials } from "@grpc/grpc-js";
import { Etcd3 } from "etcd3";
import { freePort, startLocalEtcd } from "../dist/cli/local-etcd.js";
import {
  RegistryServiceClient,
  RegistryServiceService,
} from "../dist/proto/gen/leasehold/registry/v1/registry.js";
import { processCpuMs, registerRequest, sleep } from "./cluster.mjs";
import { environment, gitState, median, writeRecord } from "./harness.mjs";

const self = fileURLToPath(import.meta.url);

/** The floor server (child mode): Register = one etcd3 LeaseGrant, with the registry's etcd options. */
function serveFloor(etcdEndpoint, port) {
  process.on("SIGTERM", () => process.exit(0));
  const etcd3 = new Etcd3({
    hosts: etcdEndpoint,
    grpcOptions: { "grpc.enable_channelz": 0, "grpc.enable_retries": 0 },
  });
  const server = new Server({ "grpc.enable_channelz": 0 });
  server.addService(RegistryServiceService, {
    register: (call, callback) => {
      etcd3.leaseClient.leaseGrant({ TTL: 10 }, { deadline: Date.now() + 5000 }).then(
        (lease) =>
          callback(null, {
            leaseId: lease.ID,
            ttlSeconds: lease.TTL,
            revision: lease.header.revision,
            instance: call.request.instance,
            registrationToken: "x".repeat(43),
          }),
        (error) => callback(error),
      );
    },
  });
  server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (error) => {
    if (error) throw error;
    process.send("ready");
  });
}

if (process.env.LEASEHOLD_FLOOR_ETCD !== undefined) {
  serveFloor(process.env.LEASEHOLD_FLOOR_ETCD, Number(process.env.LEASEHOLD_FLOOR_PORT));
} else {
  const { values, positionals } = parseArgs({
    options: {
      count: { type: "string", default: "2000" },
      concurrency: { type: "string", default: "64" },
      rounds: { type: "string", default: "5" },
      out: { type: "string" },
    },
    allowPositionals: true,
  });
  const count = Number(values.count);
  const concurrency = Number(values.concurrency);
  const rounds = Number(values.rounds);
  const roots = positionals.length > 0 ? positionals : [join(dirname(self), "..")];
  const etcd = await startLocalEtcd();
  const targets = [];
  try {
    const floorPort = await freePort();
    const floor = spawn(process.execPath, [self], {
      env: { ...process.env, LEASEHOLD_FLOOR_ETCD: etcd.endpoint, LEASEHOLD_FLOOR_PORT: String(floorPort) },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    targets.push({ name: "floor", child: floor, port: floorPort });
    await new Promise((resolve) => floor.once("message", resolve));
    for (const [at, root] of roots.entries()) {
      const [port, adminPort] = [await freePort(), await freePort()];
      const child = spawn(
        process.execPath,
        [
          join(root, "leasehold.mjs"),
          "registry",
          `--listen=127.0.0.1:${port}`,
          `--admin-listen=127.0.0.1:${adminPort}`,
          `--etcd=${etcd.endpoint}`,
          `--prefix=/floor-bench-${at}/`,
        ],
        { stdio: "ignore" },
      );
      targets.push({ name: root, child, port, ...gitState(root) });
      while (
        !(await fetch(`http://127.0.0.1:${adminPort}/readyz`).then(
          (r) => r.ok,
          () => false,
        ))
      ) {
        if (child.exitCode !== null) throw new Error(`registry ${root} exited ${child.exitCode}`);
        await sleep(100);
      }
    }
    for (const target of targets) {
      target.client = new RegistryServiceClient(`127.0.0.1:${target.port}`, credentials.createInsecure());
    }
    const register = (client, round, index) =>
      new Promise((resolve, reject) =>
        client.register(
          registerRequest(`floor-${round}`, index, 10),
          new Metadata(),
          { deadline: Date.now() + 30_000 },
          (error) => (error === null ? resolve() : reject(error)),
        ),
      );
    /** CPU µs per Register of `target`'s process over N Registers, and the rate. */
    const measure = async (target, round) => {
      let next = 0;
      const cpuBeforeMs = processCpuMs(target.child.pid);
      const startedMs = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < count) await register(target.client, round, next++);
        }),
      );
      const perSecond = count / ((performance.now() - startedMs) / 1000);
      return { cpuUs: ((processCpuMs(target.child.pid) - cpuBeforeMs) * 1000) / count, perSecond };
    };
    for (const target of targets) await measure(target, -1); // warm-up, not recorded
    for (const target of targets) target.samples = [];
    for (let round = 0; round < rounds; round += 1) {
      for (let at = 0; at < targets.length; at += 1) {
        const target = targets[(at + round) % targets.length];
        target.samples.push(await measure(target, round));
      }
    }
    const load = loadavg().map((l) => l.toFixed(1));
    for (const { name, samples } of targets) {
      const cpu = samples.map((s) => s.cpuUs);
      console.log(
        `${name}: CPU per Register ${Math.round(median(cpu))} µs [${Math.round(Math.min(...cpu))}–${Math.round(Math.max(...cpu))}], ` +
          `${Math.round(median(samples.map((s) => s.perSecond)))}/s`,
      );
    }
    console.log(`N=${count}, concurrency ${concurrency}, ${rounds} rounds; load average ${load.join(" ")}`);
    if (values.out !== undefined) {
      const record = {
        benchmark: "register-floor",
        environment: environment(),
        count,
        concurrency,
        rounds,
        targets: targets.map(({ name, commit, dirty, samples }) => ({ name, commit, dirty, samples })),
        loadAverageAtEnd: loadavg(),
      };
      console.log(`wrote ${writeRecord(values.out, "register-floor", record)}`);
    }
  } finally {
    for (const target of targets) {
      target.client?.close();
      target.child.kill("SIGTERM");
    }
    await etcd.stop();
  }
}
