import { Client, credentials, Metadata, Server, status } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { pino } from "pino";
import anyTest, { type TestFn } from "ava";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createBalancedClient } from "../client/balancing/balanced-client.js";
import { connectRegistry } from "../client/registry-connection.js";
import { channelCredentials, serverCredentials, type TlsFiles } from "../client/tls/tls-files.js";
import { generateCa, writeCertificate, type ThrowawayCa } from "../cli/demo/throwaway-pki.js";
import { startLocalEtcd, type LocalEtcd } from "../cli/local-etcd.js";
import {
  EchoServiceClient,
  EchoServiceService,
  type EchoResponse,
} from "../proto/gen/leasehold/demo/v1/echo.js";
import { registerLeasehold } from "../client/leasehold.js";
import { RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";
import { fetchMetricsOverHttps } from "../registry/console/metrics-fetch.js";
import { startRegistry, type RunningRegistry } from "../registry/index.js";
import { calculator } from "../services/calculator.js";
import { echo } from "../services/echo.js";
import { startServiceInstance } from "../services/service-host.js";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { failure, registration, rpc } from "./helpers/registry-fixture.js";

interface Context {
  dir: string;
  etcd: LocalEtcd;
  registry: RunningRegistry;
  /** CA A, to issue more certificates. */
  ca: ThrowawayCa;
  /** CA A: the registry's server certificate (localhost, 127.0.0.1). */
  server: Required<TlsFiles>;
  /** CA A: a client whose SAN `alice` the policy names. */
  alice: Required<TlsFiles>;
  /** CA A: a client whose SAN no policy names. */
  stranger: Required<TlsFiles>;
  /** CA B: a client certificate from another CA (trusting CA A for the server). */
  mallory: TlsFiles;
}

const test = anyTest as TestFn<Context>;

test.before(async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "leasehold-tls-"));
  const ca = await generateCa("test CA A");
  const other = await generateCa("test CA B");
  const server = await writeCertificate(dir, "server", ca, { dns: ["localhost"], ips: ["127.0.0.1"] });
  const alice = await writeCertificate(dir, "alice", ca, { dns: ["alice"] });
  const stranger = await writeCertificate(dir, "stranger", ca, { dns: ["stranger"] });
  await mkdir(join(dir, "other"));
  const malloryFiles = await writeCertificate(join(dir, "other"), "mallory", other, { dns: ["alice"] });
  const mallory = { ...malloryFiles, caFile: server.caFile };
  const policyFile = join(dir, "policy.json");
  await writeFile(policyFile, JSON.stringify({ principals: { alice: { services: ["*"], read: true } } }));
  // etcd over TLS with client certificates; the registry presents its own certificate to it.
  const etcd = await startLocalEtcd({ tls: server });
  try {
    const registry = await startRegistry({
      listen: "127.0.0.1:0",
      adminListen: "127.0.0.1:0",
      etcdEndpoints: [etcd.endpoint],
      tls: server,
      etcdTls: server,
      authPolicyFile: policyFile,
    });
    t.context = { dir, ca, etcd, registry, server, alice, stranger, mallory };
  } catch (error) {
    await etcd.stop();
    throw error;
  }
});

test.after.always(async (t) => {
  await t.context.registry?.close();
  await t.context.etcd?.stop();
  if (t.context.dir !== undefined) await rm(t.context.dir, { recursive: true, force: true });
});

