import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import Table from "cli-table3";
import { Registry } from "prom-client";
import logUpdate from "log-update";
import { sleep } from "../../client/backoff.js";
import {
  createBalancedClient,
  type BalancedClient,
  type InstanceStats,
} from "../../client/balancing/balanced-client.js";
import type { PolicyName } from "../../client/balancing/policies.js";
import { MembershipWatcher } from "../../client/discovery/membership-watcher.js";
import { ClientMetrics } from "../../client/metrics/client-metrics.js";
import { collectProcessMetrics } from "../../client/metrics/process-metrics.js";
import { CALLER_SERVICE, startCallerEntry } from "../../client/registration/caller-entry.js";
import type { Registrar } from "../../client/registration/registrar.js";
import { splitHostPort } from "../../client/server/host-port.js";
import { metricsRoute, startHttpEndpoints, type HttpEndpoints } from "../../client/server/http-endpoints.js";
import { routableHost } from "../../client/server/routable-host.js";
import { connectRegistry } from "../../client/registry-connection.js";
import { channelCredentials, type ClientSecurity, type TlsFiles } from "../../client/tls/tls-files.js";
import { hashToken } from "../../registry/auth/registry-auth.js";
import { generateCa, writeCertificate } from "./throwaway-pki.js";
import { KV_INSTANCES, kvPutOnBackup, kvReadBack, type KvDemoHost } from "./kv-demo.js";
import type { RegistryServiceClient } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { DEMO_SERVICES } from "../../services/index.js";
import { freePort, startLocalEtcd, type LocalEtcd } from "../local-etcd.js";
import { createLogger } from "../logger.js";
import { urlList } from "../options.js";
import { renderSummary, share, summarize } from "../call/summary.js";
import { flattenChanges, statusName } from "../watch/run-watch.js";

// The compiled CLI entry (dist/cli/main.js): the CLI runs from dist/, one level below leasehold.mjs.
const LEASEHOLD_BIN = fileURLToPath(new URL("../main.js", import.meta.url));
const TTL_SECONDS = 3;

/** The instances the demo starts with: three weighted calculators and two echoes. */
const INITIAL_INSTANCES = [
  { service: "calculator", id: "calc-1", weight: 1 },
  { service: "calculator", id: "calc-2", weight: 2 },
  { service: "calculator", id: "calc-3", weight: 3 },
  { service: "echo", id: "echo-1", weight: 1 },
  { service: "echo", id: "echo-2", weight: 1 },
] as const;

/** The fault schedule, as fractions of the duration. */
interface Step {
  readonly at: number;
  readonly say: string;
  readonly run: (demo: Demo) => Promise<void> | void;
}
const SCHEDULE: readonly Step[] = [
  { at: 0.15, say: "add calc-4 (weight 2)", run: (demo) => demo.startInstance("calculator", "calc-4", 2) },
  {
    at: 0.2,
    say: "kv: put on kv-2, a backup (kv-1 is the primary: the oldest registration)",
    run: (demo) => demo.kvStep((host) => kvPutOnBackup(host)),
  },
  {
    at: 0.3,
    say: "calc-4 fails every call with UNAVAILABLE: its breaker opens, retries land elsewhere",
    run: (demo) => demo.toggleFailure("calc-4"),
  },
  {
    at: 0.45,
    say: `SIGKILL echo-2: it leaves when its lease expires (TTL ${TTL_SECONDS} s)`,
    run: (demo) => demo.signal("echo-2", "SIGKILL"),
  },
  {
    at: 0.5,
    say: `SIGKILL kv-1, the kv primary: kv-2 (the next-oldest) takes over when kv-1's lease expires (TTL ${TTL_SECONDS} s)`,
    run: (demo) => demo.kvStep(() => Promise.resolve(demo.killKvPrimary())),
  },
  { at: 0.6, say: "add echo-3", run: (demo) => demo.startInstance("echo", "echo-3", 1) },
  {
    at: 0.7,
    say: "SIGTERM calc-4: graceful drain, then deregister (gone at once)",
    run: (demo) => demo.signal("calc-4", "SIGTERM"),
  },
  { at: 0.75, say: "kv: read greeting back from the primary", run: (demo) => demo.kvReadBack() },
];

