// The moving parts of the system benchmarks: a real etcd on free ports, the registry in a process
// of its own (chaos/children/registry.ts, so its CPU and RSS are its own), helper child processes
// of bench/children/ that speak one JSON line at a time, and CPU/RSS read from /proc by pid.
// Uses the compiled code (dist/, `npm run build`), as the installed package does.
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { percentile } from "./harness.mjs";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CHILDREN = fileURLToPath(new URL("./children/", import.meta.url));

/** Starts a single-member etcd on free loopback ports (cli/local-etcd.ts); `stop()` kills it. */
export async function startEtcd() {
  const { startLocalEtcd } = await import("../dist/cli/local-etcd.js");
  return await startLocalEtcd();
}

/**
 * A child process that prints one line per message, `WORD [JSON]`. Killed (SIGKILL) by `kill()`,
 * and by the runner's exit. Its stderr tail goes into any error it causes.
 */
export class Child {
  #lines = [];
  #waiters = [];
  #stderr = "";
  #exit;

  constructor(name, command, args, options = {}) {
    this.name = name;
    this.process = spawn(command, args, {
      cwd: ROOT,
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, CHAOS_LOG_LEVEL: "warn", ...options.env },
    });
    this.process.stderr.setEncoding("utf8").on("data", (chunk) => {
      this.#stderr = (this.#stderr + chunk).slice(-4000);
    });
    this.process.stdin.on("error", () => undefined); // a child that died: its exit says why
    createInterface({ input: this.process.stdout }).on("line", (line) => {
      this.#lines.push(line);
      this.#wake();
    });
    this.exited = new Promise((resolve) =>
      this.process.once("exit", (code, signal) => {
        this.#exit = { code, signal };
        this.#wake();
        resolve(this.#exit);
      }),
    );
    live.add(this);
  }

  get pid() {
    return this.process.pid;
  }

  /** Sends one line to the child's stdin. */
  send(line) {
    this.process.stdin.write(`${line}\n`);
  }

  /**
   * Resolves with the JSON (or the rest of the line) of the next line that starts with `word`
   * (earlier lines are dropped). Rejects with the stderr tail when the child exits or `timeoutMs` passes.
   */
  async next(word, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.#lines.length > 0) {
        const line = this.#lines.shift();
        if (line === word || line.startsWith(`${word} `)) {
          const rest = line.slice(word.length + 1);
          return rest.startsWith("{") ? JSON.parse(rest) : rest;
        }
      }
      if (this.#exit !== undefined) throw this.#error(`exited (${JSON.stringify(this.#exit)})`);
      const left = deadline - Date.now();
      if (left <= 0) throw this.#error(`no "${word}" within ${timeoutMs} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Sends `command` and waits for the line that answers it (`word`). */
  async ask(command, word, timeoutMs) {
    this.send(command);
    return await this.next(word, timeoutMs);
  }

  /** SIGKILL, then waits for the exit. Idempotent. */
  async kill() {
    live.delete(this);
    if (this.#exit === undefined) {
      this.process.kill("SIGKILL");
      await this.exited;
    }
  }

  #wake() {
    for (const waiter of this.#waiters.splice(0)) waiter();
  }

  #error(what) {
    return new Error(`${this.name}: ${what}; stderr: ${this.#stderr.slice(-800).trim()}`);
  }
}

const live = new Set();
process.on("exit", () => {
  for (const child of live) child.process.kill("SIGKILL");
});

/** Starts `node bench/children/<script> '<options JSON>'` and waits for its `ready` line (its JSON). */
export async function startChild(script, options, { nodeArgs = [], timeoutMs = 120_000 } = {}) {
  const child = new Child(script, process.execPath, [
    ...nodeArgs,
    `${CHILDREN}${script}`,
    JSON.stringify(options),
  ]);
  try {
    child.ready = await child.next("ready", timeoutMs);
  } catch (error) {
    await child.kill();
    throw error;
  }
  return child;
}

/** Debian's libjemalloc2, which deploy/Dockerfile and the chaos suite run the registry under (chaos/lib/cluster.ts). */
const JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/** The allocator registry processes run under: "jemalloc" when installed, else "glibc malloc". */
export const registryAllocator = existsSync(JEMALLOC) ? "jemalloc" : "glibc malloc";

/**
 * Starts a registry replica in a process of its own (chaos/children/registry.ts, under tsx, with
 * --expose-gc, under jemalloc when installed, as deployed) on free ports, against `etcdEndpoint`;
 * resolves once it serves.
 * `registry.address` is its gRPC host:port; `rssAfterGc()` asks it for its RSS after a full GC.
 */