test("the registry's etcd endpoint is https with client certificates", (t) => {
  t.regex(t.context.etcd.endpoint, /^https:\/\//);
});

test("a plaintext client is refused by a TLS registry", async (t) => {
  const client = new RegistryServiceClient(t.context.registry.address, credentials.createInsecure());
  t.teardown(() => client.close());
  const error = await failure(rpc(client).listServices({}));
  t.is(error.code, status.UNAVAILABLE);
});

test("a client certificate from another CA is refused by an mTLS registry", async (t) => {
  const client = connectRegistry(t.context.registry.address, {}, { tls: t.context.mallory });
  t.teardown(() => client.close());
  const error = await failure(rpc(client).listServices({}));
  t.is(error.code, status.UNAVAILABLE);
});

test("an mTLS client whose SAN the policy names registers; one whose SAN it does not name is UNAUTHENTICATED", async (t) => {
  const alice = connectRegistry(t.context.registry.address, {}, { tls: t.context.alice });
  const stranger = connectRegistry(t.context.registry.address, {}, { tls: t.context.stranger });
  t.teardown(() => [alice, stranger].forEach((client) => client.close()));
  const registered = await rpc(alice).register(registration({ service: "tls-svc", instanceId: "a-1" }));
  t.regex(registered.leaseId, /^\d+$/);
  const refused = await failure(
    rpc(stranger).register(registration({ service: "tls-svc", instanceId: "s-1" })),
  );
  t.is(refused.code, status.UNAUTHENTICATED);
  await rpc(alice).deregister({
    service: "tls-svc",
    instanceId: "a-1",
    leaseId: registered.leaseId,
    registrationToken: registered.registrationToken,
  });
});

test("the admin endpoint serves HTTPS and requires a client certificate", async (t) => {
  const { registry, alice } = t.context;
  const get = (tls: TlsFiles & { caFile: string }) =>
    new Promise<number>((resolve, reject) => {
      const request = httpsRequest(
        `https://${registry.adminAddress ?? ""}/healthz`,
        {
          ca: [readFileSync(tls.caFile)],
          ...(tls.certFile === undefined
            ? {}
            : { cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile ?? tls.certFile) }),
        },
        (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        },
      );
      request.on("error", reject);
      request.end();
    });
  t.is(await get(alice), 200);
  await t.throwsAsync(get({ caFile: alice.caFile }));
});

test("the HTTP API on the HTTPS admin port takes the principal from the client certificate's SAN: alice registers, a stranger is 401", async (t) => {
  const { registry, alice, stranger } = t.context;
  const post = (tls: Required<TlsFiles>, method: string, body: unknown) =>
    new Promise<{ status: number; json: Record<string, unknown> }>((resolve, reject) => {
      const request = httpsRequest(
        `https://${registry.adminAddress ?? ""}/leasehold.registry.v1.RegistryService/${method}`,
        {
          method: "POST",
          headers: { "content-type": "application/json" },
          ca: [readFileSync(tls.caFile)],
          cert: readFileSync(tls.certFile),
          key: readFileSync(tls.keyFile),
        },
        (response) => {
          let text = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => (text += chunk));
          response.on("end", () =>
            resolve({ status: response.statusCode ?? 0, json: JSON.parse(text) as Record<string, unknown> }),
          );
        },
      );
      request.on("error", reject);
      request.end(JSON.stringify(body));
    });
  const instance = { service: "https-api", instanceId: "h-1", address: "127.0.0.1:9401", ttlSeconds: "10" };
  const refused = await post(stranger, "Register", instance);
  t.is(refused.status, 401, JSON.stringify(refused.json));
  t.is(refused.json["code"], "unauthenticated");
  const registered = await post(alice, "Register", instance);
  t.is(registered.status, 200, JSON.stringify(registered.json));
  const fence = {
    leaseId: registered.json["leaseId"],
    registrationToken: registered.json["registrationToken"],
  };
  // The stored owner is alice's SAN: her gRPC client (same certificate) may deregister it.
  const grpcAlice = connectRegistry(registry.address, {}, { tls: alice });
  t.teardown(() => grpcAlice.close());
  await rpc(grpcAlice).deregister({
    service: "https-api",
    instanceId: "h-1",
    ...(fence as { leaseId: string; registrationToken: string }),
  });
  t.deepEqual((await rpc(grpcAlice).getService({ service: "https-api" })).instances, []);
});

