/**
 * A scenario's system under test: its own etcd, registry replicas and echo instances, each a real
 * process (registries and instances are children, so they can be SIGKILLed and SIGSTOPped), on
 * free loopback ports. A registry restarts on its own port, an instance under its own id.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { freePort } from "../../cli/local-etcd.js";
import { type ChildHandle, spawnTsx } from "./child.js";
import { ChaosEtcd } from "./etcd.js";
import { type Scope, mustWaitFor, waitFor } from "./scope.js";

export const TTL_SECONDS = 3;

/**
 * jemalloc from Debian's libjemalloc2, as deploy/Dockerfile runs the registry. Under glibc's
 * malloc the registry's RSS after a 10,000-registration burst to 300 streams stayed about twice
 * its level before (113 → 226 MiB) while the V8 heap and external memory were back where they
 * started: freed native memory (HTTP/2 write buffers) that glibc keeps. Under jemalloc with 1 s
 * decay it returned to within 5 % (measured with `npm run chaos -- --only watch-burst`).
 */
export const JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/** The environment a registry child runs in: jemalloc when installed (see {@link JEMALLOC}). */
export function registryEnv(): NodeJS.ProcessEnv {
  return existsSync(JEMALLOC)
    ? { LD_PRELOAD: JEMALLOC, MALLOC_CONF: "dirty_decay_ms:1000,muzzy_decay_ms:1000" }
    : {};
}
export const SERVICE = "echo";

export interface InstanceSpec {
  readonly instanceId: string;
  readonly weight: number;
  /** Registry addresses for this instance; default every replica of the cluster. */
  readonly registry?: string;
}

export interface RegistryReplica {
  readonly index: number;
  readonly address: string;
  readonly adminAddress: string;
  process: ChildHandle;
}

export class Cluster {
  readonly scope: Scope;
  readonly etcd: ChaosEtcd;
  readonly registries: RegistryReplica[] = [];
  readonly instances = new Map<string, ChildHandle>();
  readonly specs = new Map<string, InstanceSpec>();

  /** The replicas' `maxWatchBehindMs` (the registry's default when undefined). */
  #maxWatchBehindMs: number | undefined;

  private constructor(scope: Scope, etcd: ChaosEtcd) {
    this.scope = scope;
    this.etcd = etcd;
  }

  /** etcd, `registries` replicas, and `instances` registered (waits until each printed ready). */
  static async start(
    scope: Scope,
    {
      registries = 1,
      instances = [] as readonly InstanceSpec[],
      maxWatchBehindMs = undefined as number | undefined,
    } = {},
  ): Promise<Cluster> {
    const cluster = new Cluster(scope, await ChaosEtcd.start(scope));
    cluster.#maxWatchBehindMs = maxWatchBehindMs;
    for (let index = 0; index < registries; index++) await cluster.startRegistry();
    await Promise.all(instances.map((spec) => cluster.startInstance(spec)));
    return cluster;
  }

  /** Every replica's address, comma separated (what instances and callers are given). */
  get registryAddress(): string {
    return this.registries.map((replica) => replica.address).join(",");
  }

  /** Starts a new replica on free ports. */
  async startRegistry(): Promise<RegistryReplica> {
    const address = `127.0.0.1:${await freePort()}`;
    const adminAddress = `127.0.0.1:${await freePort()}`;
    const replica: RegistryReplica = {
      index: this.registries.length,
      address,
      adminAddress,
      process: await this.#spawnRegistry(this.registries.length, address, adminAddress),
    };
    this.registries.push(replica);
    return replica;
  }

  /** Starts a replica again on its own ports (after a kill); resolves once it serves. */
  async restartRegistry(replica: RegistryReplica): Promise<void> {
    if (replica.process.isRunning) throw new Error(`registry ${replica.index} is still running`);
    replica.process = await this.#spawnRegistry(replica.index, replica.address, replica.adminAddress);
  }

