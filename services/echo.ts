import {
  EchoRequest,
  EchoServiceService,
  type EchoServiceServer,
} from "../proto/gen/leasehold/demo/v1/echo.js";
import type { DemoService } from "./demo-service.js";

/** The echo demo service: returns the message and the id of the instance that answered. */
export const echo: DemoService = {
  name: "echo",
  definition: EchoServiceService,
  methods: { Echo: { key: "echo", request: EchoRequest } },
  implement: (instanceId): EchoServiceServer => ({
    echo: (call, callback) => callback(null, { message: call.request.message, instanceId }),
  }),
};
