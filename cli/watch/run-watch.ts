import Table from "cli-table3";
import type { Command } from "commander";
import logUpdate from "log-update";
import { MembershipWatcher, type MembershipChange } from "../../client/discovery/membership-watcher.js";
import type { MembershipSnapshot } from "../../client/discovery/membership.js";
import { connectRegistry } from "../../client/registry-connection.js";
import { InstanceStatus, type Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { createLogger } from "../logger.js";
import { hostPortList, REGISTRY_DEFAULT } from "../options.js";
import { onShutdownSignal } from "../signals.js";

/** `SERVING` / `DRAINING`, as in etcd's JSON values. */
export function statusName(status: InstanceStatus): string {
  return status === InstanceStatus.INSTANCE_STATUS_DRAINING ? "DRAINING" : "SERVING";
}

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

export function watchCommand(program: Command): void {
  program
    .command("watch")
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
    .action(async (service: string, flags: { registry: string; json: boolean }) => {
      const registry = connectRegistry(flags.registry);
      const watcher = new MembershipWatcher({
        registry,
        service,
        logger: createLogger("leasehold-watch", "warn"),
      });
      const isLive = !flags.json && process.stdout.isTTY;
      watcher.subscribe((snapshot, changes) => {
        if (isLive) {
          logUpdate(renderTable(snapshot, service, watcher.isStale));
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
      watcher.start();
      if (isLive) logUpdate(`waiting for ${service || "every service"} at ${flags.registry} ...`);
      await onShutdownSignal();
      await watcher.close();
      registry.close();
      if (isLive) logUpdate.done();
    });
}

function renderTable(snapshot: MembershipSnapshot, service: string, isStale: boolean): string {
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
  const header = `${service || "every service"} — ${snapshot.instances.length} instance(s) at revision ${snapshot.revision}${isStale ? " (STALE: registry unreachable)" : ""}`;
  return `${header}\n${table.toString()}\n(Ctrl-C to quit)`;
}