  async #spawnRegistry(index: number, address: string, adminAddress: string): Promise<ChildHandle> {
    const child = spawnTsx(
      this.scope,
      `registry-${index}`,
      "chaos/children/registry.ts",
      [
        JSON.stringify({
          listen: address,
          adminListen: adminAddress,
          etcd: this.etcd.endpoint,
          maxWatchBehindMs: this.#maxWatchBehindMs,
        }),
      ],
      { nodeArgs: ["--expose-gc"], env: registryEnv() },
    );
    await child.waitForOutput(/^ready \S+ \S+$/m, "registry ready");
    return child;
  }

  /** Starts an instance process (or restarts one under the same id); waits until it is registered. */
  async startInstance(spec: InstanceSpec, { waitReady = true } = {}): Promise<ChildHandle> {
    const previous = this.instances.get(spec.instanceId);
    if (previous?.isRunning === true) throw new Error(`instance ${spec.instanceId} is still running`);
    this.specs.set(spec.instanceId, spec);
    const child = spawnTsx(this.scope, spec.instanceId, "chaos/children/instance.ts", [
      JSON.stringify({
        service: SERVICE,
        registry: spec.registry ?? this.registryAddress,
        instanceId: spec.instanceId,
        weight: spec.weight,
        ttlSeconds: TTL_SECONDS,
      }),
    ]);
    this.instances.set(spec.instanceId, child);
    if (waitReady) await child.waitForOutput(/^ready \S+ \S+$/m, "instance registered");
    return child;
  }

  instance(instanceId: string): ChildHandle {
    const child = this.instances.get(instanceId);
    if (child === undefined) throw new Error(`no instance ${instanceId}`);
    return child;
  }

  /** Ids of instance processes alive now (not SIGKILLed/exited), sorted. */
  liveInstanceIds(): string[] {
    return [...this.instances.entries()]
      .filter(([, child]) => child.isRunning)
      .map(([id]) => id)
      .sort();
  }

  /** Waits until etcd lists exactly `ids` for the service. */
  async untilEtcdHas(ids: readonly string[], what: string, timeoutMs = 20_000): Promise<void> {
    const want = [...ids].sort().join(",");
    await mustWaitFor(async () => (await this.etcd.instanceIds(SERVICE)).join(",") === want, what, timeoutMs);
  }

  /** A registry replica's /metrics value of `name` (first sample), or undefined. */
  async registryMetric(replica: RegistryReplica, name: string): Promise<number | undefined> {
    const response = await fetch(`http://${replica.adminAddress}/metrics`, {
      signal: AbortSignal.timeout(3000),
    });
    const text = await response.text();
    const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
    return line === undefined ? undefined : Number(line.split(" ").at(-1));
  }

  /** RSS of a registry replica in bytes, after a full GC in it (SIGUSR2 → `rss` line). */
  async registryRssAfterGc(replica: RegistryReplica): Promise<number> {
    return (await this.registryMemoryAfterGc(replica)).rss;
  }

  /** RSS (from /proc) and V8 heap used (as the replica reports it) after a full GC in it, bytes. */
  async registryMemoryAfterGc(
    replica: RegistryReplica,
  ): Promise<{ rss: number; heapUsed: number; heapTotal: number; external: number }> {
    const reports = (): string[] => replica.process.stdout.match(/^rss \d+.*$/gm) ?? [];
    const before = reports().length;
    replica.process.signal("SIGUSR2");
    await waitFor(() => reports().length > before, { timeoutMs: 5000 });
    const last = reports().at(-1) ?? "";
    const field = (name: string): number =>
      Number(new RegExp(`${name} (\\d+)`).exec(last)?.[1] ?? Number.NaN);
    return {
      rss: await rssOf(replica.process.pid),
      heapUsed: field("heap"),
      heapTotal: field("heapTotal"),
      external: field("external"),
    };
  }
}

/** Resident set size of a process in bytes, from /proc. */
export async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  return kib === undefined ? Number.NaN : Number(kib) * 1024;
}
