import anyTest, { type ExecutionContext, type TestFn } from "ava";
import { rpc, startRegistryFixture, type RegistryFixture } from "./helpers/registry-fixture.js";
import { CALLER_SERVICE } from "../client/registration/caller-entry.js";
import { spawnCli, type CliProcess } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { FIXTURES, register, startLedgerServer, type LedgerServer } from "./helpers/ledger-server.js";
import type { Registrar } from "../client/registration/registrar.js";
import { calculator } from "../services/calculator.js";
import { startServiceInstance } from "../services/service-host.js";

/**
 * `leasehold call` against services that are NOT Leasehold demo services: plain grpc-js servers of
 * test/fixtures/*.proto, served with @grpc/reflection and leased in with the Registrar.
 */
interface Context {
  fixture: RegistryFixture;
  /** `ledger`: one instance with reflection (v1 and v1alpha). */
  ledger: LedgerServer;
  registrars: Registrar[];
  servers: LedgerServer[];
}

// Serial: each test spawns CLI processes, and fifteen node processes starting at once on a loaded
// machine can push a registry answer past checkRegistry's 2 s.
const test = (anyTest as TestFn<Context>).serial;

/** Waits on facts from a spawned CLI are generous: a loaded CI machine starts node slowly. */
const LOADED_MACHINE_MS = 30_000;

test.before(async (t) => {
  const fixture = await startRegistryFixture();
  t.context = { fixture, registrars: [], servers: [] } as unknown as Context;
  t.context.ledger = await serve(t.context, "ledger", { instanceId: "ledger-a" });
});

test.after.always(async (t) => {
  for (const registrar of t.context.registrars ?? []) await registrar.close();
  for (const server of t.context.servers ?? []) await server.close();
  await t.context.fixture?.close();
});

async function serve(
  context: Context,
  service: string,
  options: Parameters<typeof startLedgerServer>[0],
): Promise<LedgerServer> {
  const server = await startLedgerServer(options);
  context.servers.push(server);
  context.registrars.push(await register(context.fixture.client, service, server));
  return server;
}

function registryFlag(context: Context): string {
  return `--registry=${context.fixture.registry.address}`;
}

/** stdout lines of a finished CLI that are JSON objects, parsed. */
function jsonLines(run: CliProcess): unknown[] {
  return run.stdout.filter((line) => line.startsWith("{")).map((line) => JSON.parse(line) as unknown);
}

/** Asserts a user mistake: exit 2, one stderr line, no stack trace. */
async function refused(t: ExecutionContext<Context>, run: CliProcess): Promise<string> {
  t.is(await run.exited, 2, run.stderr);
  const lines = run.stderr.trim().split("\n");
  t.is(lines.length, 1, run.stderr);
  t.notRegex(run.stderr, /\n\s+at /);
  return lines[0] ?? "";
}

test("a unary call by reflection prints the response as canonical proto3 JSON", async (t) => {
  const run = spawnCli(t, [
    "call",
    "ledger",
    "Post",
    '{"accountId":"acc-1","amountCents":"250","kind":"KIND_CREDIT","tags":["a"],"at":"2026-11-22T08:00:00Z"}',
    registryFlag(t.context),
  ]);
  t.is(await run.exited, 0, run.stderr);
  // int64 as a string, lowerCamelCase names, defaults omitted, one line.
  t.deepEqual(
    run.stdout.filter((line) => line !== ""),
    ['{"accountId":"acc-1","balanceCents":"250","instanceId":"ledger-a"}'],
  );
});

test("a demo instance serves reflection: calculator Add needs no --proto", async (t) => {
  const instance = await startServiceInstance(calculator, {
    registry: t.context.fixture.registry.address,
    instanceId: "calc-reflected",
    listen: "127.0.0.1:0",
    drainMs: 0,
  });
  t.teardown(async () => await instance.shutdown());
  const run = spawnCli(t, ["call", "calculator", "Add", '{"a":1,"b":2}', registryFlag(t.context)]);
  t.is(await run.exited, 0, run.stderr);
  t.deepEqual(jsonLines(run), [{ result: 3, instanceId: "calc-reflected" }]);
  const wrong = await refused(
    t,
    spawnCli(t, ["call", "calculator", "Add", '{"a":"one"}', registryFlag(t.context)]),
  );
  t.regex(wrong, /field "a"/);
});