test("a TLS registrar, a TLS balanced client and a stock grpc-js leasehold:/// client call an mTLS instance end to end", async (t) => {
  const { registry, alice, dir, server } = t.context;
  // A leasehold:/// channel verifies an instance against the service name (the channel's
  // authority), so the instance's certificate names the service; its SAN alice is its principal.
  const instanceTls = await writeCertificate(dir, "echo-instance", t.context.ca, { dns: ["echo", "alice"] });
  const instance = await startServiceInstance(echo, {
    registry: registry.address,
    instanceId: "echo-tls-1",
    listen: "127.0.0.1:0",
    ttlSeconds: 5,
    drainMs: 0,
    tls: instanceTls,
    registrySecurity: { tls: instanceTls },
  });
  t.teardown(async () => await instance.shutdown());
  const client = createBalancedClient(EchoServiceService, {
    service: "echo",
    registry: registry.address,
    registrySecurity: { tls: alice },
    credentials: channelCredentials(alice),
  });
  t.teardown(async () => await client.close());
  client.start();
  const response = await client.methods.echo({ message: "over tls" });
  t.is(response.instanceId, "echo-tls-1");
  t.is(response.message, "over tls");

  // A stock grpc-js client on leasehold:///echo, its registry Watch secured by registerLeasehold.
  registerLeasehold({ registry: registry.address, registrySecurity: { tls: alice } });
  const stock = new EchoServiceClient("leasehold:///echo", channelCredentials(alice));
  t.teardown(() => stock.close());
  const stockResponse = await new Promise<EchoResponse>((resolve, reject) =>
    stock.echo(
      { message: "stock over tls" },
      new Metadata(),
      { deadline: Date.now() + 10_000 },
      (error, value) => (error === null ? resolve(value) : reject(error)),
    ),
  );
  t.is(stockResponse.instanceId, "echo-tls-1");

  // The instance's /metrics is HTTPS with client certificates; the registry's console reads it so.
  const metricsText = await fetchMetricsOverHttps(server)(
    instance.metricsAddress,
    "echo",
    AbortSignal.timeout(5000),
  );
  t.regex(metricsText, /grpc_server_handled_total\{[^}]*grpc_method="Echo"/);
  await t.throwsAsync(fetch(`http://${instance.metricsAddress}/metrics`), undefined, "no plaintext /metrics");
});

test("a server's replaced certificate files are served to new connections without a restart", async (t) => {
  const { dir } = t.context;
  const reloadDir = join(dir, "reload");
  await mkdir(reloadDir);
  const [first, second] = [await generateCa("reload CA 1"), await generateCa("reload CA 2")];
  const served = await writeCertificate(reloadDir, "server", first, {
    dns: ["localhost"],
    ips: ["127.0.0.1"],
  });
  const server = new Server();
  new HealthImplementation({ "": "SERVING" }).addToServer(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      serverCredentials({ certFile: served.certFile, keyFile: served.keyFile }, 100),
      (error, bound) => (error === null ? resolve(bound) : reject(error)),
    ),
  );
  t.teardown(() => server.forceShutdown());
  const check = async (caPem: string): Promise<status> => {
    const caFile = join(reloadDir, `trust-${Math.random()}.pem`);
    await writeFile(caFile, caPem);
    const client = new Client(`127.0.0.1:${port}`, channelCredentials({ caFile }));
    try {
      return await new Promise<status>((resolve) =>
        client.makeUnaryRequest(
          "/grpc.health.v1.Health/Check",
          (value: Buffer) => value,
          (value: Buffer) => value,
          Buffer.alloc(0),
          new Metadata(),
          { deadline: Date.now() + 2000 },
          (error) => resolve(error === null ? status.OK : (error.code ?? status.UNKNOWN)),
        ),
      );
    } finally {
      client.close();
    }
  };
  t.is(await check(first.cert), status.OK, "CA 1 verifies the first certificate");
  t.is(await check(second.cert), status.UNAVAILABLE, "CA 2 does not, yet");
  // Replace the files in place, as a certificate renewal does.
  await writeCertificate(reloadDir, "server", second, { dns: ["localhost"], ips: ["127.0.0.1"] });
  await eventually(async () => (await check(second.cert)) === status.OK, {
    what: "the renewed certificate is served",
    timeoutMs: 10_000,
  });
  t.pass();
});

