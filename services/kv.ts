import { GetRequest, KvServiceService } from "../proto/gen/leasehold/demo/v1/kv.js";
import { DeleteRequest, IncrementRequest, PutRequest } from "../proto/gen/leasehold/demo/v1/kv.js";
import type { DemoService } from "./demo-service.js";
import { KvNode } from "./kv/kv-node.js";

/**
 * The replicated key-value demo service (`kv`): Put, Get, Delete and Increment on a primary with
 * synchronous backups, the primary elected from registry membership (see {@link KvNode}).
 */
export const kv: DemoService = {
  name: "kv",
  definition: KvServiceService,
  methods: {
    Put: { key: "put", request: PutRequest },
    Get: { key: "get", request: GetRequest },
    Delete: { key: "delete", request: DeleteRequest },
    Increment: { key: "increment", request: IncrementRequest },
  },
  implement: () => {
    throw new Error("kv is stateful: start it with startServiceInstance");
  },
  stateful: (instanceId, logger, peerCredentials) => {
    const node = new KvNode({ instanceId, logger, peerCredentials });
    return {
      implementation: node.implementation(),
      start: async (host) => await node.start(host),
      registrarStateChanged: (state, previous) => node.registrarStateChanged(state, previous),
      close: async () => await node.close(),
    };
  },
};
