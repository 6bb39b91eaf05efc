import type { Command } from "commander";
import { addSecurityOptions } from "../security-options.js";
import type { ListFlags } from "../list/run-list.js";
import { hostPortList, REGISTRY_DEFAULT } from "../options.js";

/** `leasehold list`; the implementation is loaded when the command runs. */
export function listCommand(program: Command): void {
  addSecurityOptions(program.command("list"), { token: true })
    .description(
      "list every service with its instance counts, or the instances of one service (id, address, weight, " +
        "zone, status, metadata), once; an unknown service is an empty list",
    )
    .argument("[service]", "service to list the instances of (default: every service)", "")
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option("--json", "print one JSON object", false)
    .action(async (service: string, flags: ListFlags) => {
      const { runList } = await import("../list/run-list.js");
      await runList(service, flags);
    });
}