test("METHOD may be Service/Method, package.Service/Method or package.Service.Method", async (t) => {
  for (const method of [
    "LedgerService/Post",
    "fixture.ledger.v1.LedgerService/Post",
    "fixture.ledger.v1.LedgerService.Post",
  ]) {
    const run = spawnCli(t, ["call", "ledger", method, '{"accountId":"acc-forms"}', registryFlag(t.context)]);
    t.is(await run.exited, 0, `${method}: ${run.stderr}`);
    t.like(jsonLines(run)[0], { accountId: "acc-forms", instanceId: "ledger-a" }, method);
  }
});

// Serial (as all here): no other test posts to the ledger meanwhile, so its count shows nothing was called.
test("an unknown field or a wrong type exits 2 naming the field, and nothing is called", async (t) => {
  const before = t.context.ledger.served["Post"] ?? 0;
  const cases: [string, RegExp][] = [
    ['{"x":1}', /unknown field "x"/],
    ['{"accountId":"a","amountCents":"lots"}', /field "amountCents"/],
    ['{"accountId":7}', /field "accountId"/],
    ['{"kind":"KIND_SIDEWAYS"}', /field "kind"/],
    ['{"at":"yesterday"}', /field "at"/],
    ['{"tags":"not a list"}', /field "tags"/],
    ["[1,2]", /request/],
  ];
  for (const [request, pattern] of cases) {
    const line = await refused(t, spawnCli(t, ["call", "ledger", "Post", request, registryFlag(t.context)]));
    t.regex(line, pattern, request);
  }
  t.is(t.context.ledger.served["Post"] ?? 0, before, "no refused request reached the server");
});

test("an unknown method lists the methods there are; an unknown service says none is registered", async (t) => {
  const line = await refused(t, spawnCli(t, ["call", "ledger", "Pow", registryFlag(t.context)]));
  t.regex(line, /no method "Pow".*fixture\.ledger\.v1\.LedgerService\/Post/);
  const missing = spawnCli(t, ["call", "nobody", "Post", registryFlag(t.context)]);
  t.is(await missing.exited, 1);
  t.regex(missing.stderr, /no instance of service "nobody" is registered/);
});

test("--metadata reaches the server with every call", async (t) => {
  const run = spawnCli(t, [
    "call",
    "ledger",
    "Post",
    '{"accountId":"acc-meta"}',
    "--metadata",
    "x-tenant:acme",
    registryFlag(t.context),
  ]);
  t.is(await run.exited, 0, run.stderr);
  t.like(jsonLines(run)[0], { seenMetadata: { "x-tenant": "acme" } });
});

test("a server-streaming call prints one JSON line per message", async (t) => {
  const run = spawnCli(t, [
    "call",
    "ledger",
    "History",
    '{"accountId":"acc-h","limit":3}',
    registryFlag(t.context),
  ]);
  t.is(await run.exited, 0, run.stderr);
  t.deepEqual(jsonLines(run), [
    { accountId: "acc-h", amountCents: "100" },
    { accountId: "acc-h", amountCents: "200" },
    { accountId: "acc-h", amountCents: "300" },
  ]);
});

test("a client-streaming call reads NDJSON requests from stdin", async (t) => {
  const run = spawnCli(t, ["call", "ledger", "Total", registryFlag(t.context)]);
  run.child.stdin?.end('{"accountId":"a","amountCents":"1"}\n\n{"amountCents":"2"}\n{"amountCents":"3"}\n');
  t.is(await run.exited, 0, run.stderr);
  t.deepEqual(jsonLines(run), [{ totalCents: "6", entries: 3 }]);
});

test("a bidi call answers each NDJSON request line", async (t) => {
  const run = spawnCli(t, ["call", "ledger", "Running", registryFlag(t.context)]);
  run.child.stdin?.end('{"accountId":"b","amountCents":"5"}\n{"accountId":"b","amountCents":"7"}\n');
  t.is(await run.exited, 0, run.stderr);
  t.deepEqual(jsonLines(run), [
    { accountId: "b", balanceCents: "5", instanceId: "ledger-a" },
    { accountId: "b", balanceCents: "12", instanceId: "ledger-a" },
  ]);
});

