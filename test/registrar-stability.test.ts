import { spawn, type ChildProcess } from "node:child_process";
import { Writable } from "node:stream";
import {
  Server,
  ServerCredentials,
  status,
  type sendUnaryData,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
} from "@grpc/grpc-js";
import test, { type ExecutionContext } from "ava";
import { Etcd3 } from "etcd3";
import { pino, type Logger } from "pino";
import { Registry } from "prom-client";
import { freePort, startLocalEtcd, type LocalEtcd } from "../cli/local-etcd.js";
import { MembershipWatcher, type MembershipChange } from "../client/discovery/membership-watcher.js";
import { Registrar, type RegistrarState } from "../client/registration/registrar.js";
import { connectRegistry } from "../client/registry-connection.js";
import {
  RegistryServiceService,
  type DeregisterResponse,
  type KeepAliveRequest,
  type KeepAliveResponse,
  type RegisterRequest,
  type RegisterResponse,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import { startRegistry, type RunningRegistry } from "../registry/index.js";
import { eventually } from "./helpers/eventually.js";

// Issue 6, item 3 (registrar side): a lease is abandoned only on NOT_FOUND; re-registration
// follows the registry's return at once; keepalives move to a live replica. Durations below are
// fault lengths (1.5 × TTL), never bounds: the assertions are about order and cause. Delays are
// measured and logged (`t.log`) for the report. Serial: each test runs its own etcd and registries,
// and the delays it logs mean something only on an otherwise quiet machine.

const TTL_SECONDS = 3;
const TTL_MS = TTL_SECONDS * 1000;

const pause = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms));

async function etcdFor(t: ExecutionContext): Promise<{ etcd: LocalEtcd; etcd3: Etcd3 }> {
  const etcd = await startLocalEtcd();
  const etcd3 = new Etcd3({ hosts: etcd.endpoint });
  t.teardown(async () => {
    etcd3.close();
    await etcd.stop();
  });
  return { etcd, etcd3 };
}

/** An in-process registry with its own metrics registry, closed by the test's teardown. */
async function registryFor(
  t: ExecutionContext,
  etcd: LocalEtcd,
  listen = "127.0.0.1:0",
): Promise<{ registry: RunningRegistry; metrics: Registry }> {
  const metrics = new Registry();
  const registry = await startRegistry({ listen, etcdEndpoints: [etcd.endpoint], metricsRegistry: metrics });
  t.teardown(async () => await registry.close());
  return { registry, metrics };
}

/** Value of one sample in Prometheus text, 0 when absent. */
function sample(text: string, series: string): number {
  const line = text.split("\n").find((candidate) => candidate.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

const REGISTERED = 'leasehold_registry_registrations_total{result="ok"}';
const RENEWALS = 'leasehold_registry_etcd_request_duration_seconds_count{op="keepalive"}';

/** A logger whose lines (their `msg` and fields) land in `lines`, in order. */
function recordingLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const text of chunk.toString("utf8").split("\n")) {
        if (text !== "") lines.push(JSON.parse(text) as Record<string, unknown>);
      }
      callback();
    },
  });
  return { logger: pino({ level: "info" }, sink), lines };
}

async function etcdState(etcd3: Etcd3): Promise<{ keys: string[]; leases: string[]; keyLease: string }> {
  const keys = await etcd3.getAll().prefix("/leasehold/").keys();
  const { leases } = await etcd3.leaseClient.leaseLeases({});
  const [first] = keys;
  const keyLease =
    first === undefined
      ? ""
      : String((await etcd3.kv.range({ key: Buffer.from(first) })).kvs[0]?.lease ?? "");
  return { keys, leases: leases.map((lease) => String(lease.ID)), keyLease };
}

function newRegistrar(
  t: ExecutionContext,
  client: ReturnType<typeof connectRegistry>,
  logger?: Logger,
): { registrar: Registrar; states: RegistrarState[] } {
  const states: RegistrarState[] = [];
  const registrar = new Registrar({
    registry: client,
    instance: { service: "echo", instanceId: "echo-1", address: "127.0.0.1:7" },
    ttlSeconds: TTL_SECONDS,
    logger,
    onStateChanged: (state) => states.push(state),
  });
  t.teardown(async () => await registrar.close());
  return { registrar, states };
}

