import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import test from "ava";
import { Etcd3 } from "etcd3";
import { startLocalEtcd } from "../cli/local-etcd.js";
import { getServicePage, listServiceInstances } from "../client/discovery/list-service-instances.js";
import { MembershipWatcher } from "../client/discovery/membership-watcher.js";
import { connectRegistry } from "../client/registry-connection.js";
import { bulkId, putBulkInstances } from "./helpers/bulk-instances.js";
import { eventually } from "./helpers/eventually.js";
import { startTcpProxy } from "./helpers/tcp-proxy.js";

/** Instances of the service (the 50,000; LEASEHOLD_LARGE_INSTANCES makes it smaller locally). */
const COUNT = Number(process.env["LEASEHOLD_LARGE_INSTANCES"] ?? 50_000);
/** DESIGN §2's most metadata per instance. */
const METADATA_BYTES = 4096;
const SERVICE = "large";
const BIN = fileURLToPath(new URL("../leasehold.mjs", import.meta.url));

/** CPU time (user + system) a live process has used, in seconds; undefined when /proc has no answer. */
function cpuSeconds(pid: number | undefined): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the command), in clock ticks (100/s).
    return Math.round(((Number(fields[11]) + Number(fields[12])) / 100) * 10) / 10;
  } catch {
    return undefined;
  }
}

/** Peak resident set of a live process (VmHWM), in MiB; undefined when /proc has no answer. */
function peakRssMiB(pid: number | undefined): number | undefined {
  try {
    const kib = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return kib === undefined ? undefined : Math.round(Number(kib) / 1024);
  } catch {
    return undefined;
  }
}

