import { credentials, Metadata, Server, ServerCredentials } from "@grpc/grpc-js";
import test from "ava";
import { Registry } from "prom-client";
import { instrumentService } from "../client/server/grpc-server-metrics.js";
import { EchoServiceClient, EchoServiceService } from "../proto/gen/leasehold/demo/v1/echo.js";
import { echo } from "../services/echo.js";

const SERVICE = "leasehold.demo.v1.EchoService";

test("instrumentService counts started, handled, messages and type for all four kinds of call", async (t) => {
  const registry = new Registry();
  const server = new Server();
  server.addService(
    EchoServiceService,
    instrumentService(EchoServiceService, echo.implement("e-1"), registry),
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  const client = new EchoServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
  t.teardown(() => {
    client.close();
    server.forceShutdown();
  });

  await new Promise<void>((resolve, reject) =>
    client.echo({ message: "a" }, (error) => (error === null ? resolve() : reject(error))),
  );
  await new Promise<void>((resolve, reject) => {
    const stream = client.echoStream({ message: "b", count: 3 });
    stream.on("data", () => undefined);
    stream.on("end", resolve);
    stream.on("error", reject);
  });
  await new Promise<void>((resolve, reject) => {
    const stream = client.echoCollect(new Metadata(), (error) =>
      error === null ? resolve() : reject(error),
    );
    stream.write({ message: "c" });
    stream.write({ message: "d" });
    stream.end();
  });
  await new Promise<void>((resolve, reject) => {
    const stream = client.echoChat();
    let answers = 0;
    stream.on("data", () => {
      if (++answers === 2) stream.end();
    });
    stream.on("end", resolve);
    stream.on("error", reject);
    stream.write({ message: "e" });
    stream.write({ message: "f" });
  });

  const text = await registry.metrics();
  const series = (name: string, type: string, method: string, extra = ""): string =>
    `${name}{grpc_type="${type}",grpc_service="${SERVICE}",grpc_method="${method}"${extra}}`;
  for (const [type, method, received, sent] of [
    ["unary", "Echo", 1, 1],
    ["server_stream", "EchoStream", 1, 3],
    ["client_stream", "EchoCollect", 2, 1],
    ["bidi_stream", "EchoChat", 2, 2],
  ] as const) {
    for (const line of [
      `${series("grpc_server_started_total", type, method)} 1`,
      `${series("grpc_server_handled_total", type, method, ',grpc_code="OK"')} 1`,
      `${series("grpc_server_msg_received_total", type, method)} ${received}`,
      `${series("grpc_server_msg_sent_total", type, method)} ${sent}`,
      `${series("grpc_server_handling_seconds_count", type, method)} 1`,
    ])
      t.true(text.includes(line), `/metrics has ${line}`);
  }
});

test("a failed call is counted with Go's spelling of its code", async (t) => {
  const registry = new Registry();
  const server = new Server();
  server.addService(
    EchoServiceService,
    instrumentService(
      EchoServiceService,
      {
        ...echo.implement("e-1"),
        echo: (_call: unknown, callback: (error: { code: number; details: string }) => void) =>
          callback({ code: 14, details: "down" }),
      },
      registry,
    ),
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  const client = new EchoServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
  t.teardown(() => {
    client.close();
    server.forceShutdown();
  });
  const code = await new Promise<number | undefined>((resolve) =>
    client.echo({ message: "a" }, (error) => resolve(error?.code)),
  );
  t.is(code, 14);
  const text = await registry.metrics();
  t.true(
    text.includes(
      `grpc_server_handled_total{grpc_type="unary",grpc_service="${SERVICE}",grpc_method="Echo",grpc_code="Unavailable"} 1`,
    ),
  );
  t.false(text.includes(`grpc_server_msg_sent_total{grpc_type="unary"`), "no message was sent");
});