test.serial(
  "an etcd restart longer than a TTL: the registrar turns stale, keeps its original lease, and never registers again",
  async (t) => {
    const { etcd, etcd3 } = await etcdFor(t);
    const { registry, metrics } = await registryFor(t, etcd);
    const client = connectRegistry(registry.address);
    t.teardown(() => client.close());
    const { registrar, states } = newRegistrar(t, client);
    await registrar.start();
    const originalLease = registrar.leaseId;

    // SIGKILL etcd for 1.5 × TTL, then start it again on the same data dir (it restores its leases).
    const { spawnfile, spawnargs } = etcd.process;
    etcd.process.kill("SIGKILL");
    const killedAt = Date.now();
    await eventually(() => registrar.state === "stale", { what: "the registrar stale" });
    await pause(killedAt + TTL_MS * 1.5 - Date.now());
    const restarted: ChildProcess = spawn(spawnfile, spawnargs.slice(1), { stdio: "ignore" });
    t.teardown(() => void restarted.kill("SIGKILL"));
    const restartedAt = Date.now();
    let healthyAt = 0;
    void eventually(async () => (await fetch(`${etcd.endpoint}/health`)).ok && (healthyAt = Date.now()), {
      what: "etcd healthy",
    }).catch(() => undefined); // only measured
    await eventually(() => registrar.state === "registered", { what: "keepalives answered again" });
    const answeredAt = Date.now();
    t.log(
      `keepalives answered again ${answeredAt - restartedAt} ms after etcd was started again` +
        (healthyAt > 0 ? ` (${answeredAt - healthyAt} ms after its /health first answered)` : ""),
    );

    t.is(registrar.leaseId, originalLease, "the original lease is kept");
    t.deepEqual(states, ["registering", "registered", "stale", "registered"]);
    t.is(sample(await metrics.metrics(), REGISTERED), 1, "one Register only");
    t.deepEqual(await etcdState(etcd3), {
      keys: ["/leasehold/v1/services/echo/echo-1"],
      leases: [originalLease],
      keyLease: originalLease,
    });
  },
);

test.serial(
  "etcd SIGSTOPped for 1.5 × TTL: the registrar stays on its lease until etcd answers NOT_FOUND, then registers once, leaving one key and one lease",
  async (t) => {
    const { etcd, etcd3 } = await etcdFor(t);
    const { registry, metrics } = await registryFor(t, etcd);
    const client = connectRegistry(registry.address);
    t.teardown(() => client.close());
    const { logger, lines } = recordingLogger();
    const { registrar, states } = newRegistrar(t, client, logger);
    await registrar.start();
    const originalLease = registrar.leaseId;

    etcd.process.kill("SIGSTOP");
    const stoppedAt = Date.now();
    t.teardown(() => void etcd.process.kill("SIGCONT"));
    await eventually(() => registrar.state === "stale", { what: "the registrar stale" });
    await pause(stoppedAt + TTL_MS * 1.5 - Date.now());
    t.is(registrar.leaseId, originalLease, "still on the original lease while etcd is away");
    etcd.process.kill("SIGCONT");
    const resumedAt = Date.now();
    // etcd's own clock ran on while it was stopped: it expires the lease on resume (an expired
    // lease's renewal waits for its revocation), so the registry answers NOT_FOUND.
    const newLease = await eventually(
      () => registrar.state === "registered" && registrar.leaseId !== originalLease && registrar.leaseId,
      { what: "a new lease" },
    );
    t.log(`registered again ${Date.now() - resumedAt} ms after SIGCONT`);

    t.deepEqual(states, ["registering", "registered", "stale", "registering", "registered"]);
    const messages = lines.map((line) => line["msg"]);
    t.deepEqual(messages.slice(messages.indexOf("registered") + 1), [
      "no keepalive answered for a whole TTL (registry or etcd away); keeping the lease and retrying",
      "lease lost; registering again",
      "registered",
    ]);
    t.regex(
      String(lines.find((line) => line["msg"] === "lease lost; registering again")?.["reason"]),
      /not found/,
    );
    t.is(sample(await metrics.metrics(), REGISTERED), 2, "exactly one Register after the loss");
    t.deepEqual(await etcdState(etcd3), {
      keys: ["/leasehold/v1/services/echo/echo-1"],
      leases: [newLease],
      keyLease: newLease,
    });
  },
);

