import type { Metadata } from "@grpc/grpc-js";
import {
  EchoRequest,
  EchoServiceService,
  type EchoResponse,
  type EchoServiceServer,
} from "../proto/gen/leasehold/demo/v1/echo.js";
import type { DemoService } from "./demo-service.js";

/** Most messages one EchoStream call answers with. */
const MAX_STREAM_COUNT = 1000;

/** The request's text headers, without gRPC's and HTTP/2's own (`grpc-*`, `:*`, `content-type`, ...). */
function headersOf(metadata: Metadata): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [key, value] of Object.entries(metadata.getMap())) {
    if (key.startsWith("grpc-") || key.endsWith("-bin") || ["content-type", "te", "user-agent"].includes(key))
      continue;
    headers[key] = String(value);
  }
  return headers;
}

/**
 * The echo demo service: answers with the message, the id of the instance that answered and the
 * headers it received, in all four streaming kinds (Echo, EchoStream, EchoCollect, EchoChat).
 */
export const echo: DemoService = {
  name: "echo",
  definition: EchoServiceService,
  methods: { Echo: { key: "echo", request: EchoRequest } },
  implement: (instanceId): EchoServiceServer => ({
    echo: (call, callback) =>
      callback(null, { message: call.request.message, instanceId, headers: headersOf(call.metadata) }),
    echoStream: (call) => {
      const headers = headersOf(call.metadata);
      const count = Math.min(call.request.count, MAX_STREAM_COUNT);
      for (let i = 0; i < count; i++) call.write({ message: call.request.message, instanceId, headers });
      call.end();
    },
    echoCollect: (call, callback) => {
      const messages: string[] = [];
      call.on("data", (request: EchoRequest) => messages.push(request.message));
      call.on("error", () => undefined); // a cancelled caller: nothing to answer
      call.on("end", () =>
        callback(null, { message: messages.join(" "), instanceId, headers: headersOf(call.metadata) }),
      );
    },
    echoChat: (call) => {
      const headers = headersOf(call.metadata);
      call.on("data", (request: EchoRequest) => {
        const response: EchoResponse = { message: request.message, instanceId, headers };
        call.write(response);
      });
      call.on("error", () => undefined);
      call.on("end", () => call.end());
    },
  }),
};
