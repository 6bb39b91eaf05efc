/**
 * Leasehold as a consumer gets it: `npm pack` (which builds through `prepare`) from a copy of this
 * working tree without dist/, `npm install` of the tarball into a project outside the repository,
 * then, against a real registry and three real echo instances, a stock grpc-js client with target
 * `leasehold:///echo` from (a) plain JavaScript ESM, (b) TypeScript checked by the consumer's own
 * tsc (strict, NodeNext, skipLibCheck false) and (c) CommonJS `require()`; and a registry started
 * from `leasehold/registry` as installed.
 */
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import anyTest, { type ExecutionContext, type TestFn } from "ava";
import { echo } from "../services/echo.js";
import { startServiceInstance, type ServiceInstance } from "../services/service-host.js";
import { startRegistryFixture, type RegistryFixture } from "./helpers/registry-fixture.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const run = promisify(execFile);
const INSTANCE_IDS = ["echo-1", "echo-2", "echo-3"];
/**
 * Each consumer makes at least MIN_CALLS calls, and goes on (up to MAX_CALLS) until two instances
 * answered: a channel is READY, and picks, as soon as one subchannel is, so on a loaded machine the
 * first calls may all land on the instance that connected first.
 */
const MIN_CALLS = 20;
const MAX_CALLS = 200;

interface Context {
  readonly directory: string;
  readonly fixture: RegistryFixture;
  /** Filled as they start, so teardown stops those that did when the set-up fails half-way. */
  readonly instances: ServiceInstance[];
  /** Paths inside the tarball, as `npm pack --json` lists them. */
  readonly packedFiles: readonly string[];
  /** The consumer project (outside the repository) with the tarball installed. */
  readonly project: string;
}

const test = anyTest as TestFn<Context>;

/** What every consumer prints: who answered its calls, and whether etcd3 got loaded. */
interface ConsumerReport {
  readonly answeredBy: Record<string, number>;
  readonly etcd3Loaded: boolean;
  readonly [key: string]: unknown;
}

/** The version of a package installed here, so the consumer installs the same (from npm's cache). */
async function installedVersion(name: string): Promise<string> {
  const manifest = await readFile(join(root, "node_modules", name, "package.json"), "utf8");
  return (JSON.parse(manifest) as { version: string }).version;
}

/**
 * Runs npm in `cwd` as a user would: without the `npm_*` variables of the `npm test` run around
 * this test (npm_config_local_prefix and the like name this repository).
 */
