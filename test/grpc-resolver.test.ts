/**
 * Stock grpc-js clients on `leasehold:///SERVICE` (issue 5): a ts-proto client and a
 * `@grpc/proto-loader` client, against a real etcd, a real registry and real demo instances,
 * balanced by Leasehold's load balancers inside grpc-js.
 */
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import anyTest, { type ExecutionContext, type TestFn } from "ava";
import net from "node:net";
import { fileURLToPath } from "node:url";
import { Registry } from "prom-client";
import { createBalancedClient } from "../client/balancing/balanced-client.js";
import type { LeaseholdError } from "../client/errors.js";
import { ClientMetrics } from "../client/metrics/client-metrics.js";
import { registerLeasehold } from "../client/leasehold.js";
import { CalculatorServiceClient } from "../proto/gen/leasehold/demo/v1/calculator.js";
import {
  EchoServiceClient,
  EchoServiceService,
  type EchoRequest,
  type EchoResponse,
  type EchoStreamRequest,
} from "../proto/gen/leasehold/demo/v1/echo.js";
import { DEMO_SERVICES } from "../services/index.js";
import { startServiceInstance, type ServiceInstance } from "../services/service-host.js";
import { eventually } from "./helpers/eventually.js";
import { startRegistryFixture, type RegistryFixture } from "./helpers/registry-fixture.js";

const test = anyTest as TestFn<RegistryFixture>;
const instances: ServiceInstance[] = [];
const metricsRegistry = new Registry();

/** What the tests need of an echo client, whichever generator made it. */
interface EchoLike extends grpc.Client {
  echo(
    request: EchoRequest,
    metadata: grpc.Metadata,
    callback: (error: grpc.ServiceError | null, response?: EchoResponse) => void,
  ): grpc.ClientUnaryCall;
  echoStream(request: EchoStreamRequest, metadata?: grpc.Metadata): grpc.ClientReadableStream<EchoResponse>;
  echoChat(metadata?: grpc.Metadata): grpc.ClientDuplexStream<EchoRequest, EchoResponse>;
}

const WRR_SERVICE_CONFIG = JSON.stringify({ loadBalancingConfig: [{ leasehold_weighted_round_robin: {} }] });

test.before(async (t) => {
  t.context = await startRegistryFixture();
  registerLeasehold({ registry: t.context.registry.address, metrics: new ClientMetrics(metricsRegistry) });
  for (const service of ["calculator", "echo"] as const) {
    for (const weight of [1, 2, 3]) {
      instances.push(
        await startServiceInstance(DEMO_SERVICES[service] as never, {
          registry: t.context.registry.address,
          instanceId: `${service.slice(0, 4)}-${weight}`,
          weight,
          listen: "127.0.0.1:0",
          drainMs: 0,
        }),
      );
    }
  }
});

test.after.always(async (t) => {
  await Promise.all(instances.map((instance) => instance.shutdown()));
  await t.context.close?.();
});

function unary(
  client: EchoLike,
  request: EchoRequest,
  metadata = new grpc.Metadata(),
): Promise<EchoResponse> {
  return new Promise((resolve, reject) =>
    client.echo(request, metadata, (error, response) =>
      error === null && response !== undefined
        ? resolve(response)
        : reject(error ?? new Error("no response")),
    ),
  );
}

async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const messages: T[] = [];
  for await (const message of stream) messages.push(message);
  return messages;
}

/** Calls until every weighted instance answered once, so all three subchannels are READY. */
async function warmUp(call: () => Promise<string>, ids: readonly string[]): Promise<void> {
  const seen = new Set<string>();
  await eventually(
    async () => {
      seen.add(await call());
      return ids.every((id) => seen.has(id));
    },
    { what: `answers from ${ids.join(", ")}`, intervalMs: 1 },
  );
}

function tally(ids: readonly string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const id of ids) counts[id] = (counts[id] ?? 0) + 1;
  return counts;
}

