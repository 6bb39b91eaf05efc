import { packageVersion } from "../client/package-version.js";
import { Command, CommanderError } from "commander";
import { callCommand } from "./commands/call.js";
import { demoCommand } from "./commands/demo.js";
import { kvCommand } from "./commands/kv.js";
import { listCommand } from "./commands/list.js";
import { registerCommand } from "./commands/register.js";
import { registryCommand } from "./commands/registry.js";
import { serveCommand } from "./commands/serve.js";
import { watchCommand } from "./commands/watch.js";
import { UsageError } from "./usage-error.js";

// Only commander definitions are loaded here: each command imports its implementation (grpc-js,
// the client library, the registry, prom-client, pino, tables) when it runs, so `--help` and
// `--version` start fast.
const program = new Command("leasehold")
  .description(
    "Service registry on etcd leases with client-side load balancing for gRPC.\n" +
      "Flags fall back to env: LEASEHOLD_REGISTRY, LEASEHOLD_ETCD, LEASEHOLD_LOG_LEVEL.",
  )
  .version(packageVersion(), "-V, --version", "print the leasehold version")
  .exitOverride();
registryCommand(program);
serveCommand(program);
registerCommand(program);
listCommand(program);
watchCommand(program);
callCommand(program);
kvCommand(program);
demoCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Commander already printed the message; help and version are not errors.
    process.exitCode = error.exitCode === 0 ? 0 : 2;
  } else {
    process.stderr.write(`leasehold: ${messageOf(error)}\n`);
    if (process.env["LEASEHOLD_LOG_LEVEL"] === "debug" && error instanceof Error) {
      process.stderr.write(`${error.stack ?? ""}\n`);
    }
    process.exitCode = error instanceof UsageError || isRefusedInput(error) ? 2 : 1;
  }
}

/** gRPC INVALID_ARGUMENT (3) / ALREADY_EXISTS (6) from the registry: about what the user asked for. */
function isRefusedInput(error: unknown): boolean {
  // An unreadable --tls-*/--token-file, or a bad --auth-policy file (RegistryError invalid_argument).
  if (error instanceof Error && error.name === "TlsConfigError") return true;
  if ((error as { code?: unknown } | null)?.code === "invalid_argument") return true;
  const code = (error as { code?: unknown } | null)?.code;
  return code === 3 || code === 6;
}

/** The message on one line (a gRPC error's details, without the "3 INVALID_ARGUMENT:" prefix). */
function messageOf(error: unknown): string {
  const text =
    error instanceof Error ? ((error as { details?: string }).details ?? error.message) : String(error);
  return text.replace(/\s*\n\s*/g, " ").trim();
}
