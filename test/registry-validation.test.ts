import { Client, credentials, status, type ServiceError } from "@grpc/grpc-js";
import test from "ava";
import {
  InstanceStatus,
  RegisterRequest,
  type WatchRequest,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import {
  isHostPort,
  validateDeregister,
  validateKeepAlive,
  validateRegister,
  validateUpdate,
  validateWatch,
  type Validated,
} from "../registry/api/validation.js";
import { decodeRegisterRequest } from "../registry/api/request-decoding.js";
import {
  failure,
  registration,
  rpc,
  startFixtureFor,
  startRegistryFixture,
  WatchRecorder,
} from "./helpers/registry-fixture.js";

const base = registration({ service: "calc", instanceId: "calc-1" });

/** `{ [key]: "x" }` with `key` as an own property, even `__proto__` (as a decoded map holds it). */
function metadataWith(key: string): Record<string, string> {
  return Object.defineProperty({}, key, { value: "x", enumerable: true, configurable: true, writable: true });
}
const at = "2026-01-01T00:00:00.000Z";

/** Every request of DESIGN §2 that must be refused, with the field its message must name. */
const invalidRegistrations: [string, Partial<RegisterRequest>, RegExp][] = [
  ["service with bad characters", { service: "Bad_Name!" }, /^service: must be a DNS-1123 label/],
  ["service of 64 characters", { service: "a".repeat(64) }, /^service:/],
  ["service starting with '-'", { service: "-calc" }, /^service:/],
  ["empty service", { service: "" }, /^service: required/],
  ["instance_id with a space", { instanceId: "bad id" }, /^instance_id:/],
  ["instance_id with a slash", { instanceId: "a/b" }, /^instance_id:/],
  ["instance_id of 129 characters", { instanceId: "i".repeat(129) }, /^instance_id:/],
  ["empty instance_id", { instanceId: "" }, /^instance_id: required/],
  ["empty address", { address: "" }, /^address: required/],
  ["address without port", { address: "10.0.0.1" }, /^address: must be host:port/],
  ["address with port 0", { address: "10.0.0.1:0" }, /^address:/],
  ["address with port 65536", { address: "10.0.0.1:65536" }, /^address:/],
  ["address without host", { address: ":8080" }, /^address:/],
  ["address with a space", { address: "a b:80" }, /^address:/],
  ["bad metrics_address", { metricsAddress: "metrics" }, /^metrics_address:/],
  [
    "metrics_address on another host",
    { metricsAddress: "169.254.169.254:80" },
    /^metrics_address: must be on the host of address/,
  ],
  ["instance_id '.'", { instanceId: "." }, /^instance_id: must not be "\." or "\.\."/],
  ["instance_id '..'", { instanceId: ".." }, /^instance_id: must not be "\." or "\.\."/],
  ["instance_id starting with '-'", { instanceId: "-rf" }, /^instance_id: must not start with '-'/],
  ["address like an IP but none", { address: "999.999.999.999:80" }, /^address: must be host:port/],
  ["address with a numeric last label", { address: "10.0.0:80" }, /^address:/],
  ["address with a hex last label", { address: "a.0x7f:80" }, /^address:/],
  ["address with an empty DNS label", { address: "a..b:80" }, /^address:/],
  ["address with a trailing dot", { address: "a.b.:80" }, /^address:/],
  ["address with a label of 64 characters", { address: `${"a".repeat(64)}.b:80` }, /^address:/],
  ["address with a bad IPv6", { address: "[:::::]:80" }, /^address:/],
  ["metrics_address with an empty DNS label", { address: "a..b:80", metricsAddress: "a..b:81" }, /^address:/],
  [
    "metadata key __proto__",
    { metadata: metadataWith("__proto__") },
    /^metadata: key "__proto__" is reserved/,
  ],
  [
    "metadata key constructor",
    { metadata: { constructor: "x" } },
    /^metadata: key "constructor" is reserved/,
  ],
  ["metadata key prototype", { metadata: { prototype: "x" } }, /^metadata: key "prototype" is reserved/],
  [
    "a control character in a metadata key",
    { metadata: { "a\u001b[31mb": "x" } },
    /^metadata: key "a\\u001b\[31mb" must not contain control characters/,
  ],
  ["DEL in a metadata key", { metadata: { "a\u007f": "x" } }, /^metadata: key "a\\u007f" must not/],
  [
    "a control character in a metadata value",
    { metadata: { k: "a\rb" } },
    /^metadata: value of key "k" must not contain control characters/,
  ],
  ["weight -1", { weight: -1 }, /^weight: must be an integer from 0 to 10000, got -1/],
  ["weight 10001", { weight: 10_001 }, /^weight:.*got 10001/],
  ["ttl 301", { ttlSeconds: "301" }, /^ttl_seconds:.*got 301/],
  ["negative ttl", { ttlSeconds: "-5" }, /^ttl_seconds:.*got -5/],
  [
    "33 metadata keys",
    { metadata: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"])) },
    /^metadata: at most 32 keys, got 33/,
  ],
  ["metadata over 4 KiB", { metadata: { big: "x".repeat(4094) } }, /^metadata:.*4096 bytes, got 4097/],
  ["empty metadata key", { metadata: { "": "v" } }, /^metadata: keys must not be empty/],
  ["unknown status", { status: 7 as InstanceStatus }, /^status:/],
  ["zone too long", { zone: "z".repeat(64) }, /^zone:/],
];

function errorOf<T>(result: Validated<T>): string {
  return result.ok ? "(valid)" : `${result.error.code}: ${result.error.message}`;
}

for (const [title, overrides, message] of invalidRegistrations) {
  test(`validateRegister refuses ${title}`, (t) => {
    const result = validateRegister({ ...base, ...overrides }, at);
    t.false(result.ok);
    if (!result.ok) {
      t.is(result.error.code, "invalid_argument");
      t.regex(result.error.message, message);
    }
  });
}

test("decodeRegisterRequest equals ts-proto's decode for ordinary metadata keys and keeps a __proto__ key as an own property", (t) => {
  const ordinary = { ...base, metadata: { version: "1.2.3", constructor: "c", "": "empty" } };
  const bytes = RegisterRequest.encode(RegisterRequest.fromPartial(ordinary)).finish();
  t.deepEqual(decodeRegisterRequest(bytes), RegisterRequest.decode(bytes));
  // encode, unlike fromPartial, keeps an own __proto__ key (as a hostile client's encoder would).
  const hostile = RegisterRequest.encode({
    ...RegisterRequest.fromPartial(base),
    metadata: Object.defineProperty({ a: "1" }, "__proto__", { value: "x", enumerable: true }),
  }).finish();
  const decoded = decodeRegisterRequest(hostile);
  t.deepEqual(Object.keys(decoded.metadata), ["a", "__proto__"]);
  t.is(Object.getPrototypeOf(decoded.metadata), Object.prototype);
});

test("validateRegister applies the defaults: weight 1, TTL 10 s, SERVING", (t) => {
  const result = validateRegister(
    { ...base, weight: undefined, ttlSeconds: "0", status: InstanceStatus.INSTANCE_STATUS_UNSPECIFIED },
    at,
  );
  t.like(result, {
    ok: true,
    value: {
      ttlSeconds: 10,
      instance: {
        weight: 1,
        status: InstanceStatus.INSTANCE_STATUS_SERVING,
        registeredAt: at,
        revision: "0",
      },
    },
  });
});

test("validateRegister accepts the limits themselves", (t) => {
  const limits: Partial<RegisterRequest>[] = [
    { weight: 0 },
    { weight: 10_000 },
    { ttlSeconds: "300" },
    { ttlSeconds: "1" }, // etcd raises TTLs below its minimum
    { service: "a".repeat(63), instanceId: "I.d_-9".padEnd(128, "x") },
    { metadata: Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`k${i}`, "v"])) },
    { metadata: { big: "x".repeat(4093) } },
    { address: "[::1]:8080", metricsAddress: "[::1]:9464" },
    { address: "Svc.Example.internal:8080", metricsAddress: "svc.example.internal:9464" },
    { address: "10.0.0.1:80", metricsAddress: "10.0.0.1:9464" },
    { instanceId: "a.-b_", metadata: { "x-y.z": "tab\tand\nnew line, ünïcode" } },
    { address: "0-1.example:80" },
    { status: InstanceStatus.INSTANCE_STATUS_DRAINING },
  ];
  for (const overrides of limits) t.is(errorOf(validateRegister({ ...base, ...overrides }, at)), "(valid)");
});