export async function startRegistryProcess(etcdEndpoint, options = {}) {
  const child = new Child(
    "registry",
    process.execPath,
    [
      "--expose-gc",
      // e.g. "--cpu-prof --cpu-prof-dir=DIR" to profile the registry (then kill() sends SIGTERM first).
      ...(process.env["BENCH_REGISTRY_NODE_ARGS"] ?? "").split(" ").filter(Boolean),
      "--import",
      "tsx",
      "chaos/children/registry.ts",
      JSON.stringify({ listen: "127.0.0.1:0", adminListen: "127.0.0.1:0", etcd: etcdEndpoint, ...options }),
    ],
    {
      env: existsSync(JEMALLOC)
        ? { LD_PRELOAD: JEMALLOC, MALLOC_CONF: "dirty_decay_ms:1000,muzzy_decay_ms:1000" }
        : {},
    },
  );
  try {
    const [address] = (await child.next("ready")).split(" ");
    child.address = address;
  } catch (error) {
    await child.kill();
    throw error;
  }
  if (process.env["BENCH_REGISTRY_NODE_ARGS"]?.includes("--cpu-prof")) {
    // A profile is written only on a graceful exit: SIGTERM first, SIGKILL after 10 s.
    const kill = child.kill.bind(child);
    child.kill = async () => {
      child.process.kill("SIGTERM");
      await Promise.race([child.exited, sleep(10_000)]);
      await kill();
    };
  }
  child.rssAfterGc = async () => {
    child.process.kill("SIGUSR2");
    return Number((await child.next("rss")).split(" ")[0]);
  };
  return child;
}

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ, 100 on every Linux ABI node supports

/** CPU time (user + system) `pid` has used so far, in ms, from /proc/PID/stat. */
export function processCpuMs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state): utime and stime are fields 14 and 15.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SECOND;
}

/** The resident set size of `pid`, in bytes, from /proc/PID/status. */
export function processRssBytes(pid) {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match === null ? Number.NaN : Number(match[1]) * 1024;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A wall clock in ms with sub-ms resolution, comparable across processes of one machine. */
export const nowMs = () => performance.timeOrigin + performance.now();

/** The value of an instance key as the registry writes it (registry/store/instance-codec.ts). */
export function instanceValue(service, instanceId, metadata = {}) {
  return JSON.stringify({
    service,
    instance_id: instanceId,
    address: "127.0.0.1:9",
    weight: 1,
    zone: "",
    metadata,
    status: "SERVING",
    registered_at: new Date().toISOString(),
  });
}

/** The registry's key prefix of `service` (DESIGN §2). */
export const servicePrefix = (service) => `/leasehold/v1/services/${service}/`;

/**
 * A RegisterRequest (ts-proto shape) for the register benchmarks: instance `i-INDEX` of service
 * `SERVICE`, a distinct address per index, a zone and one metadata entry, as real instances send.
 */
export function registerRequest(service, index, ttlSeconds) {
  return {
    service,
    instanceId: `i-${index}`,
    address: `10.0.${(index >> 8) & 255}.${index & 255}:9000`,
    weight: 1,
    zone: "z1",
    metadata: { version: "1.2.3" },
    metricsAddress: "",
    ttlSeconds: String(ttlSeconds),
    status: 1,
  };
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` in flight; resolves with the results. */
export async function pool(count, concurrency, task) {
  const results = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next;
      next += 1;
      results[i] = await task(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return results;
}

/** A promise of one unary call of a grpc-js client (`method` is bound to it); deadline `timeoutMs`. */
export function unary(client, method, request, timeoutMs = 30_000) {
  return new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + timeoutMs }, (error, response) =>
      error === null ? resolve(response) : reject(error),
    ),
  );
}

/**
 * For one bench/children/watchers.mjs child, or several watching the same keys: waits until
 * `expected` deliveries arrived in all (or none for 3 s), then takes the report; adds `lost`
 * (expected − distinct deliveries). Several children's latencies are merged before the percentiles.
 */
export async function collectDeliveries(watchers, expected) {
  const children = [watchers].flat();
  const receivedNow = async () =>
    (await Promise.all(children.map((child) => child.ask("received", "received")))).reduce(
      (sum, count) => sum + Number(count),
      0,
    );
  let received = 0;
  for (let quietSince = Date.now(); received < expected && Date.now() - quietSince < 3000;) {
    const now = await receivedNow();
    if (now > received) quietSince = Date.now();
    received = now;
    if (received < expected) await sleep(100);
  }
  if (children.length === 1) {
    const report = await children[0].ask("report", "report");
    return { ...report, lost: expected - (report.received - report.duplicates) };
  }
  const reports = await Promise.all(children.map((child) => child.ask("report all", "report")));
  const sum = (key) => reports.reduce((total, report) => total + report[key], 0);
  const all = reports.flatMap((report) => report.all).sort((a, b) => a - b);
  return {
    received: sum("received"),
    duplicates: sum("duplicates"),
    messages: sum("messages"),
    ended: sum("ended"),
    latenciesMs: [percentile(all, 0.5), percentile(all, 0.99), all.at(-1) ?? Number.NaN],
    lost: expected - (sum("received") - sum("duplicates")),
  };
}

/**
 * Puts `count` values at `perSecond`, paced by the clock (a put is not awaited before the next
 * is due, so a slow answer does not slow the rate); resolves when every put was answered.
 * `entry(i)` gives `{ key, value }`.
 */
export async function paced(etcd3, count, perSecond, entry) {
  const began = performance.now();
  const puts = [];
  for (let i = 0; i < count; i += 1) {
    await sleep(Math.max(0, began + (i * 1000) / perSecond - performance.now()));
    const { key, value } = entry(i);
    puts.push(etcd3.kv.put({ key: Buffer.from(key), value: Buffer.from(value) }));
  }
  await Promise.all(puts);
}
