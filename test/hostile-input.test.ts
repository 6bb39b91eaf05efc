import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { connect } from "node:net";
import test from "ava";
import { spawnCli, type CliProcess } from "./helpers/cli.js";

/**
 * Issue 7, item 1: hostile HTTP and raw bytes thrown at every listening port of every process of
 * a running demo (etcd, registry, instances, the demo's caller) and of a `leasehold call` load run,
 * after which every process is alive and still serving.
 */

/** A listening TCP socket of one process, from /proc. */
interface ListeningPort {
  readonly pid: number;
  readonly host: string;
  readonly port: number;
}

/** `pid` and every process below it, from /proc/PID/stat (field 4 is the parent pid). */
function processTree(pid: number): number[] {
  const parents = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parents.set(parent, [...(parents.get(parent) ?? []), Number(entry)]);
    } catch {
      // gone meanwhile
    }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) tree.push(...(parents.get(tree[i] ?? 0) ?? []));
  return tree;
}

/** The IPv4/IPv6 address of a /proc/net/tcp{,6} hex field (little-endian 32-bit words). */
function procAddress(hex: string): string {
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = words.flatMap((word) => (word.match(/../g) ?? []).reverse().map((b) => parseInt(b, 16)));
  if (bytes.length === 4) return bytes.join(".");
  const groups = Array.from({ length: 8 }, (_, i) =>
    ((bytes[2 * i] ?? 0) * 256 + (bytes[2 * i + 1] ?? 0)).toString(16),
  );
  return groups.join(":");
}

/** Every listening TCP socket held by one of `pids` (socket inodes of /proc/PID/fd in /proc/net/tcp*). */
function listeningPorts(pids: readonly number[]): ListeningPort[] {
  const ownerByInode = new Map<string, number>();
  for (const pid of pids) {
    try {
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        const inode = /^socket:\[(\d+)\]$/.exec(safeReadlink(`/proc/${pid}/fd/${fd}`))?.[1];
        if (inode !== undefined) ownerByInode.set(inode, pid);
      }
    } catch {
      // gone meanwhile
    }
  }
  const found: ListeningPort[] = [];
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of readFileSync(table, "utf8").trim().split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      const [local = "", state, inode = ""] = [fields[1], fields[3], fields[9]];
      const pid = ownerByInode.get(inode);
      if (state !== "0A" || pid === undefined) continue;
      const [address = "", port = ""] = local.split(":");
      const host = procAddress(address);
      const wildcard = host === "0.0.0.0" ? "127.0.0.1" : host === "0:0:0:0:0:0:0:0" ? "::1" : host;
      found.push({ pid, host: wildcard, port: parseInt(port, 16) });
    }
  }
  return found;
}

function safeReadlink(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return "";
  }
}

/**
 * Connects, writes `payload` (a chunk, or chunks `intervalMs` apart), half-closes unless told not
 * to, and resolves with what came back once the server closes. The client gives up after
 * `giveUpMs` (a safety for servers that wait, such as etcd; nothing here asserts a duration).
 */
async function exchange(
  target: ListeningPort,
  payload: string | Buffer | readonly string[],
  { intervalMs = 0, giveUpMs = 5_000 } = {},
): Promise<{ answer: string; isClosedByServer: boolean }> {
  return await new Promise((resolve) => {
    const socket = connect({ host: target.host, port: target.port });
    let answer = "";
    let isClosedByServer = true;
    const chunks = typeof payload === "string" || Buffer.isBuffer(payload) ? [payload] : [...payload];
    let timer: NodeJS.Timeout | undefined;
    const giveUp = setTimeout(() => {
      isClosedByServer = false;
      socket.destroy();
    }, giveUpMs);
    socket.on("data", (data: Buffer) => (answer += data.toString("latin1")));
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(giveUp);
      clearInterval(timer);
      resolve({ answer, isClosedByServer });
    });
    socket.on("connect", () => {
      if (intervalMs === 0) {
        for (const chunk of chunks) socket.write(chunk);
        socket.end();
        return;
      }
      timer = setInterval(() => {
        const chunk = chunks.shift();
        if (chunk === undefined || socket.destroyed) clearInterval(timer);
        else socket.write(chunk);
      }, intervalMs);
    });
  });
}