test("validateRegister accepts a metrics_address on another host only when the registry allows it", (t) => {
  const foreign = { ...base, metricsAddress: "metrics.example:9464" };
  t.regex(errorOf(validateRegister(foreign, at)), /metrics_address: must be on the host of address/);
  t.is(errorOf(validateRegister(foreign, at, { allowForeignMetricsAddress: true })), "(valid)");
});

test("isHostPort accepts DNS names, IPv4 and bracketed IPv6 with ports 1-65535", (t) => {
  for (const good of [
    "localhost:1",
    "10.0.0.1:65535",
    "[::1]:80",
    "[fe80::1%eth0]:80",
    "[::ffff:10.0.0.1]:80",
    "a-b.c:8080",
    "1a.example:80",
  ]) {
    t.true(isHostPort(good), good);
  }
  for (const bad of [
    "localhost",
    "::1:80",
    "[::1]",
    "host:-1",
    "host:http",
    "-host:80",
    "ho st:80",
    "h:123456",
    "999.999.999.999:80",
    "1.2.3:80",
    "1.2.3.4.5:80",
    "01.2.3.4:80",
    "a..b:80",
    ".a:80",
    "a.:80",
    "a.-b:80",
    "[:::::]:80",
    "[::1%]:80",
    "[1.2.3.4]:80",
  ]) {
    t.false(isHostPort(bad), bad);
  }
});

