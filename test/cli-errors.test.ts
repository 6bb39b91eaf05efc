import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import test, { type ExecutionContext } from "ava";
import { freePort } from "../cli/local-etcd.js";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { healthStatus } from "./helpers/grpc-probes.js";
import { startFixtureFor } from "./helpers/registry-fixture.js";

/** Runs `leasehold ...args` to its end; returns its exit status, stdout and stderr. */
async function run(t: ExecutionContext, args: readonly string[]) {
  const cli = spawnCli(t, args);
  const code = await cli.exited;
  return { code, stdout: cli.stdout.join("\n").trim(), stderr: cli.stderr.trim() };
}

/** One line, no stack trace, no JSON log lines. */
function assertOneLine(t: ExecutionContext, stderr: string, what: string): void {
  t.is(stderr.split("\n").length, 1, `one line from ${what}: ${stderr}`);
  t.notRegex(stderr, /\n\s+at |^\{/, `no stack or log line from ${what}`);
}

/** A grpc-js server with no services at all: it answers every call UNIMPLEMENTED. */
async function startBareServer(t: ExecutionContext, credentials = ServerCredentials.createInsecure()) {
  const server = new Server();
  t.teardown(() => server.forceShutdown());
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", credentials, (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  return `127.0.0.1:${port}`;
}

for (const command of ["list", "watch", "register"]) {
  const extra = command === "register" ? ["--service=svc", "--address=127.0.0.1:5000"] : [];

  test(`${command} against a closed port: one line naming the address and "connection refused", exit 1`, async (t) => {
    const address = `127.0.0.1:${await freePort()}`;
    const result = await run(t, [command, ...extra, `--registry=${address}`]);
    t.is(result.code, 1);
    assertOneLine(t, result.stderr, command);
    t.true(result.stderr.includes(address), result.stderr);
    t.regex(result.stderr, /connection refused/);
    t.is(result.stdout, "");
  });

  test(`${command} against a port that answers UNIMPLEMENTED: "not a Leasehold registry", exit 1`, async (t) => {
    const address = await startBareServer(t);
    const result = await run(t, [command, ...extra, `--registry=${address}`]);
    t.is(result.code, 1);
    assertOneLine(t, result.stderr, command);
    t.true(result.stderr.includes(address), result.stderr);
    t.regex(result.stderr, /not a Leasehold registry/);
  });
}

test("list against a TLS port: one line saying TLS mismatch", async (t) => {
  const directory = await mkdtemp(join(tmpdir(), "leasehold-tls-"));
  t.teardown(async () => await rm(directory, { recursive: true, force: true }));
  const [key, cert] = [join(directory, "key.pem"), join(directory, "cert.pem")];
  const openssl = spawnSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
    ],
    { stdio: "ignore" },
  );
  if (openssl.status !== 0) {
    t.log("openssl is not available: no certificate to test a TLS port with");
    t.pass();
    return;
  }
  const address = await startBareServer(
    t,
    ServerCredentials.createSsl(null, [
      { private_key: await readFile(key), cert_chain: await readFile(cert) },
    ]),
  );
  const result = await run(t, ["list", `--registry=${address}`]);
  t.is(result.code, 1);
  assertOneLine(t, result.stderr, "list");
  t.true(result.stderr.includes(address), result.stderr);
  t.regex(result.stderr, /TLS mismatch/);
});

test("registry --etcd with nothing there: one line naming etcd and the URL, exit 1", async (t) => {
  const url = `http://127.0.0.1:${await freePort()}`;
  const result = await run(t, [
    "registry",
    `--etcd=${url}`,
    `--listen=127.0.0.1:${await freePort()}`,
    `--admin-listen=127.0.0.1:${await freePort()}`,
  ]);
  t.is(result.code, 1);
  assertOneLine(t, result.stderr, "registry");
  t.regex(result.stderr, /etcd/);
  t.true(result.stderr.includes(url), result.stderr);
  t.regex(result.stderr, /connection refused/);
});

test("list against a registry whose etcd is down: one line naming the address and etcd, exit 1", async (t) => {
  const { etcd, registry } = await startFixtureFor(t);
  await etcd.stop();
  await eventually(async () => (await healthStatus(registry.address)) === "NOT_SERVING", {
    what: "the registry's health NOT_SERVING without etcd",
  });
  const result = await run(t, ["list", `--registry=${registry.address}`]);
  t.is(result.code, 1);
  assertOneLine(t, result.stderr, "list");
  t.true(result.stderr.includes(registry.address), result.stderr);
  t.regex(result.stderr, /etcd is unreachable/);
});
