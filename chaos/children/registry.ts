/**
 * A registry replica in a process of its own, so a scenario can SIGKILL it and measure its RSS.
 * `node --expose-gc --import tsx chaos/children/registry.ts '<json>'` prints
 * `ready <address> <adminAddress>`. SIGTERM: graceful close, exit 0. SIGUSR2: a full GC (when
 * started with --expose-gc), then prints `rss <bytes> heap <bytes> heapTotal ... external ... arrayBuffers ...`, so RSS is compared after garbage is gone.
 */
import { pino } from "pino";
import { startRegistry, type RegistryOptions } from "../../registry/index.js";
import { exitWithParent } from "../lib/child.js";

exitWithParent();

interface RegistryChildOptions {
  readonly listen: string;
  readonly adminListen: string;
  readonly etcd: string;
  readonly progressIntervalMs?: number;
  readonly maxWatchBehindMs?: number;
  /** Quotas (registry/registry-limits.ts); defaults when absent. */
  readonly limits?: RegistryOptions["limits"];
}

const options = JSON.parse(process.argv[2] ?? "{}") as RegistryChildOptions;
const registry = await startRegistry({
  listen: options.listen,
  adminListen: options.adminListen,
  etcdEndpoints: [options.etcd],
  progressIntervalMs: options.progressIntervalMs,
  maxWatchBehindMs: options.maxWatchBehindMs,
  limits: options.limits,
  logger: pino({ level: process.env["CHAOS_LOG_LEVEL"] ?? "info" }, pino.destination(2)),
});
process.stdout.write(`ready ${registry.address} ${registry.adminAddress ?? "-"}\n`);
process.on("SIGUSR2", () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  gc?.();
  const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
  process.stdout.write(
    `rss ${rss} heap ${heapUsed} heapTotal ${heapTotal} external ${external} arrayBuffers ${arrayBuffers}\n`,
  );
});
process.once("SIGTERM", () => {
  void registry.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