test(`${COUNT} instances with 4 KiB metadata: the registry starts and re-lists; GetService, MembershipWatcher and leasehold watch --json read the whole service`, async (t) => {
  t.timeout(120_000, "the whole scenario"); // a bound on a hang, not a timing claim
  const timings: string[] = [];
  let mark = performance.now();
  const lap = (what: string) => {
    const now = performance.now();
    timings.push(`${what} ${((now - mark) / 1000).toFixed(1)} s`);
    mark = now;
  };

  // Fewer, larger transactions than etcd's defaults allow (128 ops, 1.5 MiB) for the bulk write.
  const etcd = await startLocalEtcd({ extraArgs: ["--max-txn-ops=1024", "--max-request-bytes=8388608"] });
  t.teardown(() => etcd.stop());
  const etcd3 = new Etcd3({
    hosts: etcd.endpoint,
    grpcOptions: { "grpc.max_receive_message_length": 64 << 20 },
  });
  t.teardown(() => etcd3.close());
  await putBulkInstances(etcd3, {
    service: SERVICE,
    count: COUNT,
    metadataBytes: METADATA_BYTES,
    parallel: 4,
    opsPerTxn: 1024,
  });
  lap("write to etcd");

  // The registry reaches etcd through a proxy, so the test can cut it off and force a re-list.
  const proxy = await startTcpProxy(etcd.endpoint);
  t.teardown(() => proxy.close());
  // The registry runs as its own process (`leasehold registry`), as deployed: its memory is its own.
  const registryProcess = spawn(
    process.execPath,
    [BIN, "registry", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--etcd", proxy.endpoint],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, LEASEHOLD_LOG_LEVEL: "info" } },
  );
  t.teardown(() => void registryProcess.kill("SIGKILL"));
  const logLines: string[] = [];
  createInterface({ input: registryProcess.stderr }).on("line", (line) => logLines.push(line));
  let registryAddress: string | undefined;
  for await (const line of createInterface({ input: registryProcess.stdout })) {
    registryAddress = /registry listening on (\S+)/.exec(line)?.[1];
    if (registryAddress !== undefined) break;
  }
  if (registryAddress === undefined)
    throw new Error(`registry did not start: ${logLines.slice(-5).join("\n")}`);
  lap("registry start (paged list)");

  // Default clients: grpc-js's 4 MiB receive limit.
  const client = connectRegistry(registryAddress);
  t.teardown(() => client.close());
  {
    const listed = await listServiceInstances(client, SERVICE);
    t.is(listed.instances.length, COUNT);
    t.is(listed.instances[0]?.instanceId, bulkId(0));
    t.is(listed.instances.at(-1)?.instanceId, bulkId(COUNT - 1));
    t.true(Object.values(listed.instances[0]?.metadata ?? {}).join("").length >= METADATA_BYTES - 64);
  }
  lap("GetService, every page");

  const watcher = new MembershipWatcher({ registry: client, service: SERVICE });
  t.teardown(() => watcher.close());
  watcher.start();
  await watcher.ready(60_000);
  t.is(watcher.current().instances.length, COUNT);
  lap("MembershipWatcher snapshot");

  const cli = spawn(process.execPath, [BIN, "watch", SERVICE, "--registry", registryAddress, "--json"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, LEASEHOLD_LOG_LEVEL: "warn" },
  });
  t.teardown(() => void cli.kill("SIGKILL"));
  let stderr = "";
  cli.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr = (stderr + chunk).slice(-2000)));
  const seen = new Set<string>();
  for await (const line of createInterface({ input: cli.stdout })) {
    const event = JSON.parse(line) as { type: string; instance_id: string };
    if (event.type === "snapshot") seen.add(event.instance_id);
    if (seen.size === COUNT) break;
  }
  const cliPeakMiB = peakRssMiB(cli.pid);
  const cliCpuSeconds = cpuSeconds(cli.pid);
  cli.kill("SIGTERM");
  t.is(seen.size, COUNT, stderr);
  lap("leasehold watch --json snapshot");

  // Re-list: cut the registry off etcd, change and compact past its watch, let it back. Its etcd
  // watch resumes into a compacted revision, fails, and the registry lists the prefix again.
  proxy.cut();
  await etcd3
    .delete()
    .key(`/leasehold/v1/services/${SERVICE}/${bulkId(0)}`)
    .exec();
  await etcd3.put("/leasehold/unrelated").value("x").exec();
  const head = (await etcd3.get("/leasehold/unrelated").exec()).header.revision;
  await etcd3.kv.compact({ revision: head });
  proxy.restore();
  await eventually(() => logLines.some((line) => line.includes("re-listing")), {
    what: "the registry's etcd watch to fail and re-list",
    timeoutMs: 60_000,
  });
  await eventually(() => watcher.current().instances.length === COUNT - 1, {
    what: "the re-list's removal at the MembershipWatcher",
    timeoutMs: 60_000,
  });
  const first = await getServicePage(client, { service: SERVICE, pageSize: 1 });
  t.is(first.instances[0]?.instanceId, bulkId(1));
  t.false(watcher.current().instances.some((instance) => instance.instanceId === bulkId(0)));
  lap("re-list after compaction");

  const etcdPeakMiB = peakRssMiB(etcd.process.pid);
  const registryPeakMiB = peakRssMiB(registryProcess.pid);
  const usage = process.resourceUsage();
  const ownCpuSeconds = Math.round((usage.userCPUTime + usage.systemCPUTime) / 1e5) / 10;
  const ownPeakMiB = Math.round(process.resourceUsage().maxRSS / 1024);
  t.log(
    `${COUNT} instances × ${METADATA_BYTES} B metadata: ${timings.join(", ")}; peak RSS: registry ` +
      `${registryPeakMiB ?? "?"} MiB, test process (GetService listing + MembershipWatcher) ${ownPeakMiB} MiB, ` +
      `leasehold watch ${cliPeakMiB ?? "?"} MiB, etcd ${etcdPeakMiB ?? "?"} MiB; CPU: registry ` +
      `${cpuSeconds(registryProcess.pid) ?? "?"} s, test process ${ownCpuSeconds} s, leasehold watch ${cliCpuSeconds ?? "?"} s, etcd ` +
      `${cpuSeconds(etcd.process.pid) ?? "?"} s; load average ${loadavg()[0]?.toFixed(1)}`,
  );
});