test("a registry listening beyond loopback without TLS and auth logs one warning", async (t) => {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino(
    { level: "info" },
    { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) },
  );
  const etcd = await startLocalEtcd();
  t.teardown(async () => await etcd.stop());
  const open = await startRegistry({ listen: "0.0.0.0:0", etcdEndpoints: [etcd.endpoint], logger });
  await open.close();
  const warnings = lines.filter((line) => line.level === 40 && /beyond loopback/.test(line.msg));
  t.is(warnings.length, 1);
  lines.length = 0;
  const loopback = await startRegistry({ listen: "127.0.0.1:0", etcdEndpoints: [etcd.endpoint], logger });
  await loopback.close();
  t.is(lines.filter((line) => /beyond loopback/.test(line.msg)).length, 0, "none on loopback");
});

test("CLI list and call take --tls-* (flags or env); without them list names the TLS mismatch and exits 1", async (t) => {
  const { registry, alice, dir } = t.context;
  const instanceTls = await writeCertificate(dir, "calc-instance", t.context.ca, {
    dns: ["calculator", "alice"],
  });
  const instance = await startServiceInstance(calculator, {
    registry: registry.address,
    instanceId: "calc-tls-1",
    listen: "127.0.0.1:0",
    ttlSeconds: 5,
    drainMs: 0,
    tls: instanceTls,
    registrySecurity: { tls: instanceTls },
  });
  t.teardown(async () => await instance.shutdown());
  const tlsFlags = [`--tls-cert=${alice.certFile}`, `--tls-key=${alice.keyFile}`, `--tls-ca=${alice.caFile}`];
  const list = spawnCli(t, ["list", "calculator", `--registry=${registry.address}`, ...tlsFlags]);
  t.is(await list.exited, 0, list.stderr);
  t.regex(list.stdout.join("\n"), /calc-tls-1/);
  const call = spawnCli(t, ["call", "calculator", "Add", '{"a":2,"b":3}', `--registry=${registry.address}`], {
    LEASEHOLD_TLS_CERT: alice.certFile,
    LEASEHOLD_TLS_KEY: alice.keyFile,
    LEASEHOLD_TLS_CA: alice.caFile,
  });
  t.is(await call.exited, 0, call.stderr);
  t.regex(call.stdout.join("\n"), /5/);
  const plain = spawnCli(t, ["list", `--registry=${registry.address}`]);
  t.is(await plain.exited, 1);
  t.regex(plain.stderr, /TLS mismatch.*--tls-ca/);
});

test("a missing TLS file or a malformed policy is one line on stderr and exit status 2", async (t) => {
  const { dir } = t.context;
  const missing = spawnCli(t, [
    "registry",
    "--listen=127.0.0.1:0",
    "--tls-cert=/nonexistent.pem",
    "--tls-key=/nonexistent-key.pem",
  ]);
  t.is(await missing.exited, 2);
  t.is(missing.stderr.trim(), "leasehold: --tls-cert /nonexistent.pem: ENOENT");
  const badPolicy = join(dir, "bad-policy.json");
  await writeFile(badPolicy, JSON.stringify({ principals: { a: { services: "calculator" } } }));
  const policy = spawnCli(t, ["registry", "--listen=127.0.0.1:0", `--auth-policy=${badPolicy}`]);
  t.is(await policy.exited, 2);
  t.regex(
    policy.stderr.trim(),
    /^leasehold: \S+bad-policy\.json: principals\.a\.services must be a list of service names$/,
  );
  const list = spawnCli(t, ["list", "--registry=127.0.0.1:1", "--token-file=/nonexistent-token"]);
  t.is(await list.exited, 2);
  t.is(list.stderr.trim(), "leasehold: --token-file /nonexistent-token: ENOENT");
});
