/**
 * A demo echo (or calculator) instance in a process of its own, so a scenario can SIGKILL or
 * SIGSTOP it. `node --import tsx chaos/children/instance.ts '<json>'` prints
 * `ready <instanceId> <address>` once registered. SIGTERM: graceful shutdown (drain, deregister),
 * exit 0. SIGUSR2: toggles fault injection (every call answers UNAVAILABLE), prints `failing <bool>`.
 */
import { pino } from "pino";
import { DEMO_SERVICES } from "../../services/index.js";
import { startServiceInstance } from "../../services/service-host.js";
import { exitWithParent } from "../lib/child.js";

exitWithParent();

interface InstanceChildOptions {
  readonly service?: string;
  readonly registry: string;
  readonly instanceId: string;
  readonly weight?: number;
  readonly ttlSeconds?: number;
  readonly failRate?: number;
}

const options = JSON.parse(process.argv[2] ?? "{}") as InstanceChildOptions;
const service = DEMO_SERVICES[options.service ?? "echo"];
if (service === undefined) throw new Error(`unknown service ${options.service}`);
const instance = await startServiceInstance(service, {
  registry: options.registry,
  instanceId: options.instanceId,
  weight: options.weight,
  ttlSeconds: options.ttlSeconds,
  failRate: options.failRate,
  listen: "127.0.0.1:0",
  logger: pino({ level: process.env["CHAOS_LOG_LEVEL"] ?? "info" }, pino.destination(2)),
});
process.stdout.write(`ready ${instance.instanceId} ${instance.address}\n`);
process.on("SIGUSR2", () => {
  instance.isFailing = !instance.isFailing;
  process.stdout.write(`failing ${instance.isFailing}\n`);
});
process.once("SIGTERM", () => {
  void instance.shutdown().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