test("fenced requests need a positive lease id, a registration token, a valid name and valid fields", (t) => {
  const token = "t".repeat(43);
  const fenced = {
    service: "calc",
    instanceId: "calc-1",
    leaseId: "7587869923457236737",
    registrationToken: token,
  };
  t.like(validateDeregister(fenced), { ok: true, value: { leaseId: "7587869923457236737" } });
  t.regex(
    errorOf(validateDeregister({ ...fenced, registrationToken: "" })),
    /^invalid_argument: registration_token: required/,
  );
  const tooLong = errorOf(validateDeregister({ ...fenced, registrationToken: "s".repeat(129) }));
  t.regex(tooLong, /^invalid_argument: registration_token: must be at most 128 characters/);
  t.false(tooLong.includes("s".repeat(129)), "the token is never echoed");
  t.regex(
    errorOf(validateKeepAlive({ leaseId: "5", registrationToken: "" })),
    /registration_token: required/,
  );
  t.regex(errorOf(validateDeregister({ ...fenced, leaseId: "0" })), /lease_id: required/);
  t.regex(errorOf(validateDeregister({ ...fenced, leaseId: "-3" })), /lease_id/);
  t.regex(errorOf(validateDeregister({ ...fenced, service: "Bad_Name!" })), /^invalid_argument: service/);
  t.regex(errorOf(validateUpdate({ ...fenced, weight: 10_001, metadata: undefined })), /weight/);
  t.regex(
    errorOf(
      validateUpdate({ ...fenced, status: InstanceStatus.INSTANCE_STATUS_UNSPECIFIED, metadata: undefined }),
    ),
    /status/,
  );
  t.regex(
    errorOf(
      validateUpdate({
        ...fenced,
        metadata: { entries: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, ""])) },
      }),
    ),
    /metadata.entries: at most 32 keys/,
  );
  t.like(validateUpdate({ ...fenced, zone: "", metadata: undefined }), {
    ok: true,
    value: { change: { zone: "" } },
  });
  t.regex(
    errorOf(validateKeepAlive({ leaseId: "abc", registrationToken: token })),
    /lease_id: must be a decimal integer/,
  );
  t.regex(errorOf(validateWatch({ service: "Nope!", startRevision: "0" })), /service/);
  t.regex(errorOf(validateWatch({ service: "", startRevision: "-1" })), /start_revision/);
  t.regex(errorOf(validateDeregister({ ...fenced, instanceId: ".." })), /^invalid_argument: instance_id/);
  t.regex(
    errorOf(validateUpdate({ ...fenced, metadata: { entries: metadataWith("__proto__") } })),
    /^invalid_argument: metadata.entries: key "__proto__" is reserved/,
  );
  t.like(validateWatch({ service: "", startRevision: "12" }), {
    ok: true,
    value: { service: undefined, startRevision: 12n },
  });
});

test("every invalid Register answers INVALID_ARGUMENT naming the field before etcd is touched; a refused duplicate leaves no lease", async (t) => {
  const fixture = await startRegistryFixture();
  t.teardown(() => fixture.close());
  const { client, etcd3 } = fixture;
  const revisionBefore = (await etcd3.get("/leasehold/").exec()).header.revision;
  for (const [title, overrides, message] of invalidRegistrations) {
    const error = await failure(rpc(client).register({ ...base, ...overrides }));
    t.is(error.code, status.INVALID_ARGUMENT, title);
    t.regex(error.details, message, title);
  }
  const fencedError = await failure(
    rpc(client).updateInstance({
      service: "calc",
      instanceId: "calc-1",
      leaseId: "0",
      registrationToken: "t",
      metadata: undefined,
    }),
  );
  t.is(fencedError.code, status.INVALID_ARGUMENT);
  t.is((await etcd3.get("/leasehold/").exec()).header.revision, revisionBefore, "etcd revision unchanged");
  t.deepEqual((await etcd3.leaseClient.leaseLeases()).leases, [], "no lease granted");

  const held = await rpc(client).register(base);
  const duplicate = await failure(rpc(client).register({ ...base, address: "10.0.0.2:80" }));
  t.is(duplicate.code, status.ALREADY_EXISTS);
  t.deepEqual(
    (await etcd3.leaseClient.leaseLeases()).leases.map((lease) => lease.ID),
    [held.leaseId],
    "the lease granted for the refused duplicate was revoked",
  );
});