async function npm(cwd: string, args: readonly string[]): Promise<string> {
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("npm_") && name !== "INIT_CWD"),
  );
  const { stdout } = await run("npm", ["--no-audit", "--no-fund", "--loglevel=error", ...args], {
    cwd,
    env,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

/** Packs a copy of this working tree (no node_modules, .git or dist) so `prepare` builds it afresh. */
async function pack(directory: string): Promise<{ tarball: string; files: string[] }> {
  const staging = join(directory, "package");
  const skipped = new Set(["node_modules", ".git", "dist", ".tmp"]);
  await cp(root, staging, {
    recursive: true,
    filter: (source) => !skipped.has(relative(root, source).split(sep)[0] ?? ""),
  });
  await symlink(join(root, "node_modules"), join(staging, "node_modules"), "dir");
  const output = await npm(staging, ["pack", "--json", "--pack-destination", directory]);
  const [packed] = JSON.parse(output) as [{ filename: string; files: { path: string }[] }];
  return { tarball: join(directory, packed.filename), files: packed.files.map((file) => file.path) };
}

/** A project outside the repository with the tarball, grpc-js, proto-loader and a TypeScript toolchain. */
async function installConsumer(directory: string, tarball: string): Promise<string> {
  const project = join(directory, "consumer");
  await mkdir(project);
  await writeFile(
    join(project, "package.json"),
    JSON.stringify({ name: "leasehold-consumer", private: true, type: "module" }, null, 2),
  );
  const pinned = await Promise.all(
    ["@grpc/grpc-js", "@grpc/proto-loader", "typescript", "@types/node"].map(
      async (name) => `${name}@${await installedVersion(name)}`,
    ),
  );
  await npm(project, ["install", "--prefer-offline", tarball, ...pinned]);
  for (const [file, text] of Object.entries(CONSUMER_FILES)) await writeFile(join(project, file), text);
  return project;
}

async function startInstances(fixture: RegistryFixture, started: ServiceInstance[]): Promise<void> {
  await Promise.all(
    INSTANCE_IDS.map(async (instanceId) => {
      const instance = await startServiceInstance(echo, {
        registry: fixture.registry.address,
        instanceId,
        listen: "127.0.0.1:0",
        drainMs: 0,
      });
      started.push(instance);
    }),
  );
}

test.before(async (t) => {
  t.timeout(300_000, "npm pack (tsc) and npm install of the tarball");
  const directory = await mkdtemp(join(tmpdir(), "leasehold-consumer-"));
  const fixture = await startRegistryFixture();
  const instances: ServiceInstance[] = [];
  t.context = { directory, fixture, instances, packedFiles: [], project: "" };
  const [, packed] = await Promise.all([startInstances(fixture, instances), pack(directory)]);
  const project = await installConsumer(directory, packed.tarball);
  t.context = { directory, fixture, instances, packedFiles: packed.files, project };
});

test.after.always(async (t) => {
  const context = t.context as Partial<Context>;
  await Promise.all((context.instances ?? []).map(async (instance) => await instance.shutdown()));
  await context.fixture?.close();
  if (context.directory !== undefined) await rm(context.directory, { recursive: true, force: true });
});

/** Runs `node args` in the consumer project against the fixture's registry; parses its report. */
async function runConsumer<Report = ConsumerReport>(
  context: Context,
  args: readonly string[],
): Promise<Report> {
  const { stdout } = await run(process.execPath, [...args], {
    cwd: context.project,
    env: {
      ...process.env,
      LEASEHOLD_REGISTRY: context.fixture.registry.address,
      LEASEHOLD_ETCD: context.fixture.etcd.endpoint,
    },
    timeout: 30_000,
  });
  return JSON.parse(stdout) as Report;
}

function assertBalanced(t: ExecutionContext<Context>, report: ConsumerReport): void {
  const counts = Object.values(report.answeredBy);
  t.true(
    counts.reduce((sum, count) => sum + count, 0) >= MIN_CALLS,
    `at least ${MIN_CALLS} calls answered: ${JSON.stringify(report.answeredBy)}`,
  );
  t.true(
    Object.keys(report.answeredBy).every((id) => INSTANCE_IDS.includes(id)),
    `answers come from the registered instances: ${JSON.stringify(report.answeredBy)}`,
  );
  t.true(counts.length > 1, `more than one instance answered: ${JSON.stringify(report.answeredBy)}`);
}

test("the tarball holds dist/, the .proto files, the bin, README and LICENSE, and no test, script, CI or deploy file", (t) => {
  const files = t.context.packedFiles;
  for (const expected of [
    "package.json",
    "README.md",
    "LICENSE",
    "leasehold.mjs",
    "dist/client/index.js",
    "dist/client/index.d.ts",
    "dist/registry/index.js",
    "dist/registry/index.d.ts",
    "dist/cli/main.js",
    "dist/proto/leasehold/demo/v1/echo.proto",
    "dist/proto/leasehold/registry/v1/registry.proto",
  ])
    t.true(files.includes(expected), `packed: ${expected}`);
  const unwanted = files.filter(
    (file) =>
      /^(test|scripts|bench|\.ci|deploy|grafana|node_modules)\//.test(file) ||
      /\.test\.(ts|js|d\.ts)$/.test(file) ||
      (file.endsWith(".ts") && !file.endsWith(".d.ts")) ||
      /(^|\/)tsconfig[^/]*\.json$/.test(file),
  );
  t.deepEqual(unwanted, []);
  t.true(
    files.every(
      (file) =>
        file.startsWith("dist/") || ["package.json", "README.md", "LICENSE", "leasehold.mjs"].includes(file),
    ),
    `only dist/ and the top-level files: ${files.filter((file) => !file.startsWith("dist/")).join(", ")}`,
  );
});

test("the consumer has one @grpc/grpc-js (a peer of leasehold), no tsx, and a leasehold bin that runs", async (t) => {
  const modules = join(t.context.project, "node_modules");
  t.true(existsSync(join(modules, "@grpc", "grpc-js")));
  t.false(existsSync(join(modules, "leasehold", "node_modules", "@grpc", "grpc-js")));
  t.false(existsSync(join(modules, "tsx")));
  const { stdout } = await run(join(modules, ".bin", "leasehold"), ["--help"], { cwd: t.context.project });
  t.regex(stdout, /^Usage: leasehold /);
});

test("every package a published .d.ts imports is a dependency or peer of leasehold", async (t) => {
  const packageRoot = join(t.context.project, "node_modules", "leasehold");
  const manifest = JSON.parse(await readFile(join(packageRoot, "package.json"), "utf8")) as {
    dependencies?: Record<string, string>;
    peerDependencies?: Record<string, string>;
  };
  const declared = new Set([
    ...Object.keys(manifest.dependencies ?? {}),
    ...Object.keys(manifest.peerDependencies ?? {}),
  ]);
  const imported = new Set<string>();
  for (const file of t.context.packedFiles.filter((path) => path.endsWith(".d.ts"))) {
    const text = await readFile(join(packageRoot, file), "utf8");
    for (const [, specifier] of text.matchAll(/(?:from |import\()"([^".][^"]*)"/g)) {
      if (specifier === undefined || specifier.startsWith("node:")) continue;
      const [first, second] = specifier.split("/");
      imported.add(first?.startsWith("@") ? `${first}/${second}` : (first ?? specifier));
    }
  }
  t.true(imported.has("@grpc/grpc-js"), `the scan finds imports: ${[...imported].join(", ")}`);
  t.deepEqual(
    [...imported].filter((name) => !declared.has(name)),
    [],
    `imported by .d.ts files: ${[...imported].join(", ")}`,
  );
});

test("(a) plain JavaScript ESM imports leasehold and balances leasehold:///echo calls with node alone", async (t) => {
  const report = await runConsumer(t.context, ["esm-consumer.mjs"]);
  assertBalanced(t, report);
  t.false(report.etcd3Loaded, "importing leasehold does not load etcd3");
});

test("(b) TypeScript type-checks with the consumer's tsc (strict, NodeNext, skipLibCheck false), then runs", async (t) => {
  const tsc = join(t.context.project, "node_modules", "typescript", "bin", "tsc");
  const errors = await run(process.execPath, [tsc, "-p", "."], { cwd: t.context.project }).then(
    () => "",
    (error: Error & { stdout?: string }) => error.stdout ?? error.message,
  );
  t.is(errors, "", "tsc reports no error");
  const report = await runConsumer(t.context, ["out/typed-consumer.js"]);
  assertBalanced(t, report);
  t.is(
    report["invalidPolicyError"],
    "INVALID_ARGUMENT",
    "a LeaseholdError with its code reaches the consumer",
  );
});

test("(c) CommonJS require()s leasehold and balances leasehold:///echo calls", async (t) => {
  const report = await runConsumer(t.context, ["cjs-consumer.cjs"]);
  assertBalanced(t, report);
  t.false(report.etcd3Loaded);
});

test("leasehold/registry starts a registry from the installed package (its reflection protos load from dist/proto)", async (t) => {
  const report = await runConsumer<{ services: string[] }>(t.context, ["registry-consumer.mjs"]);
  t.true(
    report.services.includes("echo"),
    `ListServices through the installed registry: ${report.services.join(", ")}`,
  );
});

/** The consumer project's own files: the same program as ESM, TypeScript and CommonJS. */
const CONSUMER_FILES: Record<string, string> = {
  "esm-consumer.mjs": `
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { registerLeasehold } from "leasehold";

registerLeasehold({ registry: process.env.LEASEHOLD_REGISTRY });
const protoPath = fileURLToPath(import.meta.resolve("leasehold/proto/leasehold/demo/v1/echo.proto"));
const proto = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath));
const client = new proto.leasehold.demo.v1.EchoService("leasehold:///echo", grpc.credentials.createInsecure());
const answeredBy = {};
for (let i = 0; i < ${MIN_CALLS} || (Object.keys(answeredBy).length < 2 && i < ${MAX_CALLS}); i += 1) {
  const reply = await new Promise((resolve, reject) =>
    client.echo({ message: "call " + i }, { deadline: Date.now() + 5000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    ),
  );
  answeredBy[reply.instanceId] = (answeredBy[reply.instanceId] ?? 0) + 1;
}
client.close();
const etcd3Loaded = Object.keys(createRequire(import.meta.url).cache).some((file) =>
  /[\\\\/]node_modules[\\\\/]etcd3[\\\\/]/.test(file),
);
console.log(JSON.stringify({ answeredBy, etcd3Loaded }));
`,
  "typed-consumer.ts": `
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { LeaseholdError, registerLeasehold, type LeaseholdOptions, type PolicyName } from "leasehold";
import type { RegistryOptions } from "leasehold/registry";

interface EchoRequest {
  message: string;
}
interface EchoResponse {
  message: string;
  instanceId: string;
}
interface EchoClient extends grpc.Client {
  echo(
    request: EchoRequest,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: EchoResponse) => void,
  ): grpc.ClientUnaryCall;
}
type EchoClientConstructor = new (target: string, credentials: grpc.ChannelCredentials) => EchoClient;
interface EchoPackage {
  leasehold: { demo: { v1: { EchoService: EchoClientConstructor } } };
}

// The registry entry's types resolve too (its .d.ts graph is checked with skipLibCheck false).
const registryOptionNames: (keyof RegistryOptions)[] = [];

let invalidPolicyError: string | undefined;
try {
  registerLeasehold({ policy: "fastest" as PolicyName });
} catch (error) {
  if (error instanceof LeaseholdError) invalidPolicyError = error.code;
}

const options: LeaseholdOptions = { registry: process.env["LEASEHOLD_REGISTRY"] ?? "", policy: "round_robin" };
registerLeasehold(options);
const protoPath = fileURLToPath(import.meta.resolve("leasehold/proto/leasehold/demo/v1/echo.proto"));
const proto = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath)) as unknown as EchoPackage;
const client = new proto.leasehold.demo.v1.EchoService("leasehold:///echo", grpc.credentials.createInsecure());

function call(message: string): Promise<EchoResponse> {
  return new Promise((resolve, reject) => {
    client.echo({ message }, { deadline: Date.now() + 5000 }, (error, response) => {
      if (error !== null) reject(error);
      else if (response === undefined) reject(new Error("no response"));
      else resolve(response);
    });
  });
}

const answeredBy: Record<string, number> = {};
for (let i = 0; i < ${MIN_CALLS} || (Object.keys(answeredBy).length < 2 && i < ${MAX_CALLS}); i += 1) {
  const reply = await call(\`call \${i}\`);
  answeredBy[reply.instanceId] = (answeredBy[reply.instanceId] ?? 0) + 1;
}
client.close();
const etcd3Loaded = Object.keys(createRequire(import.meta.url).cache).some((file) => file.includes("/etcd3/"));
console.log(JSON.stringify({ answeredBy, etcd3Loaded, invalidPolicyError, registryOptionNames }));
`,
  "registry-consumer.mjs": `
import { connectRegistry } from "leasehold";
import { startRegistry } from "leasehold/registry";

const registry = await startRegistry({ listen: "127.0.0.1:0", etcdEndpoints: [process.env.LEASEHOLD_ETCD] });
const client = connectRegistry(registry.address);
const listed = await new Promise((resolve, reject) =>
  client.listServices({}, { deadline: Date.now() + 5000 }, (error, response) => (error ? reject(error) : resolve(response))),
);
client.close();
await registry.close();
console.log(JSON.stringify({ services: listed.services.map((summary) => summary.service) }));
`,
  "cjs-consumer.cjs": `
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const { registerLeasehold } = require("leasehold");

async function main() {
  registerLeasehold({ registry: process.env.LEASEHOLD_REGISTRY });
  const protoPath = require.resolve("leasehold/proto/leasehold/demo/v1/echo.proto");
  const proto = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath));
  const client = new proto.leasehold.demo.v1.EchoService("leasehold:///echo", grpc.credentials.createInsecure());
  const answeredBy = {};
  for (let i = 0; i < ${MIN_CALLS} || (Object.keys(answeredBy).length < 2 && i < ${MAX_CALLS}); i += 1) {
    const reply = await new Promise((resolve, reject) =>
      client.echo({ message: "call " + i }, { deadline: Date.now() + 5000 }, (error, response) =>
        error ? reject(error) : resolve(response),
      ),
    );
    answeredBy[reply.instanceId] = (answeredBy[reply.instanceId] ?? 0) + 1;
  }
  client.close();
  const etcd3Loaded = Object.keys(require.cache).some((file) => /[\\\\/]node_modules[\\\\/]etcd3[\\\\/]/.test(file));
  console.log(JSON.stringify({ answeredBy, etcd3Loaded }));
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
`,
  "tsconfig.json": JSON.stringify(
    {
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        skipLibCheck: false,
        types: ["node"],
        outDir: "out",
      },
      files: ["typed-consumer.ts"],
    },
    null,
    2,
  ),
};
