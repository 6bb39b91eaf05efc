import { addSecurityOptions } from "../security-options.js";
import { Argument, type Command } from "commander";
import {
  advertiseAddress,
  hostPort,
  hostPortList,
  instanceIdTemplate,
  integerIn,
  keyValue,
  numberIn,
  REGISTRY_DEFAULT,
  simulatedCpu,
} from "../options.js";
import type { ServeFlags } from "../serve/run-serve.js";

const KEYS_HELP =
  "keys: u unregister, r register again, f toggle failure, w N Enter set weight N, q quit gracefully";

/**
 * The demo services, named here so `--help` need not load them; `runServe` refuses a name that
 * `services/index.ts` does not define.
 */
const DEMO_SERVICE_NAMES = ["calculator", "echo", "kv"] as const;

/** `leasehold serve`; the implementation is loaded when the command runs. */
export function serveCommand(program: Command): void {
  addSecurityOptions(program.command("serve"), { token: true })
    .description(`run a demo service instance that registers itself (${KEYS_HELP})`)
    .addArgument(new Argument("<service>", "demo service").choices(DEMO_SERVICE_NAMES))
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option(
      "--id <instance-id>",
      "instance id; {hostname} is replaced by the host name (default <service>-<random>)",
      instanceIdTemplate,
    )
    .option("--weight <n>", "weight 0..10000 (0 = listed, no traffic)", integerIn(0, 10_000), 1)
    .option("--zone <zone>", "zone label", "")
    .option("--metadata <key=value>", "instance metadata (repeatable), e.g. version=v2", keyValue, {})
    .option("--ttl <seconds>", "lease TTL in seconds (etcd raises < 2 to 2)", integerIn(1, 300), 10)
    .option("--listen <host:port>", "gRPC bind address", hostPort, "0.0.0.0:0")
    .option(
      "--advertise <host:port|auto>",
      "address registered for callers (default auto: the bound port on the first external IPv4)",
      advertiseAddress,
    )
    .option(
      "--metrics-listen <host:port>",
      "/metrics bind address (default 127.0.0.1:0; listed for Prometheus only on the address's host)",
      hostPort,
    )
    .option(
      "--drain-ms <ms>",
      "on shutdown, how long to stay DRAINING (callers stop picking it) before deregistering",
      integerIn(0, 60_000),
      300,
    )
    .option("--fail-rate <f>", "share of calls answered UNAVAILABLE, 0..1", numberIn(0, 1), 0)
    .option("--latency-ms <ms>", "added latency per call", integerIn(0, 60_000), 0)
    .option(
      "--simulate-cpu <f|min-max>",
      "CPU utilization to report in ORCA load reports instead of the measured one: 0.5, 50% or a range 0.2-0.9 redrawn every second",
      simulatedCpu,
    )
    .action(async (name: string, flags: ServeFlags) => {
      const { runServe } = await import("../serve/run-serve.js");
      await runServe(name, flags);
    });
}
