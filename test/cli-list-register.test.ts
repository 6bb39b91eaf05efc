import { readFileSync } from "node:fs";
import { Server, ServerCredentials, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { createBalancedClient } from "../client/balancing/balanced-client.js";
import { EchoServiceService, type EchoRequest } from "../proto/gen/leasehold/demo/v1/echo.js";
import { InstanceStatus, type Instance } from "../proto/gen/leasehold/registry/v1/registry.js";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { registration, rpc, testWithSharedFixture, WatchRecorder } from "./helpers/registry-fixture.js";

const test = testWithSharedFixture();

/** A plain grpc-js server, as any non-Leasehold process would be: health, plus Echo counting its calls. */
async function startPlainServer(initialHealth: "SERVING" | "NOT_SERVING" = "SERVING") {
  const health = new HealthImplementation({ "": initialHealth });
  const server = new Server();
  health.addToServer(server);
  let calls = 0;
  const echo: UntypedServiceImplementation = {
    echo: (
      call: { request: EchoRequest },
      callback: (error: null, response: { message: string; instanceId: string; headers: object }) => void,
    ) => {
      calls += 1;
      callback(null, { message: call.request.message, instanceId: "plain", headers: {} });
    },
  };
  server.addService(EchoServiceService, echo);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  return { address: `127.0.0.1:${port}`, health, calls: () => calls, close: () => server.forceShutdown() };
}

/** The instances of `service` the registry lists now. */
async function instancesOf(client: Parameters<typeof rpc>[0], service: string): Promise<readonly Instance[]> {
  return (await rpc(client).getService({ service })).instances;
}

test("list --json exits 0 with every service and its counts; list SERVICE --json with its instances", async (t) => {
  const { client } = t.context;
  const api = rpc(client);
  await api.register(registration({ service: "alpha", instanceId: "a-1", ttlSeconds: "30", weight: 3 }));
  await api.register(
    registration({
      service: "alpha",
      instanceId: "a-2",
      ttlSeconds: "30",
      metadata: { version: "1.2" },
      status: InstanceStatus.INSTANCE_STATUS_DRAINING,
    }),
  );
  await api.register(registration({ service: "beta", instanceId: "b-1", ttlSeconds: "30" }));
  const address = t.context.registry.address;

  const all = spawnCli(t, ["list", `--registry=${address}`, "--json"]);
  t.is(await all.exited, 0, all.stderr);
  const listed = JSON.parse(all.stdout.join("\n")) as {
    revision: number;
    services: { service: string; instances: number; serving: number; draining: number }[];
  };
  t.true(Number.isInteger(listed.revision) && listed.revision > 0);
  t.deepEqual(
    listed.services.find((summary) => summary.service === "alpha"),
    { service: "alpha", instances: 2, serving: 1, draining: 1 },
  );
  t.deepEqual(
    listed.services.find((summary) => summary.service === "beta"),
    { service: "beta", instances: 1, serving: 1, draining: 0 },
  );

  const alpha = spawnCli(t, ["list", "alpha", `--registry=${address}`, "--json"]);
  t.is(await alpha.exited, 0, alpha.stderr);
  const instances = (
    JSON.parse(alpha.stdout.join("\n")) as {
      service: string;
      instances: { instance_id: string; weight: number; status: string; metadata: object }[];
    }
  ).instances;
  t.deepEqual(
    instances.map((instance) => [instance.instance_id, instance.weight, instance.status, instance.metadata]),
    [
      ["a-1", 3, "SERVING", {}],
      ["a-2", 1, "DRAINING", { version: "1.2" }],
    ],
  );

  const table = spawnCli(t, ["list", "alpha", `--registry=${address}`]);
  t.is(await table.exited, 0, table.stderr);
  const text = table.stdout.join("\n");
  t.regex(text, /a-1.*127\.0\.0\.1:9000.*3.*SERVING/);
  t.regex(text, /a-2.*DRAINING.*version=1\.2/);
  t.regex(text, /alpha: 2 instance\(s\) at revision \d+/);
});

test("list of a service with no instances is an empty list and exit 0, as etcdctl and Consul answer", async (t) => {
  const list = spawnCli(t, ["list", "nobody-here", `--registry=${t.context.registry.address}`, "--json"]);
  t.is(await list.exited, 0, list.stderr);
  t.like(JSON.parse(list.stdout.join("\n")), { service: "nobody-here", instances: [] });
});

for (const command of ["list", "watch"]) {
  test(`${command} of an invalid service name is refused with one line naming the rule, exit 2`, async (t) => {
    const run = spawnCli(t, [command, "Not_A_Label", `--registry=${t.context.registry.address}`]);
    t.is(await run.exited, 2, run.stderr);
    t.is(run.stderr.trim().split("\n").length, 1, run.stderr);
    t.regex(run.stderr, /^leasehold: .*DNS-1123/);
  });
}

test("register leases a plain grpc-js server in, balanced calls reach it, and SIGTERM drains it, then removes it", async (t) => {
  const { client, registry } = t.context;
  const target = await startPlainServer();
  t.teardown(() => target.close());
  const watch = new WatchRecorder(client, { service: "plain" });
  t.teardown(() => watch.cancel());
  const sidecar = spawnCli(t, [
    "register",
    "--service=plain",
    `--address=${target.address}`,
    "--id=plain-1",
    "--weight=5",
    "--zone=z9",
    "--metadata=lang=python",
    "--metadata=owner=team-a",
    "--ttl=3",
    `--registry=${registry.address}`,
  ]);
  await sidecar.waitForLine(/leased .* in/);
  const [instance] = await instancesOf(client, "plain");
  t.like(instance, {
    instanceId: "plain-1",
    address: target.address,
    weight: 5,
    zone: "z9",
    status: InstanceStatus.INSTANCE_STATUS_SERVING,
    metadata: { lang: "python", owner: "team-a" },
  });

  const duplicate = spawnCli(t, [
    "register",
    "--service=plain",
    "--address=127.0.0.1:5000",
    "--id=plain-1",
    `--registry=${registry.address}`,
  ]);
  t.is(await duplicate.exited, 2, "an --id another live lease holds is refused");
  t.regex(duplicate.stderr.trim(), /^leasehold: plain\/plain-1 is already registered [^\n]*$/);

  const balanced = createBalancedClient(EchoServiceService, { service: "plain", registry: registry.address });
  t.teardown(async () => await balanced.close());
  const response = await balanced.methods.echo({ message: "hello" });
  t.is(response.message, "hello");
  t.is(target.calls(), 1, "the call reached the plain server");

  sidecar.child.kill("SIGTERM");
  await watch.until(
    (recorder) =>
      recorder.deltas().some((delta) => delta.removed.some((key) => key.instanceId === "plain-1")),
    "plain-1 removed",
  );
  const deltas = watch.deltas();
  const drainedAt = deltas.findIndex((delta) =>
    delta.upserted.some(
      (upserted) =>
        upserted.instanceId === "plain-1" && upserted.status === InstanceStatus.INSTANCE_STATUS_DRAINING,
    ),
  );
  const removedAt = deltas.findIndex((delta) => delta.removed.some((key) => key.instanceId === "plain-1"));
  t.true(drainedAt >= 0, "DRAINING was seen");
  t.true(drainedAt < removedAt, "DRAINING before the removal");
  t.is(await sidecar.exited, 0, sidecar.stderr);
  t.deepEqual(await instancesOf(client, "plain"), []);
});

test("register --health-check is DRAINING while the target is NOT_SERVING and SERVING again when it recovers", async (t) => {
  const { client, registry } = t.context;
  const target = await startPlainServer("NOT_SERVING");
  t.teardown(() => target.close());
  const statusOf = async (): Promise<InstanceStatus | undefined> =>
    (await instancesOf(client, "checked"))[0]?.status;
  const sidecar = spawnCli(t, [
    "register",
    "--service=checked",
    `--address=${target.address}`,
    "--id=checked-1",
    "--health-check",
    `--registry=${registry.address}`,
  ]);
  await sidecar.waitForLine(/leased .* in/);
  await eventually(async () => (await statusOf()) === InstanceStatus.INSTANCE_STATUS_DRAINING, {
    what: "DRAINING while the target starts NOT_SERVING",
  });

  target.health.setStatus("", "SERVING");
  await eventually(async () => (await statusOf()) === InstanceStatus.INSTANCE_STATUS_SERVING, {
    what: "SERVING once the target is",
  });
  target.health.setStatus("", "NOT_SERVING");
  await eventually(async () => (await statusOf()) === InstanceStatus.INSTANCE_STATUS_DRAINING, {
    what: "DRAINING again once the target is NOT_SERVING",
  });
  target.health.setStatus("", "SERVING");
  await eventually(async () => (await statusOf()) === InstanceStatus.INSTANCE_STATUS_SERVING, {
    what: "SERVING again",
  });
  t.true(sidecar.stdout.some((line) => /DRAINING \(target .* NOT_SERVING\)/.test(line)));

  sidecar.child.kill("SIGTERM");
  t.is(await sidecar.exited, 0, sidecar.stderr);
});

test("register --health-check drains an instance whose target went away, and serves it again when it is back", async (t) => {
  const { client, registry } = t.context;
  const target = await startPlainServer();
  const port = Number(target.address.split(":")[1]);
  const statusOf = async (): Promise<InstanceStatus | undefined> =>
    (await instancesOf(client, "flaky"))[0]?.status;
  const sidecar = spawnCli(t, [
    "register",
    "--service=flaky",
    `--address=${target.address}`,
    "--health-check",
    `--registry=${registry.address}`,
  ]);
  await eventually(async () => (await statusOf()) === InstanceStatus.INSTANCE_STATUS_SERVING, {
    what: "SERVING",
  });
  target.close();
  await eventually(async () => (await statusOf()) === InstanceStatus.INSTANCE_STATUS_DRAINING, {
    what: "DRAINING once the target is unreachable",
  });
  t.is(sidecar.child.exitCode, null, "the sidecar stays up while its target is down");

  // The same port again, as a restarted process would.
  const health = new HealthImplementation({ "": "SERVING" });
  const again = new Server();
  health.addToServer(again);
  await new Promise<void>((resolve, reject) =>
    again.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (error) =>
      error === null ? resolve() : reject(error),
    ),
  );
  t.teardown(() => again.forceShutdown());
  await eventually(async () => (await statusOf()) === InstanceStatus.INSTANCE_STATUS_SERVING, {
    what: "SERVING once the target is back",
    timeoutMs: 15_000,
  });
  sidecar.child.kill("SIGTERM");
  t.is(await sidecar.exited, 0, sidecar.stderr);
});