test("every bad GetService or Watch argument answers INVALID_ARGUMENT naming the field", async (t) => {
  const { client } = await startFixtureFor(t);
  const badNames: [string, RegExp][] = [
    ["", /^service: required/],
    ["Bad_Name!", /^service: must be a DNS-1123 label/],
    ["-calc", /^service:/],
    ["a".repeat(64), /^service:/],
    ["..", /^service:/],
    ["calc\u0000", /^service:/],
  ];
  for (const [service, message] of badNames) {
    const error = await failure(rpc(client).getService({ service }));
    t.is(error.code, status.INVALID_ARGUMENT, `GetService ${JSON.stringify(service)}`);
    t.regex(error.details, message, `GetService ${JSON.stringify(service)}`);
  }
  const badWatches: (readonly [Partial<WatchRequest>, RegExp])[] = [
    ...badNames
      .filter(([service]) => service !== "")
      .map(([service, message]) => [{ service }, message] as const),
    [{ service: "calc", startRevision: "-1" }, /^start_revision: must not be negative/],
  ];
  for (const [request, message] of badWatches) {
    const watch = new WatchRecorder(client, request);
    const ended = await watch.until((recorder) => recorder.ended, `Watch ${JSON.stringify(request)} ends`);
    t.is(ended?.code, status.INVALID_ARGUMENT, JSON.stringify(request));
    t.regex(ended?.details ?? "", message, JSON.stringify(request));
    t.deepEqual(watch.messages, [], "no snapshot before the refusal");
  }
});

test("UpdateInstance refuses a __proto__ metadata key sent on the wire, naming it, and leaves the instance as it was", async (t) => {
  const { client, etcd3 } = await startFixtureFor(t);
  const held = await rpc(client).register({ ...base, metadata: { a: "1" } });
  const fenced = {
    service: base.service,
    instanceId: base.instanceId,
    leaseId: held.leaseId,
    registrationToken: held.registrationToken,
  };
  const error = await failure(
    rpc(client).updateInstance({ ...fenced, metadata: { entries: metadataWith("__proto__") } }),
  );
  t.is(error.code, status.INVALID_ARGUMENT);
  t.regex(error.details, /^metadata.entries: key "__proto__" is reserved/);
  const stored = await etcd3.get(`/leasehold/v1/services/${base.service}/${base.instanceId}`).json();
  t.like(stored, { metadata: { a: "1" } });
  t.is(Object.getPrototypeOf((stored as { metadata: object }).metadata), Object.prototype);
});

test("a request whose bytes are not its message answers INVALID_ARGUMENT naming the message, not INTERNAL", async (t) => {
  const { registry } = await startFixtureFor(t);
  const raw = new Client(registry.address, credentials.createInsecure());
  t.teardown(() => raw.close());
  // Field 1 (service) announces 5 bytes and brings 1.
  const truncated = Buffer.from([0x0a, 0x05, 0x61]);
  const identity = (bytes: Buffer): Buffer => bytes;
  const path = "/leasehold.registry.v1.RegistryService/";
  for (const method of ["GetService", "Register", "UpdateInstance", "Deregister"]) {
    const error = await new Promise<ServiceError | null>((resolve) => {
      raw.makeUnaryRequest(`${path}${method}`, identity, identity, truncated, (e) => resolve(e));
    });
    t.is(error?.code, status.INVALID_ARGUMENT, method);
    t.regex(
      error?.details ?? "",
      new RegExp(`^request: not a valid leasehold\\.registry\\.v1\\.${method}Request message`),
    );
  }
  const watch = raw.makeServerStreamRequest(`${path}Watch`, identity, identity, truncated);
  watch.on("data", () => t.fail("no message before the refusal"));
  const ended = await new Promise<ServiceError>((resolve) => watch.on("error", resolve));
  t.is(ended.code, status.INVALID_ARGUMENT);
  t.regex(ended.details, /^request: not a valid leasehold\.registry\.v1\.WatchRequest message/);
});
