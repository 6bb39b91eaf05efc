import Table from "cli-table3";
import { type Command, InvalidArgumentError } from "commander";
import logUpdate from "log-update";
import { collectDefaultMetrics, Registry } from "prom-client";
import { createBalancedClient, type InstanceStats } from "../../client/balancing/balanced-client.js";
import { isPolicyName, POLICY_NAMES, type PolicyName } from "../../client/balancing/policies.js";
import { MembershipWatcher } from "../../client/discovery/membership-watcher.js";
import { ClientMetrics } from "../../client/metrics/client-metrics.js";
import { connectRegistry } from "../../client/registry-connection.js";
import { metricsRoute, startHttpEndpoints } from "../../client/server/http-endpoints.js";
import { DEMO_SERVICES } from "../../services/index.js";
import { createLogger } from "../logger.js";
import { hostPort, hostPortList, integerIn, numberIn, REGISTRY_DEFAULT } from "../options.js";
import { UsageError } from "../usage-error.js";

interface CallFlags {
  registry: string;
  count?: number;
  concurrency: number;
  policy: PolicyName;
  duration?: number;
  deadlineMs: number;
  json: boolean;
  metricsListen?: string;
}

/** The summary of a run of balanced calls; `call --json` prints it as one JSON object. */
export interface CallSummary {
  service: string;
  policy: PolicyName;
  total: number;
  errors: number;
  instances: {
    instance_id: string;
    address: string;
    weight: number;
    calls: number;
    errors: number;
    p50_ms: number;
    p99_ms: number;
    breaker: string;
  }[];
}

export function callCommand(program: Command): void {
  program
    .command("call")
    .description("make balanced calls to a service and print the per-instance distribution")
    .argument("<service>", `demo service: ${Object.keys(DEMO_SERVICES).join(" | ")}`)
    .argument("<method>", "method name, e.g. Add or Echo")
    .argument("[request]", 'request as JSON (proto3 JSON names), e.g. \'{"a":1,"b":2}\'', "{}")
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option(
      "--count <n>",
      "number of calls (default 1, or unbounded with --duration)",
      integerIn(1, 100_000_000),
    )
    .option("--concurrency <c>", "calls in flight at once", integerIn(1, 10_000), 1)
    .option("--policy <policy>", `balancing policy: ${POLICY_NAMES.join(" | ")}`, policyName, "round_robin")
    .option("--duration <seconds>", "keep calling for this long", numberIn(0.001, 86_400))
    .option("--deadline-ms <ms>", "deadline of each call, retries included", integerIn(1, 600_000), 5000)
    .option("--metrics-listen <host:port>", "serve the client's /metrics here while calling", hostPort)
    .option("--json", "print the summary as one JSON object", false)
    .action(async (serviceName: string, methodName: string, requestJson: string, flags: CallFlags) => {
      const service = DEMO_SERVICES[serviceName];
      if (service === undefined) {
        throw new UsageError(
          `unknown service "${serviceName}": one of ${Object.keys(DEMO_SERVICES).join(", ")}`,
        );
      }
      const method = service.methods[methodName];
      if (method === undefined) {
        throw new UsageError(
          `unknown method "${methodName}" of ${serviceName}: one of ${Object.keys(service.methods).join(", ")}`,
        );
      }
      let request: unknown;
      try {
        request = method.request.fromJSON(JSON.parse(requestJson));
      } catch (error) {
        throw new UsageError(
          `request is not valid JSON: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      const count = flags.count ?? (flags.duration === undefined ? 1 : Number.POSITIVE_INFINITY);
      const until =
        flags.duration === undefined ? Number.POSITIVE_INFINITY : Date.now() + flags.duration * 1000;

      const logger = createLogger("leasehold-call", "warn");
      const metricsRegistry = new Registry();
      collectDefaultMetrics({ register: metricsRegistry });
      const metrics = new ClientMetrics(metricsRegistry);
      const registry = connectRegistry(flags.registry);
      const watcher = new MembershipWatcher({ registry, service: serviceName, metrics, logger });
      const client = createBalancedClient(service.definition, {
        service: serviceName,
        membership: watcher,
        policy: flags.policy,
        metrics,
        deadlineMs: flags.deadlineMs,
        logger,
      });
      const metricsServer =
        flags.metricsListen === undefined
          ? undefined
          : await startHttpEndpoints(flags.metricsListen, { "/metrics": metricsRoute(metricsRegistry) });
      const stopping = new AbortController();
      const onSignal = (): void => stopping.abort();
      process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
      try {
        watcher.start();
        await watcher.ready();
        if (watcher.current().instances.length === 0) {
          throw new Error(`no instances of "${serviceName}" are registered at ${flags.registry}`);
        }
        const invoke = (client.methods as Record<string, (request: unknown) => Promise<unknown>>)[method.key];
        if (invoke === undefined) throw new UsageError(`${methodName} is not a unary method`);
        let issued = 0;
        let total = 0;
        let errors = 0;
        let lastResponse: unknown;
        let lastError: Error | undefined;
        const isLive = !flags.json && process.stdout.isTTY;
        const progress = isLive
          ? setInterval(() => logUpdate(`${total} calls, ${errors} errors ...`), 250).unref()
          : undefined;
        // Keep the stats of instances that leave mid-run: subscribed before the client starts, this
        // listener runs before the client drops a departed instance.
        const seen = new Map<string, InstanceStats>();
        const remember = (): void => {
          for (const stats of client.stats()) seen.set(stats.instanceId, stats);
        };
        watcher.subscribe(remember);
        client.start();
        const worker = async (): Promise<void> => {
          while (issued < count && Date.now() < until && !stopping.signal.aborted) {
            issued += 1;
            try {
              lastResponse = await invoke(request);
            } catch (error) {
              errors += 1;
              lastError = error instanceof Error ? error : new Error(String(error));
            }
            total += 1;
          }
        };
        await Promise.all(Array.from({ length: Math.min(flags.concurrency, count) }, worker));
        clearInterval(progress);
        if (isLive) logUpdate.clear();
        remember();
        const summary = summarize(
          serviceName,
          flags.policy,
          total,
          errors,
          [...seen.values()].sort((a, b) => a.instanceId.localeCompare(b.instanceId)),
        );
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(summary)}\n`);
        } else {
          if (count === 1 && lastResponse !== undefined)
            process.stdout.write(`${JSON.stringify(lastResponse)}\n`);
          process.stdout.write(`${renderSummary(summary)}\n`);
          if (lastError !== undefined) {
            process.stdout.write(`last error: ${lastError.message}\n`);
          }
        }
        if (errors > 0) process.exitCode = 1;
      } finally {
        process.off("SIGINT", onSignal).off("SIGTERM", onSignal);
        await client.close();
        await watcher.close();
        registry.close();
        await metricsServer?.close();
      }
    });
}

