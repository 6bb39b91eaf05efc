import {
  credentials,
  Metadata,
  Server,
  ServerCredentials,
  status,
  type ServiceError,
  type StatusObject,
} from "@grpc/grpc-js";
import test, { type ExecutionContext } from "ava";
import { followRedirect, REDIRECT_METADATA_KEY } from "../client/redirect/follow-redirect.js";
import {
  EchoServiceClient,
  EchoServiceService,
  type EchoResponse,
  type EchoServiceServer,
} from "../proto/gen/leasehold/demo/v1/echo.js";
import { echo } from "../services/echo.js";

/** An echo server whose Echo redirects to `redirectTo()` when it returns an address. */
async function echoServer(
  t: ExecutionContext,
  instanceId: string,
  redirectTo: () => string | undefined,
): Promise<{ address: string; calls: number }> {
  const server = new Server();
  const state = { address: "", calls: 0 };
  const plain = echo.implement(instanceId) as EchoServiceServer;
  const implementation: EchoServiceServer = {
    ...plain,
    echo: (call, callback) => {
      state.calls += 1;
      const target = redirectTo();
      if (target === undefined) return plain.echo(call, callback);
      const trailer = new Metadata();
      trailer.set(REDIRECT_METADATA_KEY, target);
      callback({
        code: status.FAILED_PRECONDITION,
        details: `not here; try ${target}`,
        metadata: trailer,
      });
    },
  };
  server.addService(EchoServiceService, implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  state.address = `127.0.0.1:${port}`;
  t.teardown(() => void server.forceShutdown());
  return state;
}

async function callEcho(
  client: EchoServiceClient,
  message: string,
  metadata = new Metadata(),
): Promise<EchoResponse> {
  return await new Promise<EchoResponse>((resolve, reject) =>
    client.echo({ message }, metadata, { deadline: Date.now() + 5000 }, (error, response) =>
      error === null ? resolve(response) : reject(error),
    ),
  );
}

test("followRedirect resends a redirected unary call once to the named address, with its message and metadata", async (t) => {
  const target = await echoServer(t, "primary", () => undefined);
  const backup = await echoServer(t, "backup", () => target.address);
  const redirects: string[] = [];
  const interceptor = followRedirect({
    onRedirect: (address, path) => redirects.push(`${path} → ${address}`),
  });
  const client = new EchoServiceClient(backup.address, credentials.createInsecure(), {
    interceptors: [interceptor],
  });
  t.teardown(() => {
    client.close();
    interceptor.close();
  });
  const metadata = new Metadata();
  metadata.set("x-trace", "abc");
  const response = await callEcho(client, "hello", metadata);
  t.deepEqual(
    [response.message, response.instanceId, response.headers["x-trace"]],
    ["hello", "primary", "abc"],
  );
  t.deepEqual(redirects, [`/leasehold.demo.v1.EchoService/Echo → ${target.address}`]);
  t.deepEqual([backup.calls, target.calls], [1, 1]);
});

test("followRedirect follows one redirect only: a second one reaches the caller as FAILED_PRECONDITION", async (t) => {
  const second = { address: "" };
  const first = await echoServer(t, "first", () => second.address);
  const other = await echoServer(t, "second", () => first.address);
  second.address = other.address;
  const interceptor = followRedirect();
  const client = new EchoServiceClient(first.address, credentials.createInsecure(), {
    interceptors: [interceptor],
  });
  t.teardown(() => {
    client.close();
    interceptor.close();
  });
  const error = await t.throwsAsync(callEcho(client, "loop"));
  t.is((error as ServiceError).code, status.FAILED_PRECONDITION);
  t.deepEqual([first.calls, other.calls], [1, 1]);
});

test("followRedirect leaves other failures alone: FAILED_PRECONDITION without the trailer is not followed", async (t) => {
  const server = await echoServer(t, "plain", () => "");
  const interceptor = followRedirect();
  const client = new EchoServiceClient(server.address, credentials.createInsecure(), {
    interceptors: [interceptor],
  });
  t.teardown(() => {
    client.close();
    interceptor.close();
  });
  const error = await t.throwsAsync(callEcho(client, "x"));
  t.is((error as ServiceError).code, status.FAILED_PRECONDITION);
  t.is(server.calls, 1);
});

test("followRedirect ends a redirected call that succeeds with the second answer's trailers, not the refusal's redirect", async (t) => {
  const target = await echoServer(t, "primary", () => undefined);
  const backup = await echoServer(t, "backup", () => target.address);
  const interceptor = followRedirect();
  const client = new EchoServiceClient(backup.address, credentials.createInsecure(), {
    interceptors: [interceptor],
  });
  t.teardown(() => {
    client.close();
    interceptor.close();
  });
  const ended = await new Promise<StatusObject>((resolve, reject) =>
    client
      .echo({ message: "hi" }, new Metadata(), { deadline: Date.now() + 5000 }, (error) => {
        if (error !== null) reject(error);
      })
      .on("status", resolve),
  );
  t.is(ended.code, status.OK);
  t.deepEqual(ended.metadata.get(REDIRECT_METADATA_KEY), []);
  t.deepEqual([backup.calls, target.calls], [1, 1]);
});
