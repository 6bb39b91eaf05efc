import { randomBytes } from "node:crypto";
import { readFile, unwatchFile, watchFile } from "node:fs";
import { status, type ServiceError } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { Backoff, sleep } from "../../client/backoff.js";
import { Registrar } from "../../client/registration/registrar.js";
import { clientSecurityOf, type SecurityFlags } from "../security-options.js";
import { connectRegistry } from "../../client/registry-connection.js";
import {
  InstanceStatus,
  type RegistryServiceClient,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { statusName } from "../instance-json.js";
import { createLogger } from "../logger.js";
import { getService } from "../registry-calls.js";
import { checkRegistry } from "../registry-check.js";
import { keepProcessAlive, onShutdownSignal } from "../signals.js";
import { UsageError } from "../usage-error.js";
import { TargetHealthWatcher, type TargetHealth } from "./target-health.js";

/** Flags of `leasehold register`. */
export interface RegisterFlags extends SecurityFlags {
  registry: string;
  service: string;
  address: string;
  id?: string;
  weight: number;
  weightFile?: string;
  zone: string;
  metadata: Record<string, string>;
  ttl: number;
  drainMs: number;
  healthCheck: boolean;
  healthService: string;
}

/**
 * `leasehold register`: a sidecar that leases any process reachable at `--address` (any language)
 * into the registry, through the library's {@link Registrar}. It checks the registry once (one
 * line and exit 1 when it is not there), registers, and then holds the lease through registry
 * outages (the registrar re-registers) until SIGINT/SIGTERM: DRAINING, `--drain-ms`, Deregister,
 * exit 0.
 *
 * With `--health-check` it follows the target's `grpc.health.v1.Health/Watch`: the instance is
 * registered DRAINING (as Consul's checks start critical) and is SERVING only while the target says
 * SERVING; NOT_SERVING or an unreachable target drains it again.
 */
export async function runRegister(flags: RegisterFlags): Promise<void> {
  const registry = connectRegistry(flags.registry, {}, await clientSecurityOf(flags));
  try {
    await checkRegistry(registry, flags.registry);
  } catch (error) {
    registry.close();
    throw error;
  }
  const instanceId = flags.id ?? `${flags.service}-${randomBytes(3).toString("hex")}`;
  if (flags.id !== undefined) {
    try {
      await refuseTakenId(registry, flags.service, flags.id);
    } catch (error) {
      registry.close();
      throw error;
    }
  }
  const logger = createLogger("leasehold-register");
  const name = `${flags.service}/${instanceId}`;
  const say = (line: string): void => void process.stdout.write(`${name}: ${line}\n`);
  const registrar = new Registrar({
    registry,
    instance: {
      service: flags.service,
      instanceId,
      address: flags.address,
      weight: flags.weight,
      zone: flags.zone,
      metadata: flags.metadata,
    },
    ttlSeconds: flags.ttl,
    logger,
  });
  const release = keepProcessAlive();
  const shutdown = onShutdownSignal();
  const statusSync = new StatusSync(registrar, logger);
  let health: TargetHealthWatcher | undefined;
  try {
    if (flags.healthCheck) {
      // Registered DRAINING until the target first says SERVING.
      await registrar.update({ status: InstanceStatus.INSTANCE_STATUS_DRAINING });
      health = new TargetHealthWatcher({
        address: flags.address,
        service: flags.healthService,
        changed: (current: TargetHealth) => {
          const wanted = current.isServing
            ? InstanceStatus.INSTANCE_STATUS_SERVING
            : InstanceStatus.INSTANCE_STATUS_DRAINING;
          say(`${statusName(wanted)} (target ${flags.address} ${current.reason})`);
          statusSync.set(wanted);
        },
      });
    }
    const registered = registrar.start().then(() => "registered" as const);
    if ((await Promise.race([registered, shutdown])) !== "registered") {
      // A signal before the first Register succeeded (the registry went away after the check).
      registered.catch(() => undefined);
      health?.close();
      await registrar.close();
      return;
    }
    say(
      `leased ${flags.address} in (weight ${flags.weight}, TTL ${flags.ttl} s${flags.healthCheck ? ", DRAINING until the target says SERVING" : ""})`,
    );
    health?.start();
    const stopWeightFile =
      flags.weightFile === undefined ? undefined : followWeightFile(flags.weightFile, registrar, say);
    await shutdown;
    stopWeightFile?.();
    say("draining, then deregistering");
    health?.close();
    statusSync.close();
    await registrar.drain().catch((error: unknown) => logger.warn({ err: error }, "drain failed"));
    await sleep(flags.drainMs);
    await registrar.close();
    say("deregistered");
  } finally {
    health?.close();
    statusSync.close();
    release();
    registry.close();
  }
}

/**
 * `--weight-file`: polls the file (every 500 ms, `fs.watchFile`) and applies a changed weight with
 * `Registrar.update` (callers see it through their Watch; no reconnect). Bad content is one line on
 * stderr and the weight stays. Returns the function that stops following.
 */
function followWeightFile(path: string, registrar: Registrar, say: (line: string) => void): () => void {
  let applied: number | undefined;
  const apply = (): void =>
    readFile(path, "utf8", (error, text) => {
      if (error !== null) return; // not there (yet): nothing to apply
      const trimmed = text.trim();
      const weight = /^\d{1,5}$/.test(trimmed) ? Number(trimmed) : Number.NaN;
      if (!(weight <= 10_000)) {
        process.stderr.write(
          `--weight-file ${path}: want an integer 0..10000, got "${trimmed.slice(0, 40)}"\n`,
        );
        return;
      }
      if (weight === applied) return;
      applied = weight;
      registrar.update({ weight }).then(
        () => say(`weight ${weight}`),
        (updateError: unknown) =>
          process.stderr.write(
            `--weight-file: update failed: ${updateError instanceof Error ? updateError.message : String(updateError)}\n`,
          ),
      );
    });
  watchFile(path, { interval: 500 }, apply);
  apply();
  return () => unwatchFile(path, apply);
}

/**
 * An `--id` another live lease holds would make the registrar retry `ALREADY_EXISTS` until that
 * lease ends, so it is refused at once instead (one line, exit 2).
 */
async function refuseTakenId(
  registry: RegistryServiceClient,
  service: string,
  instanceId: string,
): Promise<void> {
  const response = await getService(registry, service);
  const holder = response.instances.find((instance) => instance.instanceId === instanceId);
  if (holder !== undefined) {
    throw new UsageError(
      `${service}/${instanceId} is already registered (address ${holder.address}) under another live lease: ` +
        "pick another --id, or wait for that lease's TTL if a previous sidecar crashed",
    );
  }
}

/** Codes after which an UpdateInstance need not be retried: the lease is gone and re-registration carries the status. */
const LEASE_GONE: ReadonlySet<number> = new Set([status.NOT_FOUND, status.PERMISSION_DENIED]);

/**
 * Brings the registered status to the last one asked for: UpdateInstance, retried with backoff
 * while the registry is unreachable, latest wins. The registrar remembers the status too, so a
 * re-registration after a lost lease carries it.
 */
class StatusSync {
  readonly #registrar: Registrar;
  readonly #logger: Logger;
  readonly #backoff = new Backoff({ initialDelayMs: 100, maxDelayMs: 2000 });
  readonly #closing = new AbortController();
  #wanted: InstanceStatus | undefined;
  #applied: InstanceStatus | undefined;
  #isRunning = false;

  constructor(registrar: Registrar, logger: Logger) {
    this.#registrar = registrar;
    this.#logger = logger;
  }

  set(wanted: InstanceStatus): void {
    this.#wanted = wanted;
    if (this.#isRunning) return; // the running loop reads #wanted again after each attempt
    this.#isRunning = true;
    // #run() never rejects: every failure is logged and retried inside it.
    void this.#run().finally(() => {
      this.#isRunning = false;
      const latest = this.#wanted;
      if (latest !== undefined && latest !== this.#applied && !this.#closing.signal.aborted) this.set(latest);
    });
  }

  close(): void {
    this.#closing.abort();
  }

  async #run(): Promise<void> {
    while (!this.#closing.signal.aborted && this.#wanted !== this.#applied) {
      const wanted = this.#wanted;
      if (wanted === undefined) return;
      try {
        await this.#registrar.update({ status: wanted });
        this.#applied = wanted;
        this.#backoff.reset();
      } catch (error) {
        if (LEASE_GONE.has((error as Partial<ServiceError>).code ?? -1)) {
          this.#applied = wanted;
          continue;
        }
        const retryInMs = this.#backoff.next();
        this.#logger.warn({ err: error, retryInMs: Math.round(retryInMs) }, "status update failed; retrying");
        await sleep(retryInMs, this.#closing.signal);
      }
    }
  }
}
