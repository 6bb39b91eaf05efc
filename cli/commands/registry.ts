import type { Command } from "commander";
import { hostPort, urlList } from "../options.js";
import type { RegistryFlags } from "../registry/run-registry.js";

/** `leasehold registry`; the implementation (etcd3, the facade) is loaded when the command runs. */
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
      "admin HTTP address: /metrics, /healthz, /readyz, /sd/prometheus, /ui (web console), the HTTP API",
      hostPort,
      process.env["LEASEHOLD_ADMIN_LISTEN"] ?? "127.0.0.1:7101",
    )
    .option(
      "--no-http-api",
      "do not serve the HTTP/JSON API (/leasehold.registry.v1.RegistryService/...) on the admin port",
    )
    .option("--prefix <prefix>", "etcd key prefix", process.env["LEASEHOLD_PREFIX"] ?? "/leasehold/")
    .action(async (flags: RegistryFlags) => {
      const { runRegistry } = await import("../registry/run-registry.js");
      await runRegistry(flags);
    });
}
