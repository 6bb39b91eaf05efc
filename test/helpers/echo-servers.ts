/**
 * Real EchoService servers for balancing tests, with memberships the test controls and a typed
 * balanced client over them.
 */
import * as grpc from "@grpc/grpc-js";
import type { ExecutionContext } from "ava";
import { Registry } from "prom-client";
import {
  createBalancedClient,
  type BalancedClient,
  type BalancedClientOptions,
} from "../../client/balancing/balanced-client.js";
import type { MembershipSnapshot, MembershipSource } from "../../client/discovery/membership.js";
import { ClientMetrics } from "../../client/metrics/client-metrics.js";
import {
  EchoServiceService,
  type EchoRequest,
  type EchoResponse,
} from "../../proto/gen/leasehold/demo/v1/echo.js";
import { Instance, InstanceStatus } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./eventually.js";

/**
 * A real EchoService server on 127.0.0.1:0 that answers with its own instance id. Messages steer
 * it: "invalid" → INVALID_ARGUMENT, "hang" → never answers (until cancelled); `failWith` makes
 * every call fail with that status.
 */
export interface EchoServer {
  readonly instanceId: string;
  readonly address: string;
  /** Calls received (all messages, failed ones included). */
  calls: number;
  /** Calls cancelled by the client while hanging. */
  cancelled: number;
  failWith: grpc.status | undefined;
  /** Every call hangs until cancelled (a frozen process). */
  isFrozen: boolean;
}

export async function startEchoServer(t: ExecutionContext, instanceId: string): Promise<EchoServer> {
  const server = new grpc.Server();
  const state: EchoServer = {
    instanceId,
    address: "",
    calls: 0,
    cancelled: 0,
    failWith: undefined,
    isFrozen: false,
  };
  server.addService(EchoServiceService, {
    echo: (
      call: grpc.ServerUnaryCall<EchoRequest, EchoResponse>,
      callback: grpc.sendUnaryData<EchoResponse>,
    ) => {
      state.calls++;
      if (state.failWith !== undefined)
        return callback({ code: state.failWith, details: `${instanceId} told to fail` });
      if (call.request.message === "invalid")
        return callback({ code: grpc.status.INVALID_ARGUMENT, details: "bad message" });
      if (call.request.message === "hang" || state.isFrozen) {
        call.on("cancelled", () => state.cancelled++);
        return;
      }
      callback(null, { message: call.request.message, instanceId, headers: {} });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, boundPort) =>
      error === null ? resolve(boundPort) : reject(error),
    ),
  );
  t.teardown(() => server.forceShutdown());
  return Object.assign(state, { address: `127.0.0.1:${port}` });
}

export function instanceOf(
  server: { instanceId: string; address: string },
  weight = 1,
  status = InstanceStatus.INSTANCE_STATUS_SERVING,
  extra: Partial<Pick<Instance, "zone" | "metadata">> = {},
): Instance {
  return Instance.fromPartial({
    service: "echo",
    instanceId: server.instanceId,
    address: server.address,
    weight,
    status,
    ...extra,
  });
}

/** A membership whose snapshot the test changes. */
export function mutableMembership(
  initial: Instance[],
): MembershipSource & { set(instances: Instance[]): void } {
  let revision = 1;
  const listeners = new Set<(snapshot: MembershipSnapshot) => void>();
  let snapshot: MembershipSnapshot = { service: "echo", instances: initial, revision: String(revision) };
  return {
    current: () => snapshot,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    set(instances) {
      snapshot = { service: "echo", instances, revision: String(++revision) };
      for (const listener of listeners) listener(snapshot);
    },
  };
}

export function newClient(
  t: ExecutionContext,
  options: Partial<BalancedClientOptions> & Pick<BalancedClientOptions, "membership">,
): { client: BalancedClient<typeof EchoServiceService>; metrics: ClientMetrics; registry: Registry } {
  const registry = new Registry();
  const metrics = new ClientMetrics(registry);
  const client = createBalancedClient(EchoServiceService, { service: "echo", metrics, ...options });
  t.teardown(() => client.close());
  return { client, metrics, registry };
}

/** Starts connecting and waits until every listed instance's subchannel is READY. */
export async function connected(
  client: BalancedClient<typeof EchoServiceService>,
  instances: number,
): Promise<void> {
  client.start();
  await eventually(
    () => client.stats().length === instances && client.stats().every((s) => s.connectivity === "READY"),
    { what: `${instances} instance(s) connected` },
  );
}
