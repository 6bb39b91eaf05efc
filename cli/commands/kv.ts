import { type Command, InvalidArgumentError } from "commander";
import type { KvCommand, KvFlags } from "../kv/run-kv.js";
import { hostPort, hostPortList, integerIn, REGISTRY_DEFAULT } from "../options.js";
import { checkKey, INT64_MAX, INT64_MIN, INTEGER, MAX_KEY_LENGTH } from "../../services/kv/kv-state.js";

/** `leasehold kv put|get|delete|incr`; the client is loaded when a command runs. */
export function kvCommand(program: Command): void {
  const kv = program
    .command("kv")
    .description(
      "read and write the replicated kv demo service (`leasehold serve kv`): writes go to the primary " +
        "(a backup answers with a redirect, followed once), reads from the primary or, with --stale, any instance",
    )
    .option(
      "--registry <host:port[,...]>",
      "registry address (env LEASEHOLD_REGISTRY)",
      hostPortList,
      REGISTRY_DEFAULT,
    )
    .option("--instance <host:port>", "send the call to this instance instead of a balanced one", hostPort)
    .option("--deadline-ms <ms>", "deadline of the call (default 5000)", integerIn(1, 3_600_000))
    .option("--json", "print the response as JSON", false);
  const run = async (command: KvCommand): Promise<void> => {
    const { runKv } = await import("../kv/run-kv.js");
    await runKv(command, kv.opts<KvFlags>());
  };
  kv.command("put")
    .description("set KEY to VALUE; prints the write's sequence number")
    .argument("<key>", `key (1..${MAX_KEY_LENGTH} characters)`, kvKey)
    .argument("<value>", "value")
    .action(async (key: string, value: string) => await run({ kind: "put", key, value }));
  kv.command("get")
    .description("print the value of KEY (exit status 1 when absent)")
    .argument("<key>", "key", kvKey)
    .option("--stale", "read from any SERVING instance (may lag the primary)", false)
    .action(
      async (key: string, flags: { stale: boolean }) => await run({ kind: "get", key, isStale: flags.stale }),
    );
  kv.command("delete")
    .description("remove KEY; prints the write's sequence number")
    .argument("<key>", "key", kvKey)
    .action(async (key: string) => await run({ kind: "delete", key }));
  kv.command("incr")
    .description("add DELTA (default 1) to the integer at KEY atomically; prints the new value")
    .argument("<key>", "key", kvKey)
    .argument("[delta]", "integer to add (int64)", int64, 1n)
    .action(async (key: string, delta: bigint) => await run({ kind: "incr", key, delta }));
}

function kvKey(value: string): string {
  const invalid = checkKey(value);
  if (invalid !== undefined) throw new InvalidArgumentError(invalid);
  return value;
}

function int64(value: string): bigint {
  if (!INTEGER.test(value)) throw new InvalidArgumentError("must be an integer");
  const parsed = BigInt(value);
  if (parsed > INT64_MAX || parsed < INT64_MIN) throw new InvalidArgumentError("must fit in int64");
  return parsed;
}