test("register refuses bad input with one line and exit status 2", async (t) => {
  const registryFlag = `--registry=${t.context.registry.address}`;
  const cases: string[][] = [
    ["register", "--address=127.0.0.1:5000", registryFlag],
    ["register", "--service=svc", registryFlag],
    ["register", "--service=svc", "--address=nowhere", registryFlag],
    ["register", "--service=svc", "--address=127.0.0.1:0", registryFlag],
    ["register", "--service=svc", "--address=127.0.0.1:5000", "--weight=10001", registryFlag],
    ["register", "--service=svc", "--address=127.0.0.1:5000", "--weight=-1", registryFlag],
    ["register", "--service=svc", "--address=127.0.0.1:5000", "--metadata=novalue", registryFlag],
    [
      "register",
      "--service=svc",
      "--address=127.0.0.1:5000",
      "--metadata=a=1",
      "--metadata=a=2",
      registryFlag,
    ],
    ["register", "--service=svc", "--address=127.0.0.1:5000", "--ttl=0", registryFlag],
    // Refused by the registry (INVALID_ARGUMENT): not a DNS-1123 label.
    ["register", "--service=Not_A_Label", "--address=127.0.0.1:5000", registryFlag],
  ];
  for (const args of cases) {
    const run = spawnCli(t, args);
    t.is(await run.exited, 2, `leasehold ${args.join(" ")}: ${run.stderr}`);
    t.is(run.stderr.trim().split("\n").length, 1, `one line for ${args.join(" ")}: ${run.stderr}`);
    t.notRegex(run.stderr, /\n\s+at /, "no stack trace");
  }
});

test("--version prints package.json's version; --help lists list and register", async (t) => {
  const { version } = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
    version: string;
  };
  const run = spawnCli(t, ["--version"]);
  t.is(await run.exited, 0);
  t.deepEqual(run.stdout.filter(Boolean), [version]);
  const help = spawnCli(t, ["--help"]);
  t.is(await help.exited, 0);
  t.regex(help.stdout.join("\n"), /\blist\b[\s\S]*\bregister\b|\bregister\b[\s\S]*\blist\b/);
});
