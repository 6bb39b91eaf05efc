import { credentials, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import anyTest, { type ExecutionContext, type TestFn } from "ava";
import { Etcd3 } from "etcd3";
import { startLocalEtcd, type LocalEtcd } from "../../cli/local-etcd.js";
import {
  InstanceStatus,
  RegistryServiceClient,
  type Delta,
  type DeregisterRequest,
  type DeregisterResponse,
  type GetServiceRequest,
  type GetServiceResponse,
  type ListServicesRequest,
  type ListServicesResponse,
  type RegisterResponse,
  type UpdateInstanceRequest,
  type UpdateInstanceResponse,
  type Progress,
  type RegisterRequest,
  type Snapshot,
  type WatchRequest,
  type WatchResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { startRegistry, type RegistryOptions, type RunningRegistry } from "../../registry/index.js";
import { eventually } from "./eventually.js";

/** A real etcd, an in-process registry, a registry client and a raw etcd3 client. */
export interface RegistryFixture {
  readonly etcd: LocalEtcd;
  readonly registry: RunningRegistry;
  readonly client: RegistryServiceClient;
  /** Direct etcd access, to check what the registry wrote (tests only). */
  readonly etcd3: Etcd3;
  /** Closes everything, in order. Idempotent. */
  close(): Promise<void>;
}

/** A fixture for one test, closed by its teardown. */
export async function startFixtureFor(
  t: ExecutionContext,
  options: Partial<RegistryOptions> = {},
): Promise<RegistryFixture> {
  const fixture = await startRegistryFixture(options);
  t.teardown(async () => await fixture.close());
  return fixture;
}

/** ava's `test` with one fixture shared by the whole file (`t.context`), closed after all tests. */
export function testWithSharedFixture(): TestFn<RegistryFixture> {
  const test = anyTest as TestFn<RegistryFixture>;
  test.before(async (t) => {
    t.context = await startRegistryFixture();
  });
  test.after.always(async (t) => {
    await t.context.close?.();
  });
  return test;
}

/** Starts a fixture; close it in `test.after.always` or `t.teardown`. */
export async function startRegistryFixture(options: Partial<RegistryOptions> = {}): Promise<RegistryFixture> {
  const etcd = await startLocalEtcd();
  let registry: RunningRegistry;
  try {
    registry = await startRegistry({
      listen: "127.0.0.1:0",
      etcdEndpoints: [etcd.endpoint],
      progressIntervalMs: 300,
      ...options,
    });
  } catch (error) {
    await etcd.stop();
    throw error;
  }
  const client = new RegistryServiceClient(registry.address, credentials.createInsecure());
  const etcd3 = new Etcd3({ hosts: etcd.endpoint });
  let closing: Promise<void> | undefined;
  return {
    etcd,
    registry,
    client,
    etcd3,
    close: () =>
      (closing ??= (async () => {
        client.close();
        await registry.close();
        etcd3.close();
        await etcd.stop();
      })()),
  };
}

/** The unary RegistryService methods of `client` as promises (the error is the gRPC ServiceError). */
export function rpc(client: RegistryServiceClient) {
  type Callback<Response> = (error: ServiceError | null, response: Response) => void;
  const promised = <Response>(invoke: (callback: Callback<Response>) => unknown): Promise<Response> =>
    new Promise((resolve, reject) => {
      invoke((error, response) => (error === null ? resolve(response) : reject(error)));
    });
  return {
    register: (request: RegisterRequest) =>
      promised<RegisterResponse>((callback) => client.register(request, callback)),
    updateInstance: (request: UpdateInstanceRequest) =>
      promised<UpdateInstanceResponse>((callback) => client.updateInstance(request, callback)),
    deregister: (request: DeregisterRequest) =>
      promised<DeregisterResponse>((callback) => client.deregister(request, callback)),
    getService: (request: GetServiceRequest) =>
      promised<GetServiceResponse>((callback) => client.getService(request, callback)),
    listServices: (request: ListServicesRequest) =>
      promised<ListServicesResponse>((callback) => client.listServices(request, callback)),
  };
}

/** The error of a call expected to fail. */
export async function failure(call: Promise<unknown>): Promise<ServiceError> {
  try {
    await call;
  } catch (error) {
    return error as ServiceError;
  }
  throw new Error("expected the call to fail");
}

/** A Register request with sensible defaults. */
export function registration(
  overrides: Partial<RegisterRequest> & { service: string; instanceId: string },
): RegisterRequest {
  return {
    address: "127.0.0.1:9000",
    weight: 1,
    zone: "z1",
    metadata: {},
    metricsAddress: "",
    ttlSeconds: "3",
    status: InstanceStatus.INSTANCE_STATUS_SERVING,
    registrationId: "",
    ...overrides,
  };
}

/** Collects the messages of a Watch stream and how it ended. */
export class WatchRecorder {
  readonly messages: WatchResponse[] = [];
  readonly stream: ClientReadableStream<WatchResponse>;
  /** Set once the stream ended: the error (status) or `null` for OK. */
  ended: ServiceError | null | undefined;

  constructor(client: RegistryServiceClient, request: Partial<WatchRequest> = {}) {
    this.stream = client.watch({ service: "", startRevision: "0", ...request });
    this.stream.on("data", (message: WatchResponse) => this.messages.push(message));
    this.stream.on("error", (error: ServiceError) => (this.ended = error));
    this.stream.on("end", () => (this.ended ??= null));
  }

  snapshots(): Snapshot[] {
    return this.messages.flatMap((m) => (m.event?.$case === "snapshot" ? [m.event.value] : []));
  }

  deltas(): Delta[] {
    return this.messages.flatMap((m) => (m.event?.$case === "delta" ? [m.event.value] : []));
  }

  progresses(): Progress[] {
    return this.messages.flatMap((m) => (m.event?.$case === "progress" ? [m.event.value] : []));
  }

  /** Waits until `probe` over the recorded messages is truthy. */
  async until<T>(
    probe: (recorder: this) => T | undefined | false,
    what: string,
    timeoutMs = 10_000,
  ): Promise<T> {
    return await eventually(() => probe(this), { what, timeoutMs });
  }

  /** The highest revision seen in any message (what a client would resume from). */
  lastRevision(): string {
    let last = 0n;
    for (const message of this.messages) {
      const revision = message.event === undefined ? 0n : BigInt(message.event.value.revision);
      if (revision > last) last = revision;
    }
    return String(last);
  }

  cancel(): void {
    this.stream.cancel();
  }
}
