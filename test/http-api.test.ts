import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { promisify } from "node:util";
import anyTest, { type TestFn } from "ava";
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { RegistryService } from "../proto/gen/leasehold/registry/v1/registry_pb.js";
import { hashToken } from "../registry/auth/registry-auth.js";
import {
  registration,
  rpc,
  startRegistryFixture,
  failure,
  type RegistryFixture,
} from "./helpers/registry-fixture.js";

const test = anyTest as TestFn<RegistryFixture & { base: string }>;

test.before(async (t) => {
  const fixture = await startRegistryFixture({ adminListen: "127.0.0.1:0" });
  t.context = {
    ...fixture,
    base: `http://${fixture.registry.adminAddress}/leasehold.registry.v1.RegistryService`,
  };
});
test.after.always(async (t) => {
  await t.context.close?.();
});

type Json = Record<string, unknown>;

/**
 * POSTs `body` as JSON to `base/method` (Connect's unary protocol), with `token` as a bearer token
 * if given; the status and the parsed answer.
 */
async function call(
  base: string,
  method: string,
  body: unknown,
  token?: string,
): Promise<{ status: number; json: Json }> {
  const response = await fetch(`${base}/${method}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token !== undefined && { authorization: `Bearer ${token}` }),
    },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: (text === "" ? {} : JSON.parse(text)) as Json };
}

/** One server-sent event as a client sees it. */
interface ServerSentEvent {
  event: string;
  id: string | undefined;
  data: Json;
}

/** Reads server-sent events from a fetch response body, one at a time (comments and `retry:` skipped). */
class EventReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #buffer = "";

  constructor(response: Response) {
    if (response.body === null) throw new Error("no body");
    this.#reader = response.body.getReader();
  }

  async next(): Promise<ServerSentEvent> {
    for (;;) {
      const end = this.#buffer.indexOf("\n\n");
      if (end >= 0) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const fields = new Map(
          block
            .split("\n")
            .map((line) => [line.slice(0, line.indexOf(":")), line.slice(line.indexOf(":") + 2)]),
        );
        if (!fields.has("data")) continue;
        return {
          event: fields.get("event") ?? "message",
          id: fields.get("id"),
          data: JSON.parse(fields.get("data") ?? "") as Json,
        };
      }
      const { value, done } = await this.#reader.read();
      if (done) throw new Error("event stream ended");
      this.#buffer += this.#decoder.decode(value, { stream: true });
    }
  }

  /** The next event that is not `progress`. */
  async nextChange(): Promise<ServerSentEvent> {
    for (;;) {
      const event = await this.next();
      if (event.event !== "progress") return event;
    }
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel();
  }
}

test("register, keep alive, update, get, list and deregister an instance through the HTTP API with fetch", async (t) => {
  const { base } = t.context;
  const registered = await call(base, "Register", {
    service: "calc",
    instanceId: "calc-1",
    address: "127.0.0.1:9001",
    weight: 2,
    metadata: { version: "1.2.0" },
    ttlSeconds: "5",
  });
  t.is(registered.status, 200, JSON.stringify(registered.json));
  const leaseId = registered.json["leaseId"] as string;
  t.regex(leaseId, /^\d+$/, "lease id is a decimal string (int64 in proto3 JSON)");
  const registrationToken = registered.json["registrationToken"] as string;
  t.true(registrationToken.length > 0, "Register returns the registration token");
  t.is(registered.json["ttlSeconds"], "5");
  t.like(registered.json["instance"], {
    service: "calc",
    instanceId: "calc-1",
    weight: 2,
    status: "INSTANCE_STATUS_SERVING",
  });

  const kept = await call(base, "KeepAlive", { leaseId, registrationToken });
  t.is(kept.status, 200, JSON.stringify(kept.json));
  t.is(kept.json["leaseId"], leaseId);
  t.true(Number(kept.json["ttlSeconds"]) > 0);

  const updated = await call(base, "UpdateInstance", {
    service: "calc",
    instanceId: "calc-1",
    leaseId,
    registrationToken,
    status: "INSTANCE_STATUS_DRAINING",
  });
  t.is(updated.status, 200, JSON.stringify(updated.json));
  t.is((updated.json["instance"] as Json)["status"], "INSTANCE_STATUS_DRAINING");

  const got = await call(base, "GetService", { service: "calc" });
  t.is(got.status, 200);
  t.deepEqual(
    (got.json["instances"] as Json[]).map((instance) => [instance["instanceId"], instance["status"]]),
    [["calc-1", "INSTANCE_STATUS_DRAINING"]],
  );
  // The gRPC API sees the same instance: one store, one implementation.
  const viaGrpc = await rpc(t.context.client).getService({ service: "calc" });
  t.deepEqual(
    viaGrpc.instances.map((instance) => [instance.instanceId, instance.weight]),
    [["calc-1", 2]],
  );

  const listed = await call(base, "ListServices", {});
  t.deepEqual(
    (listed.json["services"] as Json[]).find((summary) => summary["service"] === "calc"),
    { service: "calc", instances: 1, serving: 0, draining: 1 },
  );

  const deregistered = await call(base, "Deregister", {
    service: "calc",
    instanceId: "calc-1",
    leaseId,
    registrationToken,
  });
  t.is(deregistered.status, 200, JSON.stringify(deregistered.json));
  t.deepEqual((await call(base, "GetService", { service: "calc" })).json["instances"], []);

  const lost = await call(base, "KeepAlive", { leaseId, registrationToken });
  t.is(lost.status, 404);
  t.is(lost.json["code"], "not_found");
  t.regex(lost.json["message"] as string, /register again/);
});

test("curl (with its default content type) registers, keeps alive, lists and deregisters an instance", async (t) => {
  const { base } = t.context;
  const curl = async (method: string, body: unknown): Promise<{ status: number; json: Json }> => {
    const { stdout } = await promisify(execFile)("curl", [
      "--silent",
      "--show-error",
      "--write-out",
      "\n%{http_code}",
      "-d", // no content-type: curl's default form type is read as JSON
      JSON.stringify(body),
      `${base}/${method}`,
    ]);
    const lines = stdout.trimEnd().split("\n");
    return { status: Number(lines.pop()), json: JSON.parse(lines.join("\n")) as Json };
  };
  const registered = await curl("Register", {
    service: "curl-svc",
    instance_id: "c-1",
    address: "10.0.0.7:8080",
  });
  t.is(registered.status, 200, JSON.stringify(registered.json));
  const leaseId = registered.json["leaseId"] as string;
  t.is(registered.json["ttlSeconds"], "10", "the default TTL");

  const token = registered.json["registrationToken"] as string;
  const kept = await curl("KeepAlive", { lease_id: leaseId, registration_token: token });
  t.is(kept.status, 200);
  t.true(Number(kept.json["ttlSeconds"]) > 0);

  const listed = await curl("ListServices", {});
  t.like(
    (listed.json["services"] as Json[]).find((s) => s["service"] === "curl-svc"),
    { instances: 1, serving: 1 },
  );

  const deregistered = await curl("Deregister", {
    service: "curl-svc",
    instance_id: "c-1",
    lease_id: leaseId,
    registration_token: token,
  });
  t.is(deregistered.status, 200);
  t.regex(deregistered.json["revision"] as string, /^\d+$/);
  const after = await curl("GetService", { service: "curl-svc" });
  t.deepEqual(after.json["instances"], []);
});

test("a bad body is answered 400 invalid_argument naming the field, with the gRPC API's own message", async (t) => {
  const { base } = t.context;
  const missing = await call(base, "Register", { service: "calc", instanceId: "x-1", address: "" });
  t.is(missing.status, 400);
  t.is(missing.json["code"], "invalid_argument");
  t.regex(missing.json["message"] as string, /^address: /);
  const grpc = await failure(
    rpc(t.context.client).register(registration({ service: "calc", instanceId: "x-1", address: "" })),
  );
  t.is(grpc.details, missing.json["message"] as string, "the same validation behind both APIs");

  const tooHeavy = await call(base, "Register", {
    service: "calc",
    instanceId: "x-1",
    address: "h:1",
    weight: 10_001,
  });
  t.is(tooHeavy.status, 400);
  t.regex(tooHeavy.json["message"] as string, /^weight: /);

  // Bodies that are not a RegisterRequest in proto3 JSON: the parser names the field.
  const wrongType = await call(base, "Register", { service: "calc", weight: "heavy" });
  t.is(wrongType.status, 400);
  t.regex(wrongType.json["message"] as string, /RegisterRequest\.weight/);
  const unknownField = await call(base, "Register", { service: "calc", adress: "h:1" });
  t.is(unknownField.status, 400);
  t.regex(unknownField.json["message"] as string, /adress/);
  const notJson = await call(base, "Register", "{not json");
  t.is(notJson.status, 400);
  t.is(notJson.json["code"], "invalid_argument");
});

test("an unknown method is 404, and a write with the wrong registration token is refused 403 as over gRPC", async (t) => {
  const { base } = t.context;
  const unknown = await fetch(`${base}/Reboot`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  });
  t.is(unknown.status, 404);
  const body = (await unknown.json()) as Json;
  t.is(body["code"], "not_found");
  t.regex(body["message"] as string, /unknown method; .* has Register, KeepAlive, /);

  const registered = await call(base, "Register", { service: "fenced", instanceId: "f-1", address: "h:1" });
  const wrongToken = await call(base, "Deregister", {
    service: "fenced",
    instanceId: "f-1",
    leaseId: registered.json["leaseId"],
    registrationToken: "not-the-token",
  });
  t.is(wrongToken.status, 403);
  t.is(wrongToken.json["code"], "permission_denied");
  t.is(
    (
      await call(base, "Deregister", {
        service: "fenced",
        instanceId: "f-1",
        leaseId: registered.json["leaseId"],
        registrationToken: registered.json["registrationToken"],
      })
    ).status,
    200,
  );
});

test("Watch over server-sent events: a snapshot, then a delta when an instance registers over gRPC; Last-Event-ID resumes after a revision", async (t) => {
  const { base, client } = t.context;
  const first = await call(base, "Register", { service: "watched", instanceId: "w-1", address: "h:1" });
  const response = await fetch(`${base}/Watch?service=watched`, { headers: { accept: "text/event-stream" } });
  t.is(response.status, 200);
  t.regex(response.headers.get("content-type") ?? "", /^text\/event-stream/);
  const events = new EventReader(response);
  t.teardown(() => events.cancel());

  const snapshot = await events.nextChange();
  t.is(snapshot.event, "snapshot");
  const snapshotBody = snapshot.data["snapshot"] as Json;
  t.deepEqual(
    (snapshotBody["instances"] as Json[]).map((instance) => instance["instanceId"]),
    ["w-1"],
  );
  t.is(snapshot.id, snapshotBody["revision"] as string, "the event id is the revision");
  t.true(BigInt(snapshot.id ?? 0) >= BigInt(first.json["revision"] as string), "read after w-1's put");

  const second = await rpc(client).register(registration({ service: "watched", instanceId: "w-2" }));
  const delta = await events.nextChange();
  t.is(delta.event, "delta");
  const deltaBody = delta.data["delta"] as Json;
  t.deepEqual(
    (deltaBody["upserted"] as Json[]).map((instance) => instance["instanceId"]),
    ["w-2"],
  );
  t.is(delta.id, second.revision);

  // An EventSource that reconnects sends the last id it saw: the stream resumes after it, no snapshot.
  const resumed = await fetch(`${base}/Watch?service=watched`, {
    headers: { accept: "text/event-stream", "last-event-id": snapshot.id ?? "" },
  });
  const resumedEvents = new EventReader(resumed);
  t.teardown(() => resumedEvents.cancel());
  const replayed = await resumedEvents.nextChange();
  t.is(replayed.event, "delta");
  t.is(replayed.id, second.revision);
});

test("Watch with a bad service name or a non-bool split_snapshots is answered 400 before any event; splitSnapshots=true is read as a bool", async (t) => {
  const response = await fetch(`${t.context.base}/Watch?service=Not_A_Label`, {
    headers: { accept: "text/event-stream" },
  });
  t.is(response.status, 400);
  const body = (await response.json()) as Json;
  t.is(body["code"], "invalid_argument");
  t.regex(body["message"] as string, /^service: /);

  const notBool = await fetch(`${t.context.base}/Watch?split_snapshots=1`);
  t.is(notBool.status, 400);
  t.regex(((await notBool.json()) as Json)["message"] as string, /WatchRequest\.split_snapshots/);
  // A bool field takes true/false from the query.
  const split = await fetch(`${t.context.base}/Watch?splitSnapshots=true`);
  const events = new EventReader(split);
  t.teardown(() => events.cancel());
  t.like((await events.nextChange()).data["snapshot"], { hasMore: false });
});

test("a Connect client (connect-node, HTTP/1.1) registers and streams Watch: a snapshot, then the delta of a gRPC registration", async (t) => {
  const { registry, client: grpcClient } = t.context;
  const connect: Client<typeof RegistryService> = createClient(
    RegistryService,
    createConnectTransport({ baseUrl: `http://${registry.adminAddress}`, httpVersion: "1.1" }),
  );
  const registered = await connect.register({ service: "connect-svc", instanceId: "k-1", address: "h:1" });
  t.true(registered.leaseId > 0n);
  const abort = new AbortController();
  t.teardown(() => abort.abort());
  const stream = connect.watch({ service: "connect-svc" }, { signal: abort.signal })[Symbol.asyncIterator]();
  const nextChange = async () => {
    for (;;) {
      const result = await stream.next();
      if (result.done === true) throw new Error("Watch ended");
      if (result.value.event.case !== "progress") return result.value.event;
    }
  };
  const snapshot = await nextChange();
  t.is(snapshot.case, "snapshot");
  t.deepEqual(
    snapshot.case === "snapshot" ? snapshot.value.instances.map((instance) => instance.instanceId) : [],
    ["k-1"],
  );
  const second = await rpc(grpcClient).register(registration({ service: "connect-svc", instanceId: "k-2" }));
  const delta = await nextChange();
  t.is(delta.case, "delta");
  if (delta.case === "delta") {
    t.deepEqual(
      delta.value.upserted.map((instance) => instance.instanceId),
      ["k-2"],
    );
    t.is(String(delta.value.revision), second.revision);
  }
  abort.abort();
  // Messages already received may still come out; then the stream ends (Connect reports `canceled`).
  let ending: unknown;
  for (;;) {
    const result = await stream.next().catch((error: unknown) => ((ending = error), { done: true as const }));
    if (result.done === true) break;
  }
  t.true(ending === undefined || ending instanceof ConnectError, "the aborted stream ends");
});

