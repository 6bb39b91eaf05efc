import type { Command } from "commander";
import { startRegistry } from "../../registry/index.js";
import { createLogger } from "../logger.js";
import { hostPort, urlList } from "../options.js";
import { onShutdownSignal } from "../signals.js";

export function registryCommand(program: Command): void {
  program
    .command("registry")
    .description("run the registry facade in front of etcd (gRPC, plus an admin HTTP port)")
    .option(
      "--listen <host:port>",
      "gRPC listen address",
      hostPort,
      process.env["LEASEHOLD_LISTEN"] ?? "127.0.0.1:7100",
    )
    .option(
      "--etcd <url[,url]>",
      "etcd client URLs (env LEASEHOLD_ETCD)",
      urlList,
      urlList(process.env["LEASEHOLD_ETCD"] ?? "http://127.0.0.1:2379"),
    )
    .option(
      "--admin-listen <host:port>",
      "admin HTTP address: /metrics, /healthz, /readyz, /sd/prometheus",
      hostPort,
      process.env["LEASEHOLD_ADMIN_LISTEN"] ?? "127.0.0.1:7101",
    )
    .option("--prefix <prefix>", "etcd key prefix", process.env["LEASEHOLD_PREFIX"] ?? "/leasehold/")
    .action(async (options: { listen: string; etcd: string[]; adminListen: string; prefix: string }) => {
      const logger = createLogger("leasehold-registry");
      const registry = await startRegistry({
        listen: options.listen,
        adminListen: options.adminListen,
        etcdEndpoints: options.etcd,
        prefix: options.prefix,
        logger,
      });
      process.stdout.write(
        `registry listening on ${registry.address} (admin http://${registry.adminAddress ?? "-"}), etcd ${options.etcd.join(",")}\n`,
      );
      await onShutdownSignal();
      await registry.close();
    });
}
