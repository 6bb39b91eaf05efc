import { addSecurityOptions } from "../security-options.js";
import { type Command, InvalidArgumentError } from "commander";
// picker.js, not policies.js: the pickers (and the ORCA protobuf code behind least_loaded) load
// only when a call runs, not for `--help` (issue 10, CLI start).
import { isPolicyName, POLICY_NAMES, type PolicyName } from "../../client/balancing/picker.js";
import type { CallFlags } from "../call/run-call.js";
import { hostPort, hostPortList, integerIn, keyValue, numberIn, REGISTRY_DEFAULT } from "../options.js";

/**
 * `leasehold call`. Only the commander definition is here; the action (protobuf, reflection, the
 * balanced client, prom-client) is imported when the command runs, so `--help` stays fast.
 */
export function callCommand(program: Command): void {
  addSecurityOptions(program.command("call"), { token: true })
    .description(
      "call a method of any registered service, balanced over its instances; the method is learnt by " +
        "server reflection (or from --proto files). Unary and server-streaming responses print as " +
        "proto3 JSON, one line per message; client-streaming and bidi methods read NDJSON requests " +
        "from stdin. --count/--duration/--json make a load run that prints the per-instance distribution",
    )
    .argument("<service>", "service name as registered, e.g. calculator")
    .argument("<method>", "Method, Service/Method or package.Service/Method, e.g. Add")
    .argument("[request]", 'request as proto3 JSON, e.g. \'{"a":1,"b":2}\' (default {})')
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option(
      "--proto <file>",
      "describe the service from this .proto file (repeatable) instead of reflection",
      collect,
      [],
    )
    .option(
      "--import-path <dir>",
      "where --proto files and their imports are looked up (repeatable)",
      collect,
      [],
    )
    .option(
      "-H, --metadata <key:value>",
      "metadata sent with every call (repeatable; -bin keys take base64)",
      metadataPair,
      [],
    )
    .option(
      "--deadline-ms <ms>",
      "deadline of each call, retries included (default 5000; streams: none)",
      integerIn(1, 86_400_000),
    )
    .option("--policy <policy>", `balancing policy: ${POLICY_NAMES.join(" | ")}`, policyName, "round_robin")
    .option("--zone <zone>", "the caller's zone: prefer instances there while it has the capacity")
    .option(
      "--filter <key=value>",
      "only instances with this metadata (repeatable), e.g. version=v2",
      keyValue,
      {},
    )
    .option("--count <n>", "load run: make this many calls (unary methods)", integerIn(1, 100_000_000))
    .option("--duration <seconds>", "load run: keep calling for this long", numberIn(0.001, 86_400))
    .option("--concurrency <c>", "load run: calls in flight at once", integerIn(1, 10_000), 1)
    .option("--json", "load run: print the summary as one JSON object", false)
    .option("--metrics-listen <host:port>", "serve the client's /metrics here while calling", hostPort)
    .action(async (service: string, method: string, request: string | undefined, flags: CallFlags) => {
      const { runCall } = await import("../call/run-call.js");
      await runCall(service, method, request, flags);
    });
}

function policyName(value: string): PolicyName {
  if (!isPolicyName(value)) throw new InvalidArgumentError(`must be one of ${POLICY_NAMES.join(", ")}.`);
  return value;
}

function collect(value: string, previous: readonly string[]): string[] {
  return [...previous, value];
}

/** `key:value` with a valid gRPC metadata key (lower-cased); `grpc-` keys are reserved. */
function metadataPair(value: string, previous: readonly string[]): string[] {
  const colon = value.indexOf(":");
  const key = value.slice(0, Math.max(colon, 0)).trim().toLowerCase();
  if (colon <= 0 || !/^[0-9a-z_.-]+$/.test(key) || key.startsWith("grpc-")) {
    throw new InvalidArgumentError("must be key:value with a key of [0-9a-z_.-] not starting with grpc-.");
  }
  return [...previous, value];
}