test("a Watch event stream the registry ends (shutdown) sends an error event with the code first", async (t) => {
  const fixture = await startRegistryFixture({ adminListen: "127.0.0.1:0" });
  t.teardown(() => fixture.close());
  const response = await fetch(
    `http://${fixture.registry.adminAddress}/leasehold.registry.v1.RegistryService/Watch`,
  );
  const events = new EventReader(response);
  t.is((await events.nextChange()).event, "snapshot");
  const closed = fixture.registry.close();
  const ended = await events.nextChange();
  await closed;
  t.is(ended.event, "error");
  t.like(ended.data, { code: "unavailable" });
  t.regex(ended.data["message"] as string, /shutting down/);
});

test("the README's HTTP API example (curl and jq) runs against a real registry", async (t) => {
  const readme = await readFile(new URL("../README.md", import.meta.url), "utf8");
  const script =
    /<!-- http-api-example:start -->\s*```sh\n([\s\S]*?)```\s*<!-- http-api-example:end -->/.exec(
      readme,
    )?.[1];
  if (script === undefined) return t.fail("README has the HTTP API example block");
  const fixture = await startRegistryFixture({ adminListen: "127.0.0.1:0" });
  t.teardown(() => fixture.close());
  const { stdout } = await promisify(execFile)(
    "bash",
    [
      "-euo",
      "pipefail",
      "-c",
      script.replace("http://127.0.0.1:7101", `http://${fixture.registry.adminAddress}`),
    ],
    { timeout: 30_000 },
  );
  const [kept, listed, got, updated, deregistered, ...rest] = stdout
    .trimEnd()
    .split("\n")
    .map((line) => JSON.parse(line) as Json);
  t.deepEqual(rest, []);
  t.like(kept, { ttlSeconds: "30" });
  t.like(listed, { services: [{ service: "calc", instances: 1, serving: 1, draining: 0 }] });
  t.like((got?.["instances"] as Json[])[0], { instanceId: "calc-1", address: "10.0.0.7:8080" });
  t.like(updated?.["instance"], { weight: 5 });
  t.regex(deregistered?.["revision"] as string, /^\d+$/);
  t.deepEqual((await rpc(fixture.client).getService({ service: "calc" })).instances, []);
});