/** Flags of `leasehold demo`. */
export interface DemoFlags {
  duration: number;
  etcd?: string[];
  /** Serve the demo client's /metrics here and list it in the registry (a leasehold-caller entry). */
  metricsListen?: string;
  /** Every hop over mTLS with a throwaway CA, etcd too (when the demo starts it), and token auth. */
  tls?: boolean;
}

/** What `demo --tls` generated: certificate files, the token file, and the registry's auth files. */
interface DemoSecurity {
  readonly files: Required<TlsFiles>;
  readonly tokenFile: string;
  readonly policyFile: string;
  readonly tokensFile: string;
  readonly client: ClientSecurity;
}

/** `leasehold demo`: runs the whole system for `--duration` seconds, then stops everything it started. */
export async function runDemo(flags: DemoFlags): Promise<void> {
  const demo = new Demo(
    flags.duration * 1000,
    flags.etcd ?? envEtcd(),
    flags.metricsListen,
    flags.tls ?? false,
  );
  let hasFailed = true;
  try {
    await demo.run();
    hasFailed = false;
  } finally {
    await demo.close({ keepLogs: hasFailed });
  }
}

function envEtcd(): string[] | undefined {
  const value = process.env["LEASEHOLD_ETCD"];
  return value === undefined ? undefined : urlList(value);
}

interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  readonly exited: Promise<unknown>;
}

