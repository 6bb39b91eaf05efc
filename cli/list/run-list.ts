import Table from "cli-table3";
import { clientSecurityOf, type SecurityFlags } from "../security-options.js";
import { connectRegistry } from "../../client/registry-connection.js";
import type {
  GetServiceResponse,
  ListServicesResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { instanceJson, statusName } from "../instance-json.js";
import { getService, listServices } from "../registry-calls.js";
import { checkRegistry } from "../registry-check.js";

/** Flags of `leasehold list`. */
export interface ListFlags extends SecurityFlags {
  registry: string;
  json: boolean;
}

/**
 * `leasehold list [SERVICE]`: one ListServices (every service with its counts) or GetService (the
 * instances of one service), printed as a table or, with `--json`, as one JSON object; then exit.
 * A service with no instances is an empty list and exit 0, as `etcdctl get --prefix` and Consul's
 * catalog answer an empty query (an invalid service name is refused: exit 2).
 */
export async function runList(service: string, flags: ListFlags): Promise<void> {
  const registry = connectRegistry(flags.registry, {}, await clientSecurityOf(flags));
  try {
    await checkRegistry(registry, flags.registry);
    process.stdout.write(
      service === ""
        ? formatServices(await listServices(registry), flags.json)
        : formatInstances(service, await getService(registry, service), flags.json),
    );
  } finally {
    registry.close();
  }
}

/** One JSON object (`--json`) or a table of every service with its counts. */
export function formatServices(response: ListServicesResponse, isJson: boolean): string {
  const revision = Number(response.revision);
  if (isJson) {
    return `${JSON.stringify({
      revision,
      services: response.services.map((summary) => ({
        service: summary.service,
        instances: summary.instances,
        serving: summary.serving,
        draining: summary.draining,
      })),
    })}\n`;
  }
  const table = new Table({ head: ["service", "instances", "serving", "draining"], style: tableStyle() });
  for (const summary of response.services) {
    table.push([summary.service, summary.instances, summary.serving, summary.draining]);
  }
  const footer = `${response.services.length} service(s) at revision ${revision}`;
  return response.services.length === 0 ? `${footer}\n` : `${table.toString()}\n${footer}\n`;
}

/** One JSON object (`--json`) or a table of the instances of `service`. */
export function formatInstances(service: string, response: GetServiceResponse, isJson: boolean): string {
  const revision = Number(response.revision);
  if (isJson) {
    return `${JSON.stringify({ service, revision, instances: response.instances.map(instanceJson) })}\n`;
  }
  const table = new Table({
    head: ["instance", "address", "weight", "zone", "status", "metadata"],
    style: tableStyle(),
  });
  for (const instance of response.instances) {
    table.push([
      instance.instanceId,
      instance.address,
      instance.weight,
      instance.zone,
      statusName(instance.status),
      Object.entries(instance.metadata)
        .map(([key, value]) => `${key}=${value}`)
        .join(" "),
    ]);
  }
  const footer = `${service}: ${response.instances.length} instance(s) at revision ${revision}`;
  return response.instances.length === 0 ? `${footer}\n` : `${table.toString()}\n${footer}\n`;
}

/** Colours and full borders on a terminal; no colour codes when piped. */
function tableStyle(): { head: string[]; border: string[] } | undefined {
  return process.stdout.isTTY ? undefined : { head: [], border: [] };
}
