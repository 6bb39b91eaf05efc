/**
 * A demo service instance in a child process of its own, so a test can SIGKILL or SIGSTOP it.
 * Run as `node --import tsx test/helpers/instance-process.ts '<json options>'`; prints
 * `ready <instanceId> <address>` once registered. See {@link spawnInstance}.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import type { ExecutionContext } from "ava";
import { eventually } from "./eventually.js";

const SELF = fileURLToPath(import.meta.url);

/** Options passed to the child (a subset of `ServiceInstanceOptions`). */
export interface InstanceProcessOptions {
  readonly service: "echo" | "calculator" | "kv";
  readonly registry: string;
  readonly instanceId: string;
  readonly weight?: number;
  readonly ttlSeconds?: number;
}

export interface InstanceProcess {
  readonly child: ChildProcess;
  readonly instanceId: string;
  readonly address: string;
}

/** Spawns an instance process and waits until it is registered; SIGKILLed at teardown. */
export async function spawnInstance(
  t: ExecutionContext,
  options: InstanceProcessOptions,
): Promise<InstanceProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", SELF, JSON.stringify(options)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const exited = once(child, "exit");
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  });
  const line = await eventually(() => /^ready (\S+) (\S+)$/m.exec(stdout) ?? undefined, {
    timeoutMs: 20_000,
    what: `instance ${options.instanceId} ready (stderr: ${stderr.slice(-300)})`,
  });
  return { child, instanceId: line[1] ?? "", address: line[2] ?? "" };
}

if (process.argv[1] === SELF) {
  const options = JSON.parse(process.argv[2] ?? "{}") as InstanceProcessOptions;
  const { DEMO_SERVICES } = await import("../../services/index.js");
  const { startServiceInstance } = await import("../../services/service-host.js");
  const service = DEMO_SERVICES[options.service];
  if (service === undefined) throw new Error(`unknown service ${options.service}`);
  const instance = await startServiceInstance(service, {
    registry: options.registry,
    instanceId: options.instanceId,
    weight: options.weight,
    ttlSeconds: options.ttlSeconds,
    listen: "127.0.0.1:0",
  });
  process.stdout.write(`ready ${instance.instanceId} ${instance.address}\n`);
  process.once("SIGTERM", () => void instance.shutdown().then(() => process.exit(0)));
}
