import { type Command, InvalidArgumentError } from "commander";
import { DEMO_SERVICES } from "../../services/index.js";
import { startServiceInstance } from "../../services/service-host.js";
import { createLogger } from "../logger.js";
import { hostPort, hostPortList, integerIn, numberIn, REGISTRY_DEFAULT } from "../options.js";
import { onShutdownSignal } from "../signals.js";

interface ServeFlags {
  registry: string;
  id?: string;
  weight: number;
  zone: string;
  ttl: number;
  listen: string;
  advertise?: string;
  metricsListen?: string;
  failRate: number;
  latencyMs: number;
}

const KEYS_HELP = "keys: u unregister, r register again, f toggle failure, q quit gracefully";

export function serveCommand(program: Command): void {
  program
    .command("serve")
    .description(`run a demo service instance that registers itself (${KEYS_HELP})`)
    .argument("<service>", `demo service: ${Object.keys(DEMO_SERVICES).join(" | ")}`, (name: string) => {
      if (DEMO_SERVICES[name] === undefined) {
        throw new InvalidArgumentError(`must be one of ${Object.keys(DEMO_SERVICES).join(", ")}.`);
      }
      return name;
    })
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option("--id <instance-id>", "instance id (default <service>-<random>)")
    .option("--weight <n>", "weight 0..10000 (0 = listed, no traffic)", integerIn(0, 10_000), 1)
    .option("--zone <zone>", "zone label", "")
    .option("--ttl <seconds>", "lease TTL in seconds (etcd raises < 2 to 2)", integerIn(1, 300), 10)
    .option("--listen <host:port>", "gRPC bind address", hostPort, "0.0.0.0:0")
    .option("--advertise <host:port>", "address registered for callers (default: detected)", hostPort)
    .option(
      "--metrics-listen <host:port>",
      "/metrics bind address (default: listen host, free port)",
      hostPort,
    )
    .option("--fail-rate <f>", "share of calls answered UNAVAILABLE, 0..1", numberIn(0, 1), 0)
    .option("--latency-ms <ms>", "added latency per call", integerIn(0, 60_000), 0)
    .action(async (name: string, flags: ServeFlags) => {
      const service = DEMO_SERVICES[name];
      if (service === undefined) return;
      const logger = createLogger(`leasehold-${name}`);
      const instance = await startServiceInstance(service, {
        registry: flags.registry,
        instanceId: flags.id,
        weight: flags.weight,
        zone: flags.zone,
        ttlSeconds: flags.ttl,
        listen: flags.listen,
        advertise: flags.advertise,
        metricsListen: flags.metricsListen,
        failRate: flags.failRate,
        latencyMs: flags.latencyMs,
        logger,
      });
      const say = (line: string): void => void process.stdout.write(`${instance.instanceId}: ${line}\n`);
      say(
        `serving ${name} on ${instance.address} (weight ${flags.weight}, metrics http://${instance.metricsAddress}/metrics)`,
      );
      const quit = new Promise<void>((resolve) => {
        listenForKeys(async (key) => {
          if (key === "u") {
            await instance.unregister();
            say("unregistered (r to register again)");
          } else if (key === "r") {
            await instance.register();
            say("registered");
          } else if (key === "f") {
            instance.isFailing = !instance.isFailing;
            say(instance.isFailing ? "failing every call with UNAVAILABLE" : "answering normally");
          } else if (key === "q") {
            resolve();
          }
        });
      });
      await Promise.race([quit, onShutdownSignal()]);
      say("draining, then deregistering");
      await instance.shutdown();
      process.stdin.destroy();
      say("stopped");
    });
}

/**
 * Calls `onKey` for each of u/r/f/q typed on a terminal (raw mode; Ctrl-C is q) or written to a
 * piped stdin (how `leasehold demo` injects faults). One key is handled at a time.
 */
function listenForKeys(onKey: (key: string) => Promise<void>): void {
  const stdin = process.stdin;
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.setEncoding("utf8");
  let queue = Promise.resolve();
  stdin.on("data", (chunk: string) => {
    for (const char of chunk) {
      const key = char === "\u0003" ? "q" : char.toLowerCase();
      if (!"urfq".includes(key)) continue;
      queue = queue
        .then(() => onKey(key))
        .catch((error: unknown) => {
          process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
        });
    }
  });
  stdin.on("error", () => undefined);
}