test("hostile bodies: over 64 KiB, or a gzip body that inflates past it, are refused 429 resource_exhausted; a body that does not inflate is 400", async (t) => {
  const { base } = t.context;
  const post = async (body: Uint8Array | string, headers: Record<string, string> = {}) => {
    const response = await fetch(`${base}/Register`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body,
    });
    return { status: response.status, json: (await response.json()) as Json };
  };
  const oversized = await post(JSON.stringify({ service: "calc", zone: "a".repeat(100_000) }));
  t.is(oversized.status, 429);
  t.is(oversized.json["code"], "resource_exhausted");
  const bomb = gzipSync(JSON.stringify({ service: "calc", zone: "a".repeat(10_000_000) }));
  t.true(bomb.length < 64 * 1024, "the compressed body itself is small");
  const inflated = await post(bomb, { "content-encoding": "gzip" });
  t.is(inflated.status, 429);
  t.regex(inflated.json["message"] as string, /readMaxBytes 65536 after decompression/);
  const notGzip = await post("{}", { "content-encoding": "gzip" });
  t.is(notGzip.status, 400);
  t.is(notGzip.json["code"], "invalid_argument");
});

test("with auth on, an anonymous HTTP Register is 401 unauthenticated and a write to another principal's service or lease is 403 permission_denied", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "leasehold-http-auth-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const tokens = { alice: "alice-http-token-1", bob: "bob-http-token-2" };
  const policyFile = join(dir, "policy.json");
  const tokensFile = join(dir, "tokens");
  await writeFile(
    policyFile,
    JSON.stringify({
      principals: { alice: { services: ["alpha"], read: true }, bob: { services: ["beta"], read: true } },
    }),
  );
  await writeFile(tokensFile, `alice ${hashToken(tokens.alice)}\nbob ${hashToken(tokens.bob)}\n`);
  const fixture = await startRegistryFixture({
    adminListen: "127.0.0.1:0",
    authPolicyFile: policyFile,
    authTokensFile: tokensFile,
  });
  t.teardown(() => fixture.close());
  const base = `http://${fixture.registry.adminAddress}/leasehold.registry.v1.RegistryService`;
  const instance = { service: "alpha", instanceId: "a-1", address: "127.0.0.1:9301", ttlSeconds: "10" };

  const anonymous = await call(base, "Register", instance);
  t.is(anonymous.status, 401, JSON.stringify(anonymous.json));
  t.is(anonymous.json["code"], "unauthenticated");
  const forged = await call(base, "Register", instance, "not-a-listed-token");
  t.is(forged.status, 401);
  t.is(forged.json["message"], "unknown bearer token");
  t.deepEqual((await call(base, "GetService", { service: "alpha" })).json["instances"], []);

  const intruder = await call(base, "Register", instance, tokens.bob);
  t.is(intruder.status, 403, JSON.stringify(intruder.json));
  t.is(intruder.json["code"], "permission_denied");
  t.regex(intruder.json["message"] as string, /principal bob may not register into alpha/);

  const registered = await call(base, "Register", instance, tokens.alice);
  t.is(registered.status, 200, JSON.stringify(registered.json));
  const fence = {
    leaseId: registered.json["leaseId"] as string,
    registrationToken: registered.json["registrationToken"] as string,
  };
  // bob holds alice's lease id and token, and still may not renew or remove her instance.
  const renewed = await call(base, "KeepAlive", fence, tokens.bob);
  t.is(renewed.status, 403, JSON.stringify(renewed.json));
  t.regex(renewed.json["message"] as string, /another principal/);
  const removed = await call(
    base,
    "Deregister",
    { service: "alpha", instanceId: "a-1", ...fence },
    tokens.bob,
  );
  t.is(removed.status, 403, JSON.stringify(removed.json));
  t.is((await call(base, "KeepAlive", fence, tokens.alice)).status, 200);
  const listed = await call(base, "GetService", { service: "alpha" });
  t.deepEqual(
    (listed.json["instances"] as Json[]).map((listed) => listed["instanceId"]),
    ["a-1"],
  );
});