/** Request lines and heads no server may crash on, each refused with a 4xx by Leasehold's endpoints. */
const hostileRequests: readonly [string, string][] = [
  ["an unparsable absolute URL", "GET http://[ HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["an unparsable authority", "GET //[ HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["a port out of range", "GET http://a:99999999/metrics HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["userinfo and an open IPv6 bracket", "GET http://u:p@[::1/metrics HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["an asterisk target", "GET * HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["control bytes in the target", "GET /\u0000\u0001\u007f HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["a 100 KiB target", `GET /${"%ZZ".repeat(34_000)} HTTP/1.1\r\nHost: x\r\n\r\n`],
  ["a 100 KiB header", `GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(100 * 1024)}\r\n\r\n`],
  ["no Host header", "GET /metrics HTTP/1.1\r\n\r\n"],
  ["an unknown version", "GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n"],
  [
    "smuggling: Content-Length with chunked Transfer-Encoding",
    "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
  ],
  [
    "smuggling: two Content-Lengths",
    "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
  ],
  [
    "smuggling: an obfuscated Transfer-Encoding",
    "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding : xchunked\r\n\r\nZ\r\n",
  ],
];

/** Requests any answer (or none) may meet, as long as the process survives them. */
const oddRequests: readonly string[] = [
  "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
  "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
  "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
  "GET /metrics HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
  `GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n`.repeat(2000),
];

/** One slowloris: a request head, then one byte a second, never finished. */
const slowloris = ["GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ", ..."a".repeat(30).split("")];

async function getStatus(url: string): Promise<number> {
  return (await fetch(url, { signal: AbortSignal.timeout(10_000) })).status;
}

function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

test.serial(
  "hostile HTTP and 1 MiB of random bytes to every port of the demo and of a call run leave every process alive and serving",
  async (t) => {
    // Starting the demo, the attacks (slowloris: the 10 s headers timeout) and stopping everything.
    t.timeout(240_000);
    const demo = spawnCli(t, ["demo", "--duration", "3600", "--metrics-listen", "127.0.0.1:0"]);
    await demo.waitForLine(/calling calculator/, 60_000);
    const [, registry = "", admin = ""] =
      /registry (\S+), admin http:\/\/(\S+)\/metrics/.exec(await demo.waitForLine(/admin http:/)) ?? [];
    const call = spawnCli(t, [
      "call",
      ...["echo", "Echo", '{"message":"hi"}', "--registry", registry],
      ...["--duration", "3600", "--metrics-listen", "127.0.0.1:0"],
    ]);
    const running: CliProcess[] = [demo, call];
    // Every metrics endpoint the registry lists (instances, both callers, itself) is one of ours.
    type Group = { targets: string[]; labels: Record<string, string> };
    const httpTargets = await (async () => {
      for (;;) {
        const groups = (await (await fetch(`http://${admin}/sd/prometheus`)).json()) as Group[];
        const targets = groups.flatMap((group) => group.targets);
        if (groups.filter((group) => group.labels["service"] === "leasehold-caller").length === 2) {
          return new Set(targets);
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    })();
    t.true(httpTargets.has(admin), "the registry's admin port is listed");
    t.true(
      httpTargets.size >= 8,
      `registry, 5 instances and 2 callers listed: ${[...httpTargets].join(" ")}`,
    );

    t.log(`listed: ${[...httpTargets].join(" ")}`);
    const pids = running.flatMap((cli) => processTree(cli.child.pid ?? 0));
    const ports = listeningPorts(pids);
    // etcd (client and peer), registry (gRPC and admin), 5 instances (gRPC and /metrics), 2 callers.
    t.true(
      ports.length >= 2 + 2 + 10 + 2,
      `listening ports: ${ports.map((p) => `${p.pid}:${p.port}`).join(" ")}`,
    );
    for (const target of httpTargets) {
      t.true(
        ports.some((port) => `${port.host}:${port.port}` === target),
        `${target} is held by a process of the run`,
      );
    }
    const alive = pids.filter(isAlive);
    t.true(alive.length >= 9, `demo, etcd, registry, 5 instances and the call run: ${alive.join(" ")}`);

    t.log(`ports: ${ports.map((p) => `${p.pid}:${p.host}:${p.port}`).join(" ")}`);
    await Promise.all(
      ports.map(async (target) => {
        const name = `${target.host}:${target.port}`;
        const isOurs = httpTargets.has(name);
        for (const [what, request] of hostileRequests) {
          const { answer } = await exchange(target, request);
          if (isOurs) t.regex(answer, /^HTTP\/1\.1 4\d\d /, `${name}: ${what}`);
        }
        for (const request of oddRequests) await exchange(target, request);
        const random = await exchange(target, randomBytes(1024 * 1024));
        if (isOurs) t.true(random.isClosedByServer, `${name} closes a connection of random bytes`);
        if (!isOurs) return;
        // A slowloris does not block the endpoint, and is cut off by the headers timeout.
        const slow = exchange(target, slowloris, { intervalMs: 1000, giveUpMs: 60_000 });
        await new Promise((resolve) => setTimeout(resolve, 3000));
        t.is(await getStatus(`http://${name}/metrics`), 200, `${name} serves during a slowloris`);
        const cut = await slow;
        t.true(cut.isClosedByServer, `${name} cuts the slowloris off`);
        t.regex(cut.answer, /^HTTP\/1\.1 408 /, `${name} answers the slowloris 408`);
      }),
    );

    t.log("attacks done");
    t.deepEqual(
      alive.filter((pid) => !isAlive(pid)),
      [],
      "every process is still alive",
    );
    for (const target of httpTargets) t.is(await getStatus(`http://${target}/metrics`), 200, target);
    const add = spawnCli(t, ["call", "calculator", "Add", '{"a":1,"b":2}', "--registry", registry]);
    t.is(await add.exited, 0, add.stderr);
    t.regex(add.stdout.join("\n"), /"result":3/);

    // The call run first: stopping the demo takes its echo instances away.
    call.child.kill("SIGINT");
    t.is(await call.exited, 0, `${call.stdout.slice(-30).join("\n")}\n${call.stderr.slice(-6000)}`);
    demo.child.kill("SIGINT");
    t.is(await demo.exited, 0, demo.stderr.slice(-2000));
  },
);