test.serial(
  "the only registry restarted on its port after its lease expired: the registrar registers again once it answers",
  async (t) => {
    const { etcd, etcd3 } = await etcdFor(t);
    const port = await freePort();
    const first = await registryFor(t, etcd, `127.0.0.1:${port}`);
    const client = connectRegistry(first.registry.address);
    t.teardown(() => client.close());
    const { registrar, states } = newRegistrar(t, client);
    await registrar.start();
    const originalLease = registrar.leaseId;

    await first.registry.close();
    await eventually(() => registrar.state === "stale", { what: "the registrar stale" });
    await eventually(async () => (await etcdState(etcd3)).keys.length === 0, {
      what: "the lease expired in etcd",
    });
    t.is(registrar.leaseId, originalLease, "no Register while no registry answers");
    const second = await registryFor(t, etcd, `127.0.0.1:${port}`);
    const answeringAt = Date.now();
    const newLease = await eventually(
      () => registrar.state === "registered" && registrar.leaseId !== originalLease && registrar.leaseId,
      { what: "a new lease" },
    );
    t.log(`registered again ${Date.now() - answeringAt} ms after the registry was back`);

    t.deepEqual(states, ["registering", "registered", "stale", "registering", "registered"]);
    t.is(sample(await second.metrics.metrics(), REGISTERED), 1, "one Register reached the new registry");
    t.deepEqual(await etcdState(etcd3), {
      keys: ["/leasehold/v1/services/echo/echo-1"],
      leases: [newLease],
      keyLease: newLease,
    });
  },
);

/** A registry in its own process (so it can be SIGKILLed), with an admin port for /metrics. */
async function spawnRegistry(
  t: ExecutionContext,
  etcd: LocalEtcd,
): Promise<{ child: ChildProcess; address: string; metrics: () => Promise<string> }> {
  const [port, adminPort] = [await freePort(), await freePort()];
  const code = `import { startRegistry } from "./registry/index.ts";
const registry = await startRegistry(${JSON.stringify({
    listen: `127.0.0.1:${port}`,
    adminListen: `127.0.0.1:${adminPort}`,
    etcdEndpoints: [etcd.endpoint],
  })});
console.log("ready");
process.on("SIGTERM", () => void registry.close());`;
  const child = spawn(process.execPath, ["--import=tsx", "--input-type=module", "-e", code], {
    cwd: new URL("..", import.meta.url),
    stdio: ["ignore", "pipe", "inherit"],
  });
  t.teardown(() => void child.kill("SIGKILL"));
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on("data", (chunk: Buffer) => (chunk.toString().includes("ready") ? resolve() : undefined));
    child.once("exit", (code) => reject(new Error(`registry exited with ${code}`)));
  });
  const metrics = async (): Promise<string> =>
    await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  return { child, address: `localhost:${port}`, metrics };
}