/** 600 unary calls, 18 server streams, 12 bidi streams and a header, on one echo client. */
async function exerciseEcho(t: ExecutionContext, client: EchoLike): Promise<void> {
  await warmUp(
    async () => (await unary(client, { message: "warm" })).instanceId,
    ["echo-1", "echo-2", "echo-3"],
  );
  const answers: string[] = [];
  for (let batch = 0; batch < 12; batch++) {
    const batchAnswers = await Promise.all(Array.from({ length: 50 }, () => unary(client, { message: "w" })));
    answers.push(...batchAnswers.map((answer) => answer.instanceId));
  }
  t.deepEqual(tally(answers), { "echo-1": 100, "echo-2": 200, "echo-3": 300 }, "600 unary calls split 1:2:3");

  const streamOwners: string[] = [];
  for (let i = 0; i < 18; i++) {
    const messages = await collect<EchoResponse>(client.echoStream({ message: `s${i}`, count: 3 }));
    t.is(messages.length, 3);
    t.is(new Set(messages.map((message) => message.instanceId)).size, 1, "one stream, one instance");
    streamOwners.push(messages[0]?.instanceId ?? "");
  }
  t.deepEqual(tally(streamOwners), { "echo-1": 3, "echo-2": 6, "echo-3": 9 }, "server streams split 1:2:3");

  const chatOwners: string[] = [];
  for (let i = 0; i < 12; i++) {
    const chat = client.echoChat();
    chat.write({ message: "hello" });
    chat.write({ message: "again" });
    chat.end();
    const replies = await collect<EchoResponse>(chat);
    t.deepEqual(
      replies.map((reply) => reply.message),
      ["hello", "again"],
    );
    chatOwners.push(replies[0]?.instanceId ?? "");
  }
  t.deepEqual(tally(chatOwners), { "echo-1": 2, "echo-2": 4, "echo-3": 6 }, "bidi streams split 1:2:3");

  const metadata = new grpc.Metadata();
  metadata.set("x-tenant", "acme");
  const { headers } = await unary(client, { message: "h" }, metadata);
  t.is(headers["x-tenant"], "acme", "caller metadata reaches the instance");
  t.false("leasehold-exclude" in headers, "Leasehold's own pick hint is never sent");
}

test.serial(
  "a ts-proto client on leasehold:///echo balances unary, server-streaming and bidi calls by weight",
  async (t) => {
    const client = new EchoServiceClient("leasehold:///echo", grpc.credentials.createInsecure(), {
      "grpc.service_config": WRR_SERVICE_CONFIG,
    }) as unknown as EchoLike;
    t.teardown(() => client.close());
    await exerciseEcho(t, client);
  },
);

test.serial(
  "a @grpc/proto-loader client on leasehold:///echo balances unary, server-streaming and bidi calls by weight",
  async (t) => {
    const definition = loadSync("leasehold/demo/v1/echo.proto", {
      includeDirs: [fileURLToPath(new URL("../proto/", import.meta.url))],
    });
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      leasehold: { demo: { v1: { EchoService: grpc.ServiceClientConstructor } } };
    };
    const EchoService = loaded.leasehold.demo.v1.EchoService;
    // proto-loader clients name methods as in the .proto (`Echo`) and return snake_case-free
    // objects with `keepCase: false`; map them onto the shape the exercise uses.
    const raw = new EchoService("leasehold:///echo", grpc.credentials.createInsecure(), {
      "leasehold.policy": "weighted_round_robin",
    }) as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
    t.teardown(() => raw.close());
    const client = Object.assign(Object.create(raw) as object, {
      echo: (
        request: EchoRequest,
        metadata: grpc.Metadata,
        callback: (error: grpc.ServiceError | null, response?: EchoResponse) => void,
      ) =>
        raw["Echo"]?.(request, metadata, (error: grpc.ServiceError | null, response?: EchoResponse) =>
          callback(
            error,
            response === undefined ? undefined : { ...response, headers: response.headers ?? {} },
          ),
        ),
      echoStream: (request: EchoStreamRequest) => raw["EchoStream"]?.(request),
      echoChat: () => raw["EchoChat"]?.(),
    }) as EchoLike;
    await exerciseEcho(t, client);
  },
);

test.serial(
  "a ts-proto calculator client gives exactly 100/200/300 of 600 calls against weights 1, 2, 3, and interceptors run",
  async (t) => {
    let intercepted = 0;
    const countingInterceptor: grpc.Interceptor = (options, nextCall) => {
      intercepted++;
      return new grpc.InterceptingCall(nextCall(options));
    };
    const client = new CalculatorServiceClient("leasehold:///calculator", grpc.credentials.createInsecure(), {
      "leasehold.policy": "weighted_round_robin",
      interceptors: [countingInterceptor],
    });
    t.teardown(() => client.close());
    const add = (): Promise<string> =>
      new Promise((resolve, reject) =>
        client.add({ a: 1, b: 2 }, (error, response) =>
          error === null ? resolve(response.instanceId) : reject(error),
        ),
      );
    await warmUp(add, ["calc-1", "calc-2", "calc-3"]);
    const before = intercepted;
    const answers = await Promise.all(Array.from({ length: 600 }, add));
    t.deepEqual(tally(answers), { "calc-1": 100, "calc-2": 200, "calc-3": 300 });
    t.is(intercepted - before, 600, "the application's interceptor saw every call");
    const exposition = await metricsRegistry.metrics();
    t.regex(
      exposition,
      /leasehold_client_requests_total\{service="calculator",instance_id="calc-3",method="Add",code="OK"\} \d+/,
    );
  },
);

