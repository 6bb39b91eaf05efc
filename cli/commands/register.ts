import type { Command } from "commander";
import { addSecurityOptions } from "../security-options.js";
import { dialAddress, hostPortList, integerIn, keyValue, REGISTRY_DEFAULT } from "../options.js";
import type { RegisterFlags } from "../register/run-register.js";

/** `leasehold register`; the implementation is loaded when the command runs. */
export function registerCommand(program: Command): void {
  addSecurityOptions(program.command("register"), { token: true })
    .description(
      "lease any process reachable at --address (any language) into the registry until SIGINT/SIGTERM, then " +
        "drain and deregister; with --health-check, DRAINING while its grpc.health.v1 says NOT_SERVING",
    )
    .requiredOption("--service <name>", "service name (DNS-1123 label)")
    .requiredOption("--address <host:port>", "address callers dial, e.g. 10.0.0.5:50051", dialAddress)
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option("--id <instance-id>", "instance id (default <service>-<random>)")
    .option("--weight <n>", "weight 0..10000 (0 = listed, no traffic)", integerIn(0, 10_000), 1)
    .option(
      "--weight-file <path>",
      "re-read the weight (an integer 0..10000) from this file whenever it changes, and apply it live",
    )
    .option("--zone <zone>", "zone label", "")
    .option("--metadata <key=value>", "instance metadata (repeatable)", keyValue, {})
    .option("--ttl <seconds>", "lease TTL in seconds (etcd raises < 2 to 2)", integerIn(1, 300), 10)
    .option("--drain-ms <ms>", "how long to stay DRAINING before deregistering", integerIn(0, 60_000), 300)
    .option("--health-check", "follow the target's grpc.health.v1.Health/Watch", false)
    .option("--health-service <name>", "service name asked of the target's health ('' = the server)", "")
    .action(async (flags: RegisterFlags) => {
      const { runRegister } = await import("../register/run-register.js");
      await runRegister(flags);
    });
}
