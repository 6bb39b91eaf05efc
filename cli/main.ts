import { status } from "@grpc/grpc-js";
import { Command, CommanderError } from "commander";
import { callCommand } from "./commands/call.js";
import { demoCommand } from "./commands/demo.js";
import { registryCommand } from "./commands/registry.js";
import { serveCommand } from "./commands/serve.js";
import { watchCommand } from "./commands/watch.js";
import { UsageError } from "./usage-error.js";

const program = new Command("leasehold")
  .description(
    "Service registry on etcd leases with client-side load balancing for gRPC.\n" +
      "Flags fall back to env: LEASEHOLD_REGISTRY, LEASEHOLD_ETCD, LEASEHOLD_LOG_LEVEL.",
  )
  .exitOverride();
registryCommand(program);
serveCommand(program);
watchCommand(program);
callCommand(program);
demoCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Commander already printed the message; help and version are not errors.
    process.exitCode = error.exitCode === 0 ? 0 : 2;
  } else if (error instanceof UsageError || isRefusedInput(error)) {
    process.stderr.write(`leasehold: ${messageOf(error)}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`leasehold: ${messageOf(error)}\n`);
    process.exitCode = 1;
  }
}

/** A gRPC INVALID_ARGUMENT / ALREADY_EXISTS from the registry is about what the user asked for. */
function isRefusedInput(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === status.INVALID_ARGUMENT || code === status.ALREADY_EXISTS;
}

function messageOf(error: unknown): string {
  if (error instanceof Error) return (error as { details?: string }).details ?? error.message;
  return String(error);
}