function policyName(value: string): PolicyName {
  if (!isPolicyName(value)) throw new InvalidArgumentError(`must be one of ${POLICY_NAMES.join(", ")}.`);
  return value;
}

/** Builds the `call --json` object from a balanced client's per-instance stats. */
export function summarize(
  service: string,
  policy: PolicyName,
  total: number,
  errors: number,
  stats: readonly InstanceStats[],
): CallSummary {
  return {
    service,
    policy,
    total,
    errors,
    instances: stats.map((instance) => ({
      instance_id: instance.instanceId,
      address: instance.address,
      weight: instance.weight,
      calls: instance.calls,
      errors: instance.errors,
      p50_ms: round(instance.p50Ms),
      p99_ms: round(instance.p99Ms),
      breaker: instance.breaker,
    })),
  };
}

/** `calls` as a percentage of `total`, e.g. `33.3 %` ("-" before any call). */
export function share(calls: number, total: number): string {
  return total === 0 ? "-" : `${((100 * calls) / total).toFixed(1)} %`;
}

/** Colours only on a terminal, so piped output stays plain text. */
export function tableStyle(): { head: string[]; border: string[] } | undefined {
  return process.stdout.isTTY ? undefined : { head: [], border: [] };
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000;

/** The human distribution table: calls, share, errors, p50/p99 and breaker per instance. */
export function renderSummary(summary: CallSummary): string {
  const table = new Table({
    head: ["instance", "address", "weight", "calls", "share", "errors", "p50 ms", "p99 ms", "breaker"],
    style: tableStyle(),
  });
  const calls = summary.instances.reduce((sum, instance) => sum + instance.calls, 0);
  for (const instance of summary.instances) {
    table.push([
      instance.instance_id,
      instance.address,
      instance.weight,
      instance.calls,
      share(instance.calls, calls),
      instance.errors,
      instance.p50_ms.toFixed(2),
      instance.p99_ms.toFixed(2),
      instance.breaker,
    ]);
  }
  return `${summary.service} via ${summary.policy}: ${summary.total} calls, ${summary.errors} failed\n${table.toString()}`;
}
