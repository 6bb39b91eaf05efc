import Table from "cli-table3";
import logUpdate from "log-update";
import { MembershipWatcher, type MembershipChange } from "../../client/discovery/membership-watcher.js";
import type { MembershipSnapshot } from "../../client/discovery/membership.js";
import { clientSecurityOf, type SecurityFlags } from "../security-options.js";
import { connectRegistry } from "../../client/registry-connection.js";
import { MassRemovalDetector } from "../../client/balancing/mass-removal-detector.js";
import { InstanceStatus, type Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { statusName } from "../instance-json.js";
import { createLogger } from "../logger.js";
import { checkServiceName } from "../registry-calls.js";
import { checkRegistry } from "../registry-check.js";
import { keepProcessAlive, onShutdownSignal } from "../signals.js";

export { statusName } from "../instance-json.js";

/** One NDJSON event of `leasehold watch --json`. */
export function watchEvent(type: string, instance: Instance, revision: string): string {
  return JSON.stringify({
    type,
    service: instance.service,
    instance_id: instance.instanceId,
    address: instance.address,
    weight: instance.weight,
    status: statusName(instance.status),
    revision: Number(revision),
  });
}

/** Flattens applied changes into `[type, instance, revision]` events (a snapshot is one per instance). */
export function* flattenChanges(changes: readonly MembershipChange[]): Generator<[string, Instance, string]> {
  for (const change of changes) {
    if (change.type === "snapshot") {
      for (const instance of change.instances) yield ["snapshot", instance, change.revision];
    } else {
      yield [change.type, change.instance, change.revision];
    }
  }
}

/** Flags of `leasehold watch`. */
export interface WatchFlags extends SecurityFlags {
  registry: string;
  json: boolean;
}

/**
 * `leasehold watch [SERVICE]`: checks the registry once (a registry that is not there is one line
 * and exit 1 within 2 s), then follows membership until SIGINT/SIGTERM, riding out later outages
 * (the watcher resumes; the table says STALE meanwhile).
 */
export async function runWatch(service: string, flags: WatchFlags): Promise<void> {
  const registry = connectRegistry(flags.registry, {}, await clientSecurityOf(flags));
  try {
    await checkRegistry(registry, flags.registry);
    // A name the registry refuses (INVALID_ARGUMENT) is one line and exit 2, not a Watch retried forever.
    if (service !== "") await checkServiceName(registry, service);
  } catch (error) {
    registry.close();
    throw error;
  }
  const watcher = new MembershipWatcher({
    registry,
    service,
    logger: createLogger("leasehold-watch", "warn"),
  });
  const isLive = !flags.json && process.stdout.isTTY;
  const panics = new PanicView();
  const say = (line: string, event: object): void => {
    if (!isLive) process.stdout.write(flags.json ? `${JSON.stringify(event)}\n` : `${line}\n`);
  };
  watcher.subscribe((snapshot, changes) => {
    for (const [service, left] of panics.apply(snapshot, changes)) {
      say(`! panic ${service}: ${left} serving instance(s) left at once; callers keep routing over them`, {
        type: "panic",
        service,
        left,
      });
    }
    if (isLive) {
      logUpdate(renderTable(snapshot, service, watcher.isStale, panics.active()));
      return;
    }
    for (const [type, instance, revision] of flattenChanges(changes)) {
      process.stdout.write(
        flags.json
          ? `${watchEvent(type, instance, revision)}\n`
          : `${type} ${instance.service}/${instance.instanceId} ${instance.address} weight=${instance.weight} ${statusName(instance.status)} revision=${revision}\n`,
      );
    }
  });
  let hasSaidStale = false; // the first connection is no news: say "fresh" only after "stale"
  watcher.onStaleChange((isStale) => {
    if (!isStale && !hasSaidStale) return;
    hasSaidStale = isStale;
    say(
      isStale
        ? "! STALE: the registry is unreachable or cannot see etcd; membership may be out of date"
        : "! fresh again",
      { type: "stale", stale: isStale },
    );
  });
  watcher.start();
  if (isLive) logUpdate(`waiting for ${service || "every service"} at ${flags.registry} ...`);
  const release = keepProcessAlive();
  await onShutdownSignal();
  release();
  await watcher.close();
  registry.close();
  if (isLive) logUpdate.done();
}

/**
 * Which services callers are in panic mode for: more than half of a service's serving instances
 * left within 5 s (the balancer's own trigger, {@link MassRemovalDetector}); shown for 2 × the
 * largest TTL seen, as long as callers keep the instances.
 */
class PanicView {
  readonly #detectors = new Map<string, MassRemovalDetector>();
  readonly #untilMs = new Map<string, number>();

  /** Feeds applied changes; returns the services that just entered panic, with how many left. */
  apply(snapshot: MembershipSnapshot, changes: readonly MembershipChange[]): [string, number][] {
    const left = new Map<string, number>();
    for (const change of changes) {
      if (change.type === "removed" && change.instance.status !== InstanceStatus.INSTANCE_STATUS_DRAINING)
        left.set(change.instance.service, (left.get(change.instance.service) ?? 0) + 1);
    }
    const entered: [string, number][] = [];
    for (const [service, count] of left) {
      const serving = snapshot.instances.filter(
        (instance) =>
          instance.service === service && instance.status !== InstanceStatus.INSTANCE_STATUS_DRAINING,
      );
      let detector = this.#detectors.get(service);
      if (detector === undefined) this.#detectors.set(service, (detector = new MassRemovalDetector()));
      if (!detector.record(count, serving.length)) continue;
      const maxTtlSeconds = Math.max(10, ...serving.map((instance) => Number(instance.ttlSeconds)));
      if (!this.active().includes(service)) entered.push([service, count]);
      this.#untilMs.set(service, Date.now() + 2000 * maxTtlSeconds);
    }
    return entered;
  }

  active(): string[] {
    const now = Date.now();
    return [...this.#untilMs].filter(([, until]) => until > now).map(([service]) => service);
  }
}

function renderTable(
  snapshot: MembershipSnapshot,
  service: string,
  isStale: boolean,
  panicking: readonly string[],
): string {
  const table = new Table({ head: ["service", "instance", "address", "weight", "status", "zone", "since"] });
  for (const instance of snapshot.instances) {
    table.push([
      instance.service,
      instance.instanceId,
      instance.address,
      instance.weight,
      statusName(instance.status),
      instance.zone,
      instance.registeredAt.slice(11, 19),
    ]);
  }
  const header =
    `${service || "every service"} — ${snapshot.instances.length} instance(s) at revision ${snapshot.revision}` +
    (isStale ? " (STALE: the registry is unreachable or cannot see etcd)" : "") +
    (panicking.length > 0
      ? `\nPANIC: callers keep routing over ${panicking.join(", ")} (instances left at once)`
      : "");
  return `${header}\n${table.toString()}\n(Ctrl-C to quit)`;
}