test("a stream the server ends early prints CODE: message and exits, though stdin is still open", async (t) => {
  const run = spawnCli(t, ["call", "ledger", "Total", registryFlag(t.context)]);
  run.child.stdin?.write('{"accountId":"frozen","amountCents":"1"}\n'); // stdin is never ended
  t.is(await run.exited, 1, run.stderr);
  t.is(run.stderr.trim(), "leasehold: FAILED_PRECONDITION: account frozen is frozen");
});

test("a bad NDJSON line exits 2 naming its line number and field", async (t) => {
  const run = spawnCli(t, ["call", "ledger", "Total", registryFlag(t.context)]);
  run.child.stdin?.end('{"amountCents":"1"}\n{"amountCents":"2","y":true}\n{"amountCents":"3"}\n');
  const line = await refused(t, run);
  t.regex(line, /line 2/);
  t.regex(line, /"y"/);
});

test("a short method name two services share is ambiguous; Service/Method picks one", async (t) => {
  await serve(t.context, "books", { instanceId: "books-a", withAudit: true });
  const line = await refused(
    t,
    spawnCli(t, ["call", "books", "Post", '{"accountId":"x"}', registryFlag(t.context)]),
  );
  t.regex(line, /ambiguous/);
  t.regex(line, /fixture\.audit\.v1\.AuditService\/Post/);
  t.regex(line, /fixture\.ledger\.v1\.LedgerService\/Post/);
  const run = spawnCli(t, [
    "call",
    "books",
    "AuditService/Post",
    '{"accountId":"x","kind":"KIND_DEBIT"}',
    registryFlag(t.context),
  ]);
  t.is(await run.exited, 0, run.stderr);
  // The enum of another file (ledger.proto, imported by audit.proto) is printed by name.
  t.deepEqual(jsonLines(run), [{ accountId: "x", kind: "KIND_DEBIT", instanceId: "books-a" }]);
});

test("a server with only v1alpha reflection is understood (the v1 → v1alpha fallback)", async (t) => {
  await serve(t.context, "ledger-old", { instanceId: "old-a", reflection: "v1alpha-only" });
  const run = spawnCli(t, ["call", "ledger-old", "Post", '{"accountId":"old"}', registryFlag(t.context)]);
  t.is(await run.exited, 0, run.stderr);
  t.like(jsonLines(run)[0], { accountId: "old", instanceId: "old-a" });
});

test("without reflection the CLI says to use --proto, and --proto with --import-path works", async (t) => {
  await serve(t.context, "ledger-dark", { instanceId: "dark-a", reflection: "none" });
  const blind = spawnCli(t, ["call", "ledger-dark", "Post", '{"accountId":"d"}', registryFlag(t.context)]);
  t.is(await blind.exited, 1);
  t.regex(blind.stderr, /does not serve gRPC server reflection.*--proto/);

  const run = spawnCli(t, [
    "call",
    "ledger-dark",
    "Post",
    '{"accountId":"d","amountCents":"9007199254740993"}',
    "--proto=ledger.proto",
    `--import-path=${FIXTURES}`,
    registryFlag(t.context),
  ]);
  t.is(await run.exited, 0, run.stderr);
  // An int64 beyond 2^53 survives exactly.
  t.deepEqual(jsonLines(run), [{ accountId: "d", balanceCents: "9007199254740993", instanceId: "dark-a" }]);

  const bad = spawnCli(t, [
    "call",
    "ledger-dark",
    "Post",
    '{"x":1}',
    "--proto=ledger.proto",
    `--import-path=${FIXTURES}`,
    registryFlag(t.context),
  ]);
  t.regex(await refused(t, bad), /unknown field "x"/);
});