/** One run of the demo: owns every process it starts and stops them all in {@link close}. */
class Demo {
  readonly #durationMs: number;
  readonly #etcdUrls: string[] | undefined;
  readonly #isLive = process.stdout.isTTY;
  readonly #children = new Map<string, Child>();
  readonly #events: string[] = [];
  /** Last stats of every instance ever seen, so departed ones stay in the summary. */
  readonly #seen = new Map<string, InstanceStats & { service: string }>();
  readonly #breakers = new Map<string, string>();
  readonly #clients: {
    service: string;
    policy: PolicyName;
    client: BalancedClient<unknown>;
    watcher: MembershipWatcher;
  }[] = [];
  readonly #stopping = new AbortController();
  #etcd: LocalEtcd | undefined;
  #registry: RegistryServiceClient | undefined;
  #registryAddress = "";
  #logDir = "";
  #allWatcher: MembershipWatcher | undefined;
  #startedAt = 0;
  #lastStatusAt = 0;
  /** Calls made and calls failed after retries, per service. */
  readonly #outcomes = new Map<string, { calls: number; failed: number }>();
  #header = "";
  /** Services whose caller is in panic mode, or whose membership is stale (for the banner). */
  readonly #panicking = new Set<string>();
  readonly #stale = new Set<string>();

  readonly #metricsListen: string | undefined;
  readonly #isTls: boolean;
  #security: DemoSecurity | undefined;
  #metrics: ClientMetrics | undefined;
  #metricsServer: HttpEndpoints | undefined;
  #callerEntry: Registrar | undefined;
  #kvKilledAtMs = 0;

  constructor(
    durationMs: number,
    etcdUrls: string[] | undefined,
    metricsListen: string | undefined,
    isTls: boolean,
  ) {
    this.#isTls = isTls;
    this.#durationMs = durationMs;
    this.#etcdUrls = etcdUrls;
    this.#metricsListen = metricsListen;
  }

  async run(): Promise<void> {
    const onSignal = (): void => this.#stopping.abort();
    process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
    process.once("exit", () => {
      for (const child of this.#children.values()) child.process.kill("SIGKILL");
    });
    this.#logDir = await mkdtemp(join(tmpdir(), "leasehold-demo-"));
    const security = this.#isTls ? await this.#generateSecurity() : undefined;
    this.#security = security;
    let endpoints = this.#etcdUrls;
    if (endpoints === undefined) {
      this.#etcd = await startLocalEtcd({ tls: security?.files });
      endpoints = [this.#etcd.endpoint];
    }
    const etcdctlTls =
      security === undefined || this.#etcd === undefined
        ? ""
        : ` --cacert=${security.files.caFile} --cert=${security.files.certFile} --key=${security.files.keyFile}`;
    this.#say(
      `etcd ${endpoints.join(",")} — try: ETCDCTL_API=3 etcdctl --endpoints=${endpoints[0]}${etcdctlTls} get --prefix /leasehold/`,
    );

    const [port, adminPort] = [await freePort(), await freePort()];
    this.#registryAddress = `127.0.0.1:${port}`;
    const registry = await this.#spawn("registry", [
      "registry",
      `--listen=${this.#registryAddress}`,
      `--admin-listen=127.0.0.1:${adminPort}`,
      `--etcd=${endpoints.join(",")}`,
      ...(security === undefined
        ? []
        : [
            ...this.#tlsArgs().filter((arg) => !arg.startsWith("--token-file=")),
            `--auth-policy=${security.policyFile}`,
            `--auth-tokens=${security.tokensFile}`,
            ...(this.#etcd === undefined
              ? []
              : [
                  `--etcd-ca=${security.files.caFile}`,
                  `--etcd-cert=${security.files.certFile}`,
                  `--etcd-key=${security.files.keyFile}`,
                ]),
          ]),
    ]);
    await this.#waitForLine(registry, /registry listening/);
    const scheme = security === undefined ? "http" : "https";
    this.#say(
      `registry ${this.#registryAddress}, admin ${scheme}://127.0.0.1:${adminPort}/metrics, /sd/prometheus and /ui (web console)`,
    );
    this.#say(`process logs in ${this.#logDir} (removed at the end unless the demo fails)`);
    this.#header = `etcd ${endpoints.join(",")} · registry ${this.#registryAddress} · logs ${this.#logDir}`;

    this.#registry = connectRegistry(this.#registryAddress, {}, security?.client);
    const logger = createLogger("leasehold-demo", "error"); // the view reports breaker changes; warn lines would tear it;
    this.#allWatcher = new MembershipWatcher({ registry: this.#registry, service: "", logger });
    this.#allWatcher.subscribe((_, changes) => {
      for (const [type, instance, revision] of flattenChanges(changes)) {
        const sign = { snapshot: "=", added: "+", updated: "~", removed: "-" }[type] ?? "?";
        this.#say(
          `${sign} ${type} ${instance.service}/${instance.instanceId} ${instance.address} weight=${instance.weight} ${statusName(instance.status)} (revision ${revision})`,
        );
      }
    });
    this.#allWatcher.start();
    await this.#allWatcher.ready();
    if (this.#metricsListen !== undefined) await this.#serveMetrics(this.#metricsListen, this.#registry);

    await Promise.all(
      INITIAL_INSTANCES.map((spec) => this.startInstance(spec.service, spec.id, spec.weight)),
    );
    // One after another: kv-1 holds the oldest registration, so it is the primary. Not with --tls:
    // the demo's kv client has no TLS plumbing (instances themselves dial their peers over TLS).
    if (!this.#isTls) {
      for (const id of KV_INSTANCES) await this.startInstance("kv", id, 1);
      await this.#kvServing(KV_INSTANCES.length);
    }
    for (const [service, policy] of [
      ["calculator", "weighted_round_robin"],
      ["echo", "round_robin"],
    ] as const) {
      const metrics = this.#metrics;
      const watcher = new MembershipWatcher({ registry: this.#registry, service, logger, metrics });
      watcher.start();
      await watcher.ready();
      const definition = DEMO_SERVICES[service]?.definition;
      if (definition === undefined) throw new Error(`no demo service ${service}`);
      const client = createBalancedClient(definition, {
        service,
        membership: watcher,
        policy,
        logger,
        metrics,
        credentials: channelCredentials(security?.files),
      });
      client.start();
      this.#clients.push({ service, policy, client, watcher });
    }

    this.#startedAt = Date.now();
    this.#say(
      `calling calculator with weighted_round_robin and echo with round_robin for ${this.#durationMs / 1000} s`,
    );
    const viewTimer = setInterval(() => this.#refresh(), 250);
    const load = Promise.all([this.#load("calculator", 3), this.#load("echo", 1)]);
    try {
      for (const step of SCHEDULE) {
        await sleep(this.#startedAt + step.at * this.#durationMs - Date.now(), this.#stopping.signal);
        if (this.#stopping.signal.aborted) break;
        this.#say(`» ${step.say}`);
        await step.run(this);
      }
      await sleep(this.#startedAt + this.#durationMs - Date.now(), this.#stopping.signal);
    } finally {
      this.#stopping.abort();
      await load;
      clearInterval(viewTimer);
      this.#refresh();
      if (this.#isLive) logUpdate.done();
      process.off("SIGINT", onSignal).off("SIGTERM", onSignal);
    }
    process.stdout.write(`\n${this.#summary()}\n`);
  }

  /** Starts `leasehold serve` as a child process and waits until callers can see it. */
  async startInstance(service: string, id: string, weight: number): Promise<void> {
    const child = await this.#spawn(id, [
      "serve",
      service,
      `--registry=${this.#registryAddress}`,
      `--id=${id}`,
      `--weight=${weight}`,
      `--ttl=${TTL_SECONDS}`,
      "--listen=127.0.0.1:0",
      // The client's --metrics-listen host, so a Prometheus that reaches one reaches all (0.0.0.0
      // for one in a container: README, "Run it with Prometheus and Grafana").
      `--metrics-listen=${this.#metricsListen === undefined ? "127.0.0.1" : splitHostPort(this.#metricsListen).host}:0`,
      ...this.#tlsArgs(),
    ]);
    await this.#waitForLine(child, /serving/);
  }

  /** `--tls-*` and `--token-file` of a child with `--tls`, else none. */
  #tlsArgs(): string[] {
    const security = this.#security;
    if (security === undefined) return [];
    return [
      `--tls-cert=${security.files.certFile}`,
      `--tls-key=${security.files.keyFile}`,
      `--tls-ca=${security.files.caFile}`,
      `--token-file=${security.tokenFile}`,
    ];
  }

  /**
   * `--tls`: a throwaway CA and one certificate (server and client use) for localhost, 127.0.0.1
   * and the demo's service names (a `leasehold:///` channel checks an instance against its service
   * name), a random 256-bit token and the registry's policy letting it write anything. All in the
   * demo's temp folder, removed at the end.
   */
  async #generateSecurity(): Promise<DemoSecurity> {
    const dir = join(this.#logDir, "tls");
    await mkdir(dir, { mode: 0o700 });
    const ca = await generateCa("leasehold demo CA");
    const files = await writeCertificate(dir, "demo", ca, {
      dns: ["localhost", ...Object.keys(DEMO_SERVICES), CALLER_SERVICE],
      ips: ["127.0.0.1"],
    });
    const token = randomBytes(32).toString("base64url");
    const tokenFile = join(dir, "token");
    const tokensFile = join(dir, "tokens");
    const policyFile = join(dir, "policy.json");
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    await writeFile(tokensFile, `demo ${hashToken(token)}\n`);
    await writeFile(policyFile, JSON.stringify({ principals: { demo: { services: ["*"], read: true } } }));
    this.#say(
      `TLS: throwaway CA and certificates in ${dir}; every hop uses mTLS, writes need the demo token`,
    );
    return { files, tokenFile, policyFile, tokensFile, client: { tls: files, token } };
  }

  /** The kv part's view of the demo (cli/demo/kv-demo.ts). */
  kvHost(): KvDemoHost {
    return {
      registryAddress: this.#registryAddress,
      addressOf: (service, id) =>
        this.#allWatcher?.current().instances.find((i) => i.service === service && i.instanceId === id)
          ?.address,
      say: (line) => this.#say(line),
      signal: this.#stopping.signal,
    };
  }

  /** Runs a kv step, unless the demo runs without kv (`--tls`). */
  async kvStep(step: (host: KvDemoHost) => Promise<void>): Promise<void> {
    if (this.#isTls) return this.#say("kv: skipped with --tls");
    await step(this.kvHost());
  }

  killKvPrimary(): void {
    this.#kvKilledAtMs = Date.now();
    this.signal("kv-1", "SIGKILL");
  }

  async kvReadBack(): Promise<void> {
    await this.kvStep((host) => kvReadBack(host, this.#kvKilledAtMs));
  }

  /** Waits until `count` kv instances are SERVING (each caught up with the primary). */
  async #kvServing(count: number): Promise<void> {
    const deadline = Date.now() + 30_000;
    const serving = (): number =>
      this.#allWatcher
        ?.current()
        .instances.filter((i) => i.service === "kv" && statusName(i.status) === "SERVING").length ?? 0;
    while (serving() < count) {
      if (Date.now() > deadline) throw new Error(`kv instances did not turn SERVING (see ${this.#logDir})`);
      await sleep(100, this.#stopping.signal);
      if (this.#stopping.signal.aborted) return;
    }
  }

  toggleFailure(id: string): void {
    this.#children.get(id)?.process.stdin?.write("f");
  }

  signal(id: string, signal: NodeJS.Signals): void {
    this.#children.get(id)?.process.kill(signal);
  }

  /** Serves the demo client's metrics on `listen` and lists them in the registry for Prometheus' HTTP SD. */
  async #serveMetrics(listen: string, registry: RegistryServiceClient): Promise<void> {
    const metricsRegistry = new Registry();
    collectProcessMetrics(metricsRegistry, "caller");
    this.#metrics = new ClientMetrics(metricsRegistry);
    this.#metricsServer = await startHttpEndpoints(
      listen,
      { "/metrics": metricsRoute(metricsRegistry) },
      this.#security?.files,
    );
    const { host, port } = splitHostPort(this.#metricsServer.address);
    const metricsAddress = `${routableHost(host)}:${port}`;
    this.#callerEntry = await startCallerEntry({ registry, metricsAddress, calls: "calculator,echo" });
    this.#say(`demo client metrics http://${metricsAddress}/metrics (listed as ${CALLER_SERVICE})`);
  }

  /** Stops the load, every child (SIGTERM, then SIGKILL after 5 s) and etcd. Idempotent. */
  async close({ keepLogs }: { keepLogs: boolean }): Promise<void> {
    this.#stopping.abort();
    for (const { client, watcher } of this.#clients.splice(0)) {
      await client.close();
      await watcher.close();
    }
    await this.#allWatcher?.close();
    await this.#callerEntry?.close();
    await this.#metricsServer?.close();
    this.#registry?.close();
    const children = [...this.#children.values()];
    const services = children.filter((child) => child.name !== "registry");
    await Promise.all(services.map(async (child) => await this.#stopChild(child)));
    await Promise.all(
      children.filter((child) => child.name === "registry").map(async (c) => await this.#stopChild(c)),
    );
    this.#children.clear();
    await this.#etcd?.stop();
    if (children.length > 0)
      process.stdout.write(`stopped ${children.length} processes${this.#etcd ? " and etcd" : ""}\n`);
    if (this.#logDir === "") return;
    if (keepLogs) process.stderr.write(`leasehold demo: process logs kept in ${this.#logDir}\n`);
    else await rm(this.#logDir, { recursive: true, force: true });
  }

  async #stopChild(child: Child): Promise<void> {
    if (child.process.exitCode !== null || child.process.signalCode !== null) return;
    child.process.kill("SIGTERM");
    const timer = setTimeout(() => child.process.kill("SIGKILL"), 5000);
    await child.exited;
    clearTimeout(timer);
  }

  async #spawn(name: string, args: string[]): Promise<Child> {
    const logFile = await open(join(this.#logDir, `${name}.log`), "a");
    const child = spawn(process.execPath, [LEASEHOLD_BIN, ...args], {
      stdio: ["pipe", "pipe", logFile.fd],
      env: { ...process.env, LEASEHOLD_LOG_LEVEL: process.env["LEASEHOLD_LOG_LEVEL"] ?? "info" },
    });
    child.stdout?.pipe(logFile.createWriteStream()); // closes the file when the child's stdout ends
    child.stdin?.on("error", () => undefined);
    const exited = once(child, "exit").catch(() => undefined);
    void exited.then(() => this.#children.get(name)?.process === child && this.#children.delete(name));
    this.#children.set(name, { name, process: child, exited });
    return { name, process: child, exited };
  }

  async #waitForLine(child: Child, pattern: RegExp, timeoutMs = 20_000): Promise<void> {
    const lines = createInterface({ input: child.process.stdout as NodeJS.ReadableStream });
    const timer = setTimeout(() => lines.close(), timeoutMs);
    try {
      for await (const line of lines) if (pattern.test(line)) return;
      throw new Error(`${child.name} did not start (see ${join(this.#logDir, `${child.name}.log`)})`);
    } finally {
      clearTimeout(timer);
      lines.close();
      child.process.stdout?.resume(); // closing readline paused it; the log file still reads it
    }
  }

  async #load(service: string, workers: number): Promise<void> {
    const entry = this.#clients.find((candidate) => candidate.service === service);
    if (entry === undefined) return;
    const demoService = DEMO_SERVICES[service];
    const method = Object.values(demoService?.methods ?? {})[0];
    if (method === undefined) return;
    const invoke = (entry.client.methods as Record<string, (request: unknown) => Promise<unknown>>)[
      method.key
    ];
    const request = method.request.fromJSON({ a: 6, b: 7, message: "hello" });
    const outcome = { calls: 0, failed: 0 };
    this.#outcomes.set(service, outcome);
    const worker = async (): Promise<void> => {
      while (!this.#stopping.signal.aborted) {
        try {
          await invoke?.(request);
        } catch {
          outcome.failed += 1;
        }
        outcome.calls += 1;
        await sleep(5);
      }
    };
    await Promise.all(Array.from({ length: workers }, worker));
  }

  #refresh(): void {
    for (const { service, client, watcher } of this.#clients) {
      if (client.isPanicking !== this.#panicking.has(service)) {
        if (client.isPanicking) this.#panicking.add(service);
        else this.#panicking.delete(service);
        this.#say(
          client.isPanicking
            ? `! PANIC ${service}: instances left at once; still routing over those that answer`
            : `panic mode of ${service} over`,
        );
      }
      if (watcher.isStale !== this.#stale.has(service)) {
        if (watcher.isStale) this.#stale.add(service);
        else this.#stale.delete(service);
        this.#say(
          watcher.isStale ? `! STALE ${service}: membership may be out of date` : `${service} fresh again`,
        );
      }
      for (const stats of client.stats()) {
        this.#seen.set(`${service}/${stats.instanceId}`, { ...stats, service });
        const previous = this.#breakers.get(`${service}/${stats.instanceId}`) ?? "closed"; // every breaker starts closed
        if (previous !== stats.breaker) {
          this.#say(`! breaker of ${service}/${stats.instanceId} ${stats.breaker}`);
        }
        this.#breakers.set(`${service}/${stats.instanceId}`, stats.breaker);
      }
    }
    if (this.#isLive) logUpdate(this.#view());
    else if (Date.now() - this.#lastStatusAt >= 5000) {
      this.#lastStatusAt = Date.now();
      this.#say(this.#statusLine());
    }
  }

  /** The running traffic split and breaker states, one line (the live view's gist, for logs). */
  #statusLine(): string {
    const listed = new Set(
      this.#allWatcher?.current().instances.map((i) => `${i.service}/${i.instanceId}`) ?? [],
    );
    const parts = this.#clients.map(({ service, client }) => {
      const stats = client.stats().filter((s) => listed.has(`${service}/${s.instanceId}`));
      const calls = stats.reduce((sum, s) => sum + s.calls, 0);
      const shares = stats.map(
        (s) =>
          `${s.instanceId}(w${s.weight}${s.status === "DRAINING" ? ",draining" : ""}${s.breaker === "closed" ? "" : `,breaker ${s.breaker}`}) ${share(s.calls, calls)}`,
      );
      return `${service}: ${shares.join(" ")}`;
    });
    return `traffic ${parts.join(" | ")} — ${this.#splitLine()}`;
  }

  #view(): string {
    const elapsed = ((Date.now() - this.#startedAt) / 1000).toFixed(1);
    const table = new Table({
      head: [
        "service",
        "instance",
        "address",
        "weight",
        "status",
        "breaker",
        "calls",
        "share",
        "errors",
        "p99 ms",
      ],
    });
    const listed = new Set(
      this.#allWatcher?.current().instances.map((i) => `${i.service}/${i.instanceId}`) ?? [],
    );
    for (const { service, client } of this.#clients) {
      const stats = client.stats();
      const calls = stats.reduce((sum, s) => sum + s.calls, 0);
      for (const s of stats) {
        if (!listed.has(`${service}/${s.instanceId}`)) continue;
        table.push([
          service,
          s.instanceId,
          s.address,
          s.weight,
          s.status,
          s.breaker,
          s.calls,
          share(s.calls, calls),
          s.errors,
          s.p99Ms.toFixed(2),
        ]);
      }
    }
    return [
      `leasehold demo — ${elapsed} s of ${this.#durationMs / 1000} s — ${this.#totals()} — ${this.#splitLine()}`,
      this.#header,
      ...(this.#panicking.size > 0
        ? [`PANIC: still routing over ${[...this.#panicking].join(", ")} (instances left at once)`]
        : []),
      ...(this.#stale.size > 0
        ? [`STALE: ${[...this.#stale].join(", ")} (registry unreachable or blind to etcd)`]
        : []),
      table.toString(),
      "recent events:",
      ...this.#events.slice(-10),
    ].join("\n");
  }

  #totals(): string {
    const outcomes = [...this.#outcomes.values()];
    const calls = outcomes.reduce((sum, o) => sum + o.calls, 0);
    const failed = outcomes.reduce((sum, o) => sum + o.failed, 0);
    return `${calls} calls made, ${failed} failed after retries`;
  }

  /** The traffic split among calc-1..3 (weights 1:2:3), normalised to calc-1. */
  #splitLine(): string {
    const calls = ["calc-1", "calc-2", "calc-3"].map((id) => this.#seen.get(`calculator/${id}`)?.calls ?? 0);
    const base = calls[0] ?? 0;
    if (base === 0) return "split calc-1:calc-2:calc-3 = -";
    return `split calc-1:calc-2:calc-3 = ${calls.map((c) => (c / base).toFixed(2)).join(" : ")} (weights 1 : 2 : 3)`;
  }

  #summary(): string {
    const parts: string[] = [];
    for (const { service, policy } of this.#clients.length > 0 ? this.#clients : []) {
      const stats = [...this.#seen.values()].filter((s) => s.service === service);
      const outcome = this.#outcomes.get(service) ?? { calls: 0, failed: 0 };
      parts.push(renderSummary(summarize(service, policy, outcome.calls, outcome.failed, stats)));
    }
    parts.push(`${this.#totals()} (errors per instance are attempts, retried on another instance)`);
    parts.push(this.#splitLine());
    return parts.join("\n");
  }

  #say(line: string): void {
    const stamp =
      this.#startedAt === 0 ? "  --  " : `${((Date.now() - this.#startedAt) / 1000).toFixed(1).padStart(5)}s`;
    const text = `${stamp} ${line}`;
    this.#events.push(text);
    if (this.#events.length > 100) this.#events.shift();
    if (this.#isLive) logUpdate(this.#startedAt === 0 ? this.#events.slice(-10).join("\n") : this.#view());
    else process.stdout.write(`${text}\n`);
  }
}
