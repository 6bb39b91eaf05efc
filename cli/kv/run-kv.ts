import { connectKv } from "../../services/kv/kv-client.js";

/** Flags of `leasehold kv`. */
export interface KvFlags {
  readonly registry: string;
  readonly instance?: string;
  readonly deadlineMs?: number;
  readonly json: boolean;
}

/** One `leasehold kv` subcommand. */
export type KvCommand =
  | { readonly kind: "put"; readonly key: string; readonly value: string }
  | { readonly kind: "get"; readonly key: string; readonly isStale: boolean }
  | { readonly kind: "delete"; readonly key: string }
  | { readonly kind: "incr"; readonly key: string; readonly delta: bigint };

/**
 * Runs one kv call and prints its answer on stdout (a redirect followed is told on stderr). Every
 * write carries a fresh request id ({@link connectKv}), so the server applies it once.
 * @throws the call's ServiceError (the CLI prints its details on one line).
 */
export async function runKv(command: KvCommand, flags: KvFlags): Promise<void> {
  const kv = connectKv({
    registry: flags.registry,
    instance: flags.instance,
    deadlineMs: flags.deadlineMs,
    onRedirect: (target) => process.stderr.write(`redirected to the primary at ${target}\n`),
  });
  const print = (response: object, line: string): void => {
    process.stdout.write(`${flags.json ? JSON.stringify(response) : line}\n`);
  };
  try {
    switch (command.kind) {
      case "put": {
        const response = await kv.put(command.key, command.value);
        print(response, `OK sequence ${response.sequence} (primary ${response.instanceId})`);
        break;
      }
      case "delete": {
        const response = await kv.delete(command.key);
        print(response, `OK sequence ${response.sequence} (primary ${response.instanceId})`);
        break;
      }
      case "incr": {
        const response = await kv.increment(command.key, command.delta);
        print(response, `${response.value} (sequence ${response.sequence}, primary ${response.instanceId})`);
        break;
      }
      case "get": {
        const response = await kv.get(command.key, command.isStale ? "stale" : "linearizable");
        if (!response.found && !flags.json) {
          process.stderr.write(
            `leasehold: key "${command.key}" not found (at sequence ${response.sequence})\n`,
          );
          process.exitCode = 1;
          break;
        }
        print(response, response.value);
        break;
      }
    }
  } finally {
    kv.close();
  }
}