test("load run: an instance that leaves and comes back keeps all its calls in the totals", async (t) => {
  const a = await startLedgerServer({ instanceId: "twice-a" });
  const b = await startLedgerServer({ instanceId: "twice-b" });
  t.context.servers.push(a, b);
  let registrarA = await register(t.context.fixture.client, "twice", a);
  const registrarB = await register(t.context.fixture.client, "twice", b);
  t.context.registrars.push(registrarB);
  t.teardown(async () => await registrarA.close());
  const posts = (server: LedgerServer): number => server.served["Post"] ?? 0;

  // Concurrency 1: once B has answered after A was drained, no call is left in flight on A.
  const run = spawnCli(t, [
    "call",
    "twice",
    "Post",
    '{"accountId":"t","amountCents":"1"}',
    "--duration=120",
    "--json",
    registryFlag(t.context),
  ]);
  await eventually(() => posts(a) > 20 && posts(b) > 20, {
    what: "calls on both instances",
    timeoutMs: LOADED_MACHINE_MS,
  });
  await registrarA.drain();
  const drainedAt = posts(b);
  await eventually(() => posts(b) > drainedAt + 20, {
    what: "B alone after A was drained",
    timeoutMs: LOADED_MACHINE_MS,
  });
  await registrarA.close(); // deregistered: A leaves the membership
  const leftAt = posts(b);
  await eventually(() => posts(b) > leftAt + 20, {
    what: "B alone after A left",
    timeoutMs: LOADED_MACHINE_MS,
  });
  const firstLifetime = posts(a);
  registrarA = await register(t.context.fixture.client, "twice", a); // back, as a new lifetime
  await eventually(() => posts(a) > firstLifetime + 20, {
    what: "calls on A again",
    timeoutMs: LOADED_MACHINE_MS,
  });
  run.child.kill("SIGINT");
  t.is(await run.exited, 0, `${run.stderr}${run.stdout.join("\n")}`);

  const summary = jsonLines(run).at(-1) as {
    total: number;
    errors: number;
    instances: { instance_id: string; calls: number }[];
  };
  t.is(summary.errors, 0);
  const calls = Object.fromEntries(
    summary.instances.map((instance) => [instance.instance_id, instance.calls]),
  );
  t.deepEqual(
    calls,
    { "twice-a": posts(a), "twice-b": posts(b) },
    "each instance's calls, as its server counted",
  );
  t.is(
    summary.instances.reduce((sum, instance) => sum + instance.calls, 0),
    summary.total,
    "the instances' calls add up to the total",
  );
});

test("load run: with no instance to pick, workers wait between attempts instead of spinning", async (t) => {
  const server = await startLedgerServer({ instanceId: "drained-a" });
  t.context.servers.push(server);
  const registrar = await register(t.context.fixture.client, "drained", server);
  t.teardown(async () => await registrar.close());
  await registrar.drain(); // listed, but never picked
  const run = spawnCli(t, [
    "call",
    "drained",
    "Post",
    "{}",
    "--duration=1",
    "--concurrency=2",
    "--deadline-ms=100",
    "--json",
    registryFlag(t.context),
  ]);
  t.is(await run.exited, 1, run.stderr);
  const summary = jsonLines(run).at(-1) as { total: number; errors: number };
  t.is(summary.errors, summary.total, "every attempt failed");
  // A pause of ≥ 50 ms after each instant failure: at most 2 workers × 1 s / 50 ms (+ the first
  // attempts). A spinning loop makes thousands.
  t.true(summary.total <= 2 * (1000 / 50 + 1), `${summary.total} attempts in 1 s`);
  t.is(server.served["Post"] ?? 0, 0, "the drained instance got no call");
});

test("call --metrics-listen lists the caller's /metrics as a leasehold-caller entry while it runs, and removes it at the end", async (t) => {
  const instance = await startServiceInstance(calculator, {
    registry: t.context.fixture.registry.address,
    instanceId: "calc-metered",
    listen: "127.0.0.1:0",
    drainMs: 0,
  });
  t.teardown(async () => await instance.shutdown());
  const { getService } = rpc(t.context.fixture.client);
  const run = spawnCli(t, [
    "call",
    "calculator",
    "Add",
    '{"a":1,"b":2}',
    "--duration=60",
    "--metrics-listen=127.0.0.1:0",
    registryFlag(t.context),
  ]);
  const entry = await eventually(async () => (await getService({ service: CALLER_SERVICE })).instances[0], {
    timeoutMs: LOADED_MACHINE_MS,
  });
  t.is(entry.weight, 0, "never called");
  t.deepEqual(entry.metadata, { calls: "calculator" });
  t.is(entry.metricsAddress, entry.address);
  const metrics = await (await fetch(`http://${entry.metricsAddress}/metrics`)).text();
  t.regex(metrics, /leasehold_build_info\{[^}]*component="caller"/);
  run.child.kill("SIGINT");
  t.is(await run.exited, 0, run.stderr);
  t.deepEqual((await getService({ service: CALLER_SERVICE })).instances, [], "deregistered on exit");
});
