import type { Command } from "commander";
import { addSecurityOptions } from "../security-options.js";
import { hostPortList, REGISTRY_DEFAULT } from "../options.js";
import type { WatchFlags } from "../watch/run-watch.js";

/** `leasehold watch`; the implementation is loaded when the command runs. */
export function watchCommand(program: Command): void {
  addSecurityOptions(program.command("watch"), { token: true })
    .description(
      "show live membership: a redrawn table on a terminal, one line per change otherwise, NDJSON with --json",
    )
    .argument("[service]", "service to watch (default: every service)", "")
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option("--json", "print one JSON object per event", false)
    .action(async (service: string, flags: WatchFlags) => {
      const { runWatch } = await import("../watch/run-watch.js");
      await runWatch(service, flags);
    });
}