test.serial(
  "two registries by hostname, the one holding the keepalive stream SIGKILLed: keepalives move to the other, no lease is lost",
  async (t) => {
    const { etcd, etcd3 } = await etcdFor(t);
    const replicas = [await spawnRegistry(t, etcd), await spawnRegistry(t, etcd)];
    const client = connectRegistry(replicas.map((replica) => replica.address).join(","));
    t.teardown(() => client.close());
    const watcherClient = connectRegistry(replicas.map((replica) => replica.address).join(","));
    t.teardown(() => watcherClient.close());
    const watcher = new MembershipWatcher({ registry: watcherClient, service: "echo" });
    t.teardown(async () => await watcher.close());
    watcher.start();
    await watcher.ready();
    const removals: MembershipChange[] = [];
    watcher.subscribe((_, changes) =>
      removals.push(...changes.filter((change) => change.type === "removed")),
    );

    const { registrar, states } = newRegistrar(t, client);
    await registrar.start();
    const originalLease = registrar.leaseId;
    await eventually(() => watcher.current().instances.length === 1, { what: "the instance listed" });
    const renewals = async (): Promise<number[]> =>
      await Promise.all(replicas.map(async (replica) => sample(await replica.metrics(), RENEWALS)));
    const holder = await eventually(async () => {
      const counts = await renewals();
      return counts.some((count) => count > 0) && counts.findIndex((count) => count > 0);
    });
    const [killed, survivor] = holder === 0 ? [replicas[0], replicas[1]] : [replicas[1], replicas[0]];
    if (killed === undefined || survivor === undefined) throw new Error("two replicas expected");
    const survivorBefore = sample(await survivor.metrics(), RENEWALS);

    killed.child.kill("SIGKILL");
    const killedAt = Date.now();
    await eventually(async () => sample(await survivor.metrics(), RENEWALS) > survivorBefore, {
      intervalMs: 10,
      what: "a keepalive answered by the other replica",
    });
    t.log(`keepalives moved to the other replica ${Date.now() - killedAt} ms after the SIGKILL`);
    await pause(2 * TTL_MS); // two TTLs on the survivor alone: a lease loss would show
    const survivorAfter = sample(await survivor.metrics(), RENEWALS);
    t.true(
      survivorAfter >= survivorBefore + 3,
      `the survivor kept answering (${survivorBefore} → ${survivorAfter})`,
    );

    t.is(registrar.leaseId, originalLease, "the original lease held throughout");
    t.deepEqual(states, ["registering", "registered"], "never stale, never registering again");
    t.deepEqual(removals, [], "callers never saw the instance leave");
    t.deepEqual((await etcdState(etcd3)).leases, [originalLease]);
  },
);

test.serial(
  "Registers abandoned at their deadline while etcd is stopped never block the registrar: no ALREADY_EXISTS, one key and one lease after",
  async (t) => {
    const { etcd, etcd3 } = await etcdFor(t);
    const { registry } = await registryFor(t, etcd);
    const client = connectRegistry(registry.address);
    t.teardown(() => client.close());
    const { logger, lines } = recordingLogger();
    const registrar = new Registrar({
      registry: client,
      instance: { service: "echo", instanceId: "echo-1", address: "127.0.0.1:7" },
      ttlSeconds: TTL_SECONDS,
      callTimeoutMs: 300,
      logger,
    });
    t.teardown(async () => await registrar.close());

    etcd.process.kill("SIGSTOP");
    t.teardown(() => void etcd.process.kill("SIGCONT"));
    const starting = registrar.start();
    // Several attempts reach the registry and are abandoned at their 300 ms deadline; their etcd
    // requests wait in etcd's socket and run when it resumes.
    await eventually(() => lines.filter((line) => line["msg"] === "register failed; retrying").length >= 3, {
      what: "three abandoned Registers",
    });
    etcd.process.kill("SIGCONT");
    await starting;

    const codes = lines
      .filter((line) => line["msg"] === "register failed; retrying")
      .map((line) => (line["err"] as { code?: number } | undefined)?.code);
    t.false(codes.includes(6), `no ALREADY_EXISTS among the failed attempts (${codes.join(", ")})`);
    const leaseId = registrar.leaseId ?? "";
    await eventually(
      async () => {
        const state = await etcdState(etcd3);
        return state.keys.length === 1 && state.leases.length === 1 && state.leases[0] === leaseId && state;
      },
      { what: "one key on the registrar's lease, and no other lease" },
    );
    t.is((await etcdState(etcd3)).keyLease, leaseId);
  },
);

