/**
 * The scenario's own etcd: started by `startLocalEtcd` (free loopback ports, temp data dir), then
 * paused (SIGSTOP), resumed, SIGKILLed and restarted on the same ports and data dir. Reads go
 * through etcd's JSON gateway with a timeout per request, so a stalled or restarting etcd never
 * leaves a client in a backoff of its own that would distort a recovery time.
 */
import { spawn } from "node:child_process";
import { startLocalEtcd, type LocalEtcd } from "../../cli/local-etcd.js";
import { ChildHandle } from "./child.js";
import { type Scope, waitFor } from "./scope.js";
import { guardDir, unguardDir } from "./watchdog.js";

/** The key prefix of every instance (DESIGN §2). */
export const SERVICES_PREFIX = "/leasehold/v1/services/";

/** One instance key as etcd holds it. */
export interface EtcdInstance {
  readonly service: string;
  readonly instanceId: string;
  readonly leaseId: string;
  readonly modRevision: string;
  readonly value: { address?: string; weight?: number; status?: string; [key: string]: unknown };
}

export class ChaosEtcd {
  readonly endpoint: string;
  readonly #local: LocalEtcd;
  #current: ChildHandle;
  #restarts = 0;

  private constructor(local: LocalEtcd) {
    this.endpoint = local.endpoint;
    this.#local = local;
    this.#current = new ChildHandle("etcd", local.process, false);
  }

  static async start(scope: Scope): Promise<ChaosEtcd> {
    const local = await startLocalEtcd();
    const etcd = new ChaosEtcd(local);
    const dataDir = local.process.spawnargs.find((arg) => arg.startsWith("--data-dir="))?.slice(11);
    if (dataDir !== undefined) guardDir(dataDir);
    scope.defer("etcd", async () => {
      await etcd.#current.kill();
      await local.stop(); // removes the data dir (its own process is gone already)
      if (dataDir !== undefined) unguardDir(dataDir);
    });
    return etcd;
  }

  get pid(): number {
    return this.#current.pid;
  }

  get isRunning(): boolean {
    return this.#current.isRunning;
  }

  pause(): void {
    this.#current.signal("SIGSTOP");
  }

  resume(): void {
    this.#current.signal("SIGCONT");
  }

  async kill(): Promise<void> {
    await this.#current.kill();
  }

  /** Starts etcd again with the same arguments (ports, data dir); resolves once it answers a read. */
  async restart(timeoutMs = 20_000): Promise<void> {
    if (this.#current.isRunning) throw new Error("etcd is still running");
    const original = this.#local.process;
    const [, ...args] = original.spawnargs;
    const child = spawn(original.spawnfile, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.#restarts++;
    this.#current = new ChildHandle(`etcd (restart ${this.#restarts})`, child, false);
    const ok = await waitFor(async () => (await this.revision(500)) !== undefined, {
      timeoutMs,
      intervalMs: 50,
    });
    if (ok === undefined) throw new Error(`etcd did not answer within ${timeoutMs} ms of its restart`);
  }

  async #post<T>(path: string, body: unknown, timeoutMs: number): Promise<T> {
    const response = await fetch(`${this.endpoint}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "content-type": "application/json" },
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!response.ok) throw new Error(`etcd ${path}: HTTP ${response.status} ${await response.text()}`);
    return (await response.json()) as T;
  }

  /** The current revision, or undefined when etcd does not answer within `timeoutMs`. */
  async revision(timeoutMs = 1000): Promise<string | undefined> {
    try {
      const answer = await this.#post<{ header?: { revision?: string } }>(
        "/v3/kv/range",
        { key: b64("/"), limit: 1 },
        timeoutMs,
      );
      return answer.header?.revision ?? "0";
    } catch {
      return undefined;
    }
  }

  /** Every instance key under the services prefix (optionally of one service), with its lease. */
  async instances(
    service?: string,
    timeoutMs = 2000,
  ): Promise<{ revision: string; instances: EtcdInstance[] }> {
    const prefix = service === undefined ? SERVICES_PREFIX : `${SERVICES_PREFIX}${service}/`;
    const answer = await this.#post<{
      header?: { revision?: string };
      kvs?: { key: string; value?: string; lease?: string; mod_revision?: string }[];
    }>("/v3/kv/range", { key: b64(prefix), range_end: b64(prefixEnd(prefix)) }, timeoutMs);
    const instances = (answer.kvs ?? []).map((kv) => {
      const key = Buffer.from(kv.key, "base64").toString("utf8");
      const [svc = "", instanceId = ""] = key.slice(SERVICES_PREFIX.length).split("/");
      let value: EtcdInstance["value"];
      try {
        value = JSON.parse(Buffer.from(kv.value ?? "", "base64").toString("utf8")) as EtcdInstance["value"];
      } catch {
        value = { unparsable: true };
      }
      return {
        service: svc,
        instanceId,
        leaseId: kv.lease ?? "0",
        modRevision: kv.mod_revision ?? "0",
        value,
      };
    });
    return { revision: answer.header?.revision ?? "0", instances };
  }

  /** Instance ids of one service present in etcd now. */
  async instanceIds(service: string, timeoutMs = 2000): Promise<string[]> {
    return (await this.instances(service, timeoutMs)).instances.map((i) => i.instanceId).sort();
  }

  /** Every lease etcd holds. */
  async leases(timeoutMs = 2000): Promise<string[]> {
    const answer = await this.#post<{ leases?: { ID: string }[] }>("/v3/lease/leases", {}, timeoutMs);
    return (answer.leases ?? []).map((lease) => lease.ID);
  }

  /** Remaining TTL of a lease in seconds (etcd rounds), -1 when it does not exist. */
  async leaseTtlSeconds(leaseId: string, timeoutMs = 1000): Promise<number> {
    const answer = await this.#post<{ TTL?: string }>("/v3/lease/timetolive", { ID: leaseId }, timeoutMs);
    return Number(answer.TTL ?? "-1");
  }

  /** Compacts the history up to the current revision (physically); returns that revision. */
  async compact(): Promise<string> {
    const revision = await this.revision(2000);
    if (revision === undefined) throw new Error("etcd does not answer; cannot compact");
    await this.#post("/v3/kv/compaction", { revision, physical: true }, 5000);
    return revision;
  }
}

function b64(text: string): string {
  return Buffer.from(text, "utf8").toString("base64");
}

/** etcd's range end of a prefix: the prefix with its last byte incremented. */
function prefixEnd(prefix: string): string {
  const bytes = Buffer.from(prefix, "utf8");
  bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) + 1;
  return bytes.toString("utf8");
}
