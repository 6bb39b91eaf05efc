import { status, type ServiceError } from "@grpc/grpc-js";
import { sleep } from "../../client/backoff.js";
import { connectKv } from "../../services/kv/kv-client.js";

/** What the kv part of `leasehold demo` needs of the demo. */
export interface KvDemoHost {
  readonly registryAddress: string;
  /** Address of a listed instance of `service`, if listed. */
  addressOf(service: string, id: string): string | undefined;
  say(line: string): void;
  readonly signal: AbortSignal;
}

/** The kv instances, started one after another so kv-1 is the oldest registration (the primary). */
export const KV_INSTANCES = ["kv-1", "kv-2", "kv-3"] as const;

/**
 * Puts `greeting` on the backup kv-2 (`--instance`): it answers with a redirect to kv-1, which the
 * client follows; and increments `visits`.
 */
export async function kvPutOnBackup(host: KvDemoHost): Promise<void> {
  const backup = host.addressOf("kv", "kv-2");
  if (backup === undefined) return host.say("kv: kv-2 is not listed; skipping");
  const kv = connectKv({
    registry: host.registryAddress,
    instance: backup,
    onRedirect: (target) => host.say(`kv: kv-2 is a backup: redirected to the primary at ${target}`),
  });
  try {
    const put = await kv.put("greeting", "hello", { requestId: "demo-greeting" });
    const visits = await kv.increment("visits", 1n, { requestId: "demo-visit-1" });
    host.say(
      `kv: put greeting=hello → sequence ${put.sequence} by ${put.instanceId}; incr visits → ${visits.value} (sequence ${visits.sequence})`,
    );
  } catch (error) {
    host.say(`kv: put failed: ${(error as ServiceError).details ?? String(error)}`);
  } finally {
    kv.close();
  }
}

/**
 * Reads `greeting` back (linearizable: from the primary), retrying while no primary answers (the
 * killed primary's lease has not expired yet), and says who answered and how long it took.
 */
export async function kvReadBack(host: KvDemoHost, killedAtMs: number): Promise<void> {
  const kv = connectKv({ registry: host.registryAddress, deadlineMs: 2000 });
  try {
    while (!host.signal.aborted) {
      try {
        const read = await kv.get("greeting");
        const visits = await kv.increment("visits", 1n, { requestId: "demo-visit-2" });
        host.say(
          `kv: greeting=${read.found ? read.value : "(absent!)"} read from the new primary ${read.instanceId}, ` +
            `${((Date.now() - killedAtMs) / 1000).toFixed(1)} s after the kill; incr visits → ${visits.value}`,
        );
        return;
      } catch (error) {
        const code = (error as ServiceError).code;
        if (
          code !== status.UNAVAILABLE &&
          code !== status.DEADLINE_EXCEEDED &&
          code !== status.FAILED_PRECONDITION
        )
          throw error;
        await sleep(200, host.signal);
      }
    }
  } finally {
    kv.close();
  }
}