test.serial(
  "every Register retry of one registration carries the same random registration id; a new start() picks a new one",
  async (t) => {
    // A registry whose first Register never answers (the registrar abandons it at its deadline).
    const requests: RegisterRequest[] = [];
    const server = new Server();
    const unimplemented = (_call: unknown, callback: (error: Partial<ServiceError>) => void): void =>
      callback({ code: status.UNIMPLEMENTED });
    server.addService(RegistryServiceService, {
      register: (
        call: ServerUnaryCall<RegisterRequest, RegisterResponse>,
        callback: sendUnaryData<RegisterResponse>,
      ) => {
        requests.push(call.request);
        if (requests.length === 1) return; // abandoned by the caller at its deadline
        callback(null, {
          leaseId: String(requests.length),
          ttlSeconds: "3",
          revision: "1",
          instance: undefined,
          registrationToken: `token-${requests.length}`,
        });
      },
      keepAlive: (call: ServerDuplexStream<KeepAliveRequest, KeepAliveResponse>) =>
        call.on("data", (request: KeepAliveRequest) =>
          call.write({ leaseId: request.leaseId, ttlSeconds: "3" }),
        ),
      deregister: (_call: unknown, callback: sendUnaryData<DeregisterResponse>) =>
        callback(null, { revision: "1" }),
      updateInstance: unimplemented,
      getService: unimplemented,
      listServices: unimplemented,
      watch: (call: ServerWritableStream<unknown, unknown>) =>
        call.emit("error", { code: status.UNIMPLEMENTED }),
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
        error === null ? resolve(bound) : reject(error),
      ),
    );
    t.teardown(() => server.forceShutdown());
    const client = connectRegistry(`127.0.0.1:${port}`);
    t.teardown(() => client.close());
    const registrar = new Registrar({
      registry: client,
      instance: { service: "echo", instanceId: "echo-1", address: "127.0.0.1:7" },
      callTimeoutMs: 500,
    });
    t.teardown(async () => await registrar.close());

    await registrar.start();
    const first = requests.splice(0).map((request) => request.registrationId);
    await registrar.stop();
    await registrar.start();
    const second = requests.splice(0).map((request) => request.registrationId);
    t.true(first.length >= 2, "the first Register was abandoned and retried");
    t.regex(first[0] ?? "", /^[0-9a-f]{32}$/);
    t.deepEqual(new Set(first), new Set([first[0]]), "every retry carries the same id");
    t.true(second.length >= 2);
    t.regex(second[0] ?? "", /^[0-9a-f]{32}$/);
    t.deepEqual(new Set(second), new Set([second[0]]));
    t.not(second[0], first[0], "a new registration, a new id");
  },
);

test.serial(
  "two registries, the one holding the keepalive stream frozen (SIGSTOP): the unanswered stream moves to the other, no lease is lost",
  async (t) => {
    const { etcd, etcd3 } = await etcdFor(t);
    const replicas = [await spawnRegistry(t, etcd), await spawnRegistry(t, etcd)];
    const client = connectRegistry(replicas.map((replica) => replica.address).join(","));
    t.teardown(() => client.close());
    const { registrar, states } = newRegistrar(t, client);
    await registrar.start();
    const originalLease = registrar.leaseId;
    const holder = await eventually(async () => {
      const counts = await Promise.all(
        replicas.map(async (replica) => sample(await replica.metrics(), RENEWALS)),
      );
      return counts.some((count) => count > 0) && counts.findIndex((count) => count > 0);
    });
    const [frozen, survivor] = holder === 0 ? [replicas[0], replicas[1]] : [replicas[1], replicas[0]];
    if (frozen === undefined || survivor === undefined) throw new Error("two replicas expected");
    const survivorBefore = sample(await survivor.metrics(), RENEWALS);

    frozen.child.kill("SIGSTOP");
    t.teardown(() => void frozen.child.kill("SIGCONT"));
    const frozenAt = Date.now();
    await eventually(async () => sample(await survivor.metrics(), RENEWALS) > survivorBefore, {
      intervalMs: 10,
      what: "a keepalive answered by the other replica",
    });
    t.log(
      `keepalives moved to the other replica ${Date.now() - frozenAt} ms after the SIGSTOP (TTL/3 = ${TTL_MS / 3} ms)`,
    );
    await pause(2 * TTL_MS);

    t.is(registrar.leaseId, originalLease, "the original lease held throughout");
    t.deepEqual(states, ["registering", "registered"], "never stale, never registering again");
    t.deepEqual((await etcdState(etcd3)).leases, [originalLease]);
  },
);
