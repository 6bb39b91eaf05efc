import { clientSecurityOf, tlsFilesOf, type SecurityFlags } from "../security-options.js";
import { connectRegistry } from "../../client/registry-connection.js";
import { DEMO_SERVICES } from "../../services/index.js";
import { startServiceInstance } from "../../services/service-host.js";
import { createLogger } from "../logger.js";
import { advertisedAddress } from "../options.js";
import { checkRegistry } from "../registry-check.js";
import { onShutdownSignal } from "../signals.js";
import { UsageError } from "../usage-error.js";

/** Flags of `leasehold serve`. */
export interface ServeFlags extends SecurityFlags {
  registry: string;
  id?: string;
  weight: number;
  zone: string;
  metadata: Record<string, string>;
  ttl: number;
  listen: string;
  advertise?: string;
  metricsListen?: string;
  failRate: number;
  latencyMs: number;
  simulateCpu?: number | [number, number];
  drainMs: number;
}

/**
 * `leasehold serve SERVICE`: checks the registry once (one line and exit 1 within 2 s when it is
 * not there), then serves and stays registered until q, SIGINT or SIGTERM, riding out later
 * registry outages (the registrar re-registers).
 */
export async function runServe(name: string, flags: ServeFlags): Promise<void> {
  const service = DEMO_SERVICES[name];
  if (service === undefined) {
    throw new UsageError(
      `unknown demo service "${name}": must be one of ${Object.keys(DEMO_SERVICES).join(", ")}`,
    );
  }
  const registrySecurity = await clientSecurityOf(flags);
  const registry = connectRegistry(flags.registry, {}, registrySecurity);
  try {
    await checkRegistry(registry, flags.registry);
  } finally {
    registry.close();
  }
  const logger = createLogger(`leasehold-${name}`);
  const instance = await startServiceInstance(service, {
    registry: flags.registry,
    instanceId: flags.id,
    weight: flags.weight,
    zone: flags.zone,
    metadata: flags.metadata,
    ttlSeconds: flags.ttl,
    listen: flags.listen,
    advertise: advertisedAddress(flags.advertise),
    metricsListen: flags.metricsListen,
    failRate: flags.failRate,
    latencyMs: flags.latencyMs,
    simulateCpu: flags.simulateCpu,
    drainMs: flags.drainMs,
    tls: tlsFilesOf(flags),
    registrySecurity,
    logger,
  });
  const say = (line: string): void => void process.stdout.write(`${instance.instanceId}: ${line}\n`);
  say(
    `serving ${name} on ${instance.address} (weight ${flags.weight}, metrics http://${instance.metricsAddress}/metrics` +
      `${instance.isMetricsListed ? "" : ", not listed for Prometheus: use --metrics-listen 0.0.0.0:PORT"})`,
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
      } else if (key.startsWith("w")) {
        const weight = parseWeight(key.slice(1));
        if (weight === undefined) {
          process.stderr.write(`w: weight must be an integer 0..10000, got "${key.slice(1).trim()}"\n`);
          return;
        }
        await instance.update({ weight });
        say(`weight ${weight}`);
      }
    });
  });
  await Promise.race([quit, onShutdownSignal()]);
  say("draining, then deregistering");
  await instance.shutdown();
  process.stdin.destroy();
  say("stopped");
}

/** `" 5"` → 5; undefined unless an integer 0..10000. */
function parseWeight(text: string): number | undefined {
  const trimmed = text.trim();
  if (!/^\d{1,5}$/.test(trimmed)) return undefined;
  const weight = Number(trimmed);
  return weight <= 10_000 ? weight : undefined;
}

/**
 * Calls `onKey` for each of u/r/f/q typed on a terminal (raw mode; Ctrl-C is q) or written to a
 * piped stdin (how `leasehold demo` injects faults), and with `"w <digits>"` for a `w` followed by
 * a weight and Enter (the digits are echoed on a terminal). One key is handled at a time.
 */
function listenForKeys(onKey: (key: string) => Promise<void>): void {
  const stdin = process.stdin;
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.setEncoding("utf8");
  let queue = Promise.resolve();
  let line: string | undefined; // after a "w", until Enter
  stdin.on("data", (chunk: string) => {
    for (const char of chunk) {
      let key = char === "\u0003" ? "q" : char.toLowerCase();
      if (line !== undefined && key !== "q") {
        if (key !== "\r" && key !== "\n") {
          line += key;
          if (stdin.isTTY) process.stdout.write(key);
          continue;
        }
        if (stdin.isTTY) process.stdout.write("\n");
        key = `w${line}`;
        line = undefined;
      } else if (key === "w") {
        line = "";
        if (stdin.isTTY) process.stdout.write("weight: ");
        continue;
      } else if (!"urfq".includes(key)) continue;
      queue = queue
        .then(() => onKey(key))
        .catch((error: unknown) => {
          process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
        });
    }
  });
  stdin.on("error", () => undefined);
}