test.serial("a deadline and a cancellation behave as in grpc-js", async (t) => {
  const client = new EchoServiceClient("leasehold:///echo", grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const stream = client.echoStream({ message: "long", count: 1000 });
  const first = await new Promise<EchoResponse>((resolve) => stream.once("data", resolve));
  t.is(first.message, "long");
  const status = new Promise<grpc.StatusObject>((resolve) => stream.on("status", resolve));
  stream.on("error", () => undefined);
  stream.cancel();
  t.is((await status).code, grpc.status.CANCELLED);

  const expired = await new Promise<grpc.ServiceError | null>((resolve) =>
    client.echo({ message: "late" }, new grpc.Metadata(), { deadline: Date.now() - 1 }, (error) =>
      resolve(error),
    ),
  );
  t.is(expired?.code, grpc.status.DEADLINE_EXCEEDED);
});

test.serial("an unknown service fails fast with UNAVAILABLE saying none is registered", async (t) => {
  const client = new EchoServiceClient("leasehold:///nobody", grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const error = await new Promise<grpc.ServiceError | null>((resolve) =>
    client.echo({ message: "x" }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (failure) =>
      resolve(failure),
    ),
  );
  t.is(error?.code, grpc.status.UNAVAILABLE);
  t.regex(error?.details ?? "", /no available instance of service nobody \(0 listed\)/);
});

test.serial(
  "the typed client streams: server streams as AsyncIterable, client and bidi streams fed by iterables, metadata sent",
  async (t) => {
    const client = createBalancedClient(EchoServiceService, {
      service: "echo",
      registry: t.context.registry.address,
      policy: "weighted_round_robin",
    });
    t.teardown(() => client.close());
    const metadata = new grpc.Metadata();
    metadata.set("x-tenant", "acme");

    const streamed = await collect(client.methods.echoStream({ message: "s", count: 5 }, { metadata }));
    t.deepEqual(
      streamed.map((message) => message.message),
      ["s", "s", "s", "s", "s"],
    );
    t.is(streamed[0]?.headers["x-tenant"], "acme");

    const collected = await client.methods.echoCollect(
      ["a", "b", "c"].map((message) => ({ message })),
      { metadata },
    );
    t.is(collected.message, "a b c");

    async function* chat(): AsyncGenerator<EchoRequest> {
      for (const message of ["one", "two"]) {
        await new Promise((resolve) => setImmediate(resolve)); // requests that arrive over time
        yield { message };
      }
    }
    const replies = await collect(client.methods.echoChat(chat(), { metadata }));
    t.deepEqual(
      replies.map((reply) => reply.message),
      ["one", "two"],
    );

    const owners = new Set<string>();
    for (let i = 0; i < 12; i++) {
      for await (const message of client.methods.echoStream({ message: "o", count: 1 }))
        owners.add(message.instanceId);
    }
    t.deepEqual([...owners].sort(), ["echo-1", "echo-2", "echo-3"], "streams are balanced too");

    const stop = new AbortController();
    const long = client.methods.echoStream({ message: "long", count: 1000 }, { signal: stop.signal });
    let received = 0;
    const error = await t.throwsAsync(async () => {
      for await (const message of long) {
        t.is(message.message, "long");
        if (++received === 2) stop.abort();
      }
    });
    t.is((error as LeaseholdError).code, "CANCELLED");
  },
);

test.serial("a registry that is not running fails calls fast, naming the registry address", async (t) => {
  const closed = await new Promise<number>((resolve) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
  const client = new EchoServiceClient(
    `leasehold://127.0.0.1:${closed}/echo`,
    grpc.credentials.createInsecure(),
  );
  t.teardown(() => client.close());
  const error = await new Promise<grpc.ServiceError | null>((resolve) =>
    client.echo({ message: "x" }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (failure) =>
      resolve(failure),
    ),
  );
  t.is(error?.code, grpc.status.UNAVAILABLE);
  t.regex(
    error?.details ?? "",
    new RegExp(`cannot watch service echo at registry 127\\.0\\.0\\.1:${closed}`),
  );
});
