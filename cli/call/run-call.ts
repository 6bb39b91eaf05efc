/**
 * `leasehold call SERVICE METHOD [JSON]`: the action. Loaded lazily by `cli/commands/call.ts`, so
 * `leasehold --help` never loads protobuf, prom-client or the client library.
 *
 * The method comes from server reflection on a registered instance (or `--proto` files); the
 * request is strict proto3 JSON, checked before any call; the call goes through Leasehold's
 * balanced client; responses print as canonical proto3 JSON, one line per message.
 */
import { createInterface, type Interface } from "node:readline";
import * as grpc from "@grpc/grpc-js";
import {
  fromBinary,
  toBinary,
  toJson,
  type DescMethod,
  type FileRegistry,
  type Message,
} from "@bufbuild/protobuf";
import logUpdate from "log-update";
import { Registry } from "prom-client";
import { collectProcessMetrics } from "../../client/metrics/process-metrics.js";
import {
  createBalancedClient,
  type BalancedCallOptions,
  type BalancedClient,
} from "../../client/balancing/balanced-client.js";
import type { PolicyName } from "../../client/balancing/policies.js";
import { MembershipWatcher } from "../../client/discovery/membership-watcher.js";
import { listServiceInstances } from "../../client/discovery/list-service-instances.js";
import { LeaseholdError } from "../../client/errors.js";
import { ClientMetrics } from "../../client/metrics/client-metrics.js";
import { clientSecurityOf, tlsFilesOf, type SecurityFlags } from "../security-options.js";
import { channelCredentials, type TlsFiles } from "../../client/tls/tls-files.js";
import { connectRegistry } from "../../client/registry-connection.js";
import { splitHostPort } from "../../client/server/host-port.js";
import { metricsRoute, startHttpEndpoints } from "../../client/server/http-endpoints.js";
import { routableHost } from "../../client/server/routable-host.js";
import { CALLER_SERVICE, startCallerEntry } from "../../client/registration/caller-entry.js";
import type { Registrar } from "../../client/registration/registrar.js";
import {
  InstanceStatus,
  type Instance,
  type RegistryServiceClient,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import type { Logger } from "pino";
import { createLogger } from "../logger.js";
import { checkRegistry } from "../registry-check.js";
import { UsageError } from "../usage-error.js";
import { DescriptorError, linkDescriptors } from "./descriptor-set.js";
import { InstanceTally } from "./instance-tally.js";
import { isServiceNamed, parseMethodSpec, resolveMethod, type MethodSpec } from "./method-resolver.js";
import { loadProtoFiles } from "./proto-files.js";
import { ReflectionClient, ReflectionError } from "./reflection-client.js";
import { decodeRequest, parseRequest } from "./request-json.js";
import { renderSummary, summarize } from "./summary.js";

/** Flags of `leasehold call`, as commander parsed them. */
export interface CallFlags extends SecurityFlags {
  readonly registry: string;
  readonly count?: number;
  readonly concurrency: number;
  readonly policy: PolicyName;
  /** The caller's zone, for zone-aware routing. */
  readonly zone?: string;
  /** Metadata filter: `key=value` pairs every picked instance has. */
  readonly filter: Readonly<Record<string, string>>;
  readonly duration?: number;
  /** Absent: {@link UNARY_DEADLINE_MS} for unary calls, {@link STREAM_DEADLINE_MS} for streams. */
  readonly deadlineMs?: number;
  readonly json: boolean;
  readonly metricsListen?: string;
  /** `key:value` pairs, validated by the option parser. */
  readonly metadata: readonly string[];
  readonly proto: readonly string[];
  readonly importPath: readonly string[];
}

/** A failed call: the gRPC status code name and message (`UNAVAILABLE: no available instance ...`). */
export class CallFailedError extends Error {}

/** Pause after a call that failed at once (nothing to pick), so a worker never spins: 50–100 ms. */
const FAST_FAILURE_MS = 50;
const RETRY_PAUSE_MS = { min: 50, max: 100 } as const;

/** Deadline of a unary call (all its attempts) unless --deadline-ms says otherwise. */
const UNARY_DEADLINE_MS = 5000;

/**
 * A stream's deadline unless --deadline-ms says otherwise: a day, i.e. none a user would meet
 * (grpcurl sets none; the balanced client wants a finite one).
 */
const STREAM_DEADLINE_MS = 86_400_000;

/** A load run waits this long at most for every instance's connection before its first call. */
const CONNECT_WAIT_MS = 3000;

/** Reflection on one instance gives up after this long. */
const REFLECTION_TIMEOUT_MS = 5000;

/** Instances asked for reflection before giving up. */
const REFLECTION_ATTEMPTS = 3;

export async function runCall(
  serviceName: string,
  methodText: string,
  requestText: string | undefined,
  flags: CallFlags,
): Promise<void> {
  const spec = parseMethodSpec(methodText);
  // JSON syntax first: a typo is reported without touching the network.
  const requestJson = requestText === undefined ? undefined : parseJsonText(requestText);
  const isLoadRun = flags.count !== undefined || flags.duration !== undefined || flags.json;
  const metadata = toMetadata(flags.metadata);

  const prepare = (described: Described): Prepared => {
    const method = resolveMethod(described.registry, described.services, spec);
    const request = checkedRequest(method, requestJson, isLoadRun, described.registry);
    return { method, types: described.registry, request };
  };
  // With --proto, the method and the request are checked before the network is touched.
  const offline =
    flags.proto.length > 0 ? prepare(await describeFromProtoFiles(flags.proto, flags.importPath)) : undefined;
  const registry = connectRegistry(flags.registry, {}, await clientSecurityOf(flags));
  try {
    await checkRegistry(registry, flags.registry);
    const { method, types, request } =
      offline ??
      prepare(
        await describeByReflection(registry, flags.registry, serviceName, spec, metadata, tlsFilesOf(flags)),
      );
    await callThroughBalancer(registry, serviceName, method, types, request, metadata, flags);
  } finally {
    registry.close();
  }
}

/** What a call needs: the method, the types it may reference, and its checked request. */
interface Prepared {
  readonly method: DescMethod;
  readonly types: FileRegistry;
  readonly request: Message | undefined;
}

/**
 * The request of a unary or server-streaming call, strictly decoded (`{}` when none was given);
 * undefined for client-streaming and bidi calls, which read stdin.
 * @throws UsageError for a refused request, or a method the flags do not fit.
 */
function checkedRequest(
  method: DescMethod,
  requestJson: unknown,
  isLoadRun: boolean,
  types: FileRegistry,
): Message | undefined {
  const kind = method.methodKind;
  const kindName = kind.replace("_", "-");
  if (isLoadRun && kind !== "unary") {
    throw new UsageError(
      `--count, --duration and --json make a load run, which takes unary methods; ${method.name} is ${kindName}`,
    );
  }
  if (kind === "client_streaming" || kind === "bidi_streaming") {
    if (requestJson === undefined) return undefined;
    throw new UsageError(
      `${method.name} is ${kindName}: it reads its requests from stdin, one JSON object per line; pass no JSON argument`,
    );
  }
  return decodeRequest(method.input, requestJson ?? {}, types);
}

// ---- describing the method ----

interface Described {
  readonly registry: FileRegistry;
  /** Full names of the services METHOD may be in. */
  readonly services: readonly string[];
}

async function describeFromProtoFiles(
  files: readonly string[],
  importPaths: readonly string[],
): Promise<Described> {
  const registry = linkOrExplain(await loadProtoFiles(files, importPaths), "--proto files", true);
  const services: string[] = [];
  for (const type of registry) if (type.kind === "service") services.push(type.typeName);
  return { registry, services };
}

/**
 * Links descriptors; one that does not link is the user's to fix with --proto files (exit 2), or
 * the server's when it came by reflection (exit 1).
 */
function linkOrExplain(
  files: Parameters<typeof linkDescriptors>[0],
  source: string,
  isUsers: boolean,
): FileRegistry {
  try {
    return linkDescriptors(files);
  } catch (error) {
    if (!(error instanceof DescriptorError)) throw error;
    const message = `${source}: ${error.message}`;
    throw isUsers ? new UsageError(message) : new CallFailedError(message);
  }
}

/** Asks registered instances of `serviceName` (SERVING first) by server reflection. */
async function describeByReflection(
  registry: RegistryServiceClient,
  registryAddress: string,
  serviceName: string,
  spec: MethodSpec,
  metadata: grpc.Metadata,
  tlsFiles: TlsFiles,
): Promise<Described> {
  const instances = await listInstances(registry, serviceName);
  if (instances.length === 0) {
    throw new CallFailedError(`no instance of service "${serviceName}" is registered at ${registryAddress}`);
  }
  let lastFailure: Error | undefined;
  for (const instance of instances.slice(0, REFLECTION_ATTEMPTS)) {
    const reflection = new ReflectionClient(instance.address, {
      metadata,
      timeoutMs: REFLECTION_TIMEOUT_MS,
      credentials: channelCredentials(tlsFiles),
      serverName: serviceName,
    });
    try {
      return await reflectOn(reflection, instance, spec);
    } catch (error) {
      if (!(error instanceof ReflectionError)) throw error;
      if (error.code === grpc.status.UNIMPLEMENTED) {
        throw new CallFailedError(
          `instance ${instance.instanceId} (${instance.address}) does not serve gRPC server reflection; describe the service with --proto FILE [--import-path DIR]`,
        );
      }
      lastFailure = new CallFailedError(
        `reflection on instance ${instance.instanceId} (${instance.address}) failed: ${grpc.status[error.code]}: ${error.message}`,
      );
    } finally {
      reflection.close();
    }
  }
  throw lastFailure ?? new CallFailedError("reflection failed");
}

async function reflectOn(
  reflection: ReflectionClient,
  instance: Instance,
  spec: MethodSpec,
): Promise<Described> {
  const where = `instance ${instance.instanceId} (${instance.address})`;
  let services: string[];
  if (spec.service?.includes(".") === true) {
    services = [spec.service];
  } else {
    const served = (await reflection.listServices()).filter((name) => !name.startsWith("grpc.reflection."));
    services =
      spec.service === undefined ? served : served.filter((name) => isServiceNamed(name, spec.service ?? ""));
    if (services.length === 0) {
      const what = spec.service === undefined ? "no service" : `no service "${spec.service}"`;
      throw new UsageError(`${where} reflects ${what}; it serves ${served.join(", ") || "nothing"}`);
    }
  }
  const files = [];
  for (const service of services) {
    try {
      files.push(...(await reflection.fileContainingSymbol(service)));
    } catch (error) {
      if (error instanceof ReflectionError && error.code === grpc.status.NOT_FOUND) {
        const served = (await reflection.listServices()).filter(
          (name) => !name.startsWith("grpc.reflection."),
        );
        throw new UsageError(
          `${where} does not serve "${service}"; it serves ${served.join(", ") || "nothing"}`,
        );
      }
      throw error;
    }
  }
  return { registry: linkOrExplain(files, `descriptors from ${where}`, false), services };
}

/** Instances of `service`, SERVING ones first; GetService failures are the registry's. */
async function listInstances(registry: RegistryServiceClient, service: string): Promise<Instance[]> {
  const response = await listServiceInstances(registry, service).catch((error: unknown) => {
    const failure = LeaseholdError.from(error);
    if (failure.code === "INVALID_ARGUMENT") throw new UsageError(`service "${service}": ${failure.message}`);
    throw new CallFailedError(`GetService ${service}: ${failure.code}: ${failure.message}`);
  });
  const isServing = (instance: Instance): boolean =>
    instance.status === InstanceStatus.INSTANCE_STATUS_SERVING;
  return [...response.instances.filter(isServing), ...response.instances.filter((i) => !isServing(i))];
}

// ---- calling ----

/** The calls this command makes, whatever the method's kind. */
type Invoke = (...args: unknown[]) => unknown;

async function callThroughBalancer(
  registry: RegistryServiceClient,
  serviceName: string,
  method: DescMethod,
  types: FileRegistry,
  request: Message | undefined,
  metadata: grpc.Metadata,
  flags: CallFlags,
): Promise<void> {
  const logger = createLogger("leasehold-call", "warn");
  const metricsRegistry = new Registry();
  collectProcessMetrics(metricsRegistry, "caller");
  const metrics = new ClientMetrics(metricsRegistry);
  const watcher = new MembershipWatcher({ registry, service: serviceName, metrics, logger });
  const client = createBalancedClient(serviceDefinition(method), {
    service: serviceName,
    membership: watcher,
    policy: flags.policy,
    zone: flags.zone,
    metadataFilter: Object.keys(flags.filter).length === 0 ? undefined : flags.filter,
    metrics,
    deadlineMs: flags.deadlineMs ?? UNARY_DEADLINE_MS,
    credentials: channelCredentials(tlsFilesOf(flags)),
    logger,
  });
  const metricsServer =
    flags.metricsListen === undefined
      ? undefined
      : await startHttpEndpoints(
          flags.metricsListen,
          { "/metrics": metricsRoute(metricsRegistry) },
          tlsFilesOf(flags),
        );
  const callerEntry =
    metricsServer && (await listCaller(registry, metricsServer.address, serviceName, logger));
  const stopping = new AbortController();
  const onSignal = (): void => stopping.abort();
  process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
  // Instances that leave are reported with their final stats, so a return starts a new lifetime.
  const tally = new InstanceTally();
  client.onChange((change) => tally.left(change.removed));
  try {
    watcher.start();
    await watcher.ready();
    if (watcher.current().instances.length === 0) {
      throw new CallFailedError(`no instance of service "${serviceName}" is registered at ${flags.registry}`);
    }
    client.start();
    const invoke = (client.methods as unknown as Record<string, Invoke | undefined>)[method.name];
    if (invoke === undefined) {
      throw new CallFailedError(`the balanced client has no method ${method.name}`);
    }
    const isStream = method.methodKind !== "unary";
    const options: BalancedCallOptions = {
      metadata,
      signal: stopping.signal,
      ...(isStream && flags.deadlineMs === undefined ? { deadlineMs: STREAM_DEADLINE_MS } : {}),
    };
    const print = (response: unknown): void => {
      process.stdout.write(
        `${JSON.stringify(toJson(method.output, response as Message, { registry: types }))}\n`,
      );
    };
    if (flags.count !== undefined || flags.duration !== undefined || flags.json) {
      // Connected first, so the distribution is the policy's, not the order connections came up in.
      await connected(client, watcher.current().instances.length, CONNECT_WAIT_MS, stopping.signal);
      // No signal: on SIGINT a load run stops issuing calls and lets those in flight finish.
      await loadRun(client, invoke, request, { metadata }, tally, serviceName, stopping.signal, flags);
      return;
    }
    try {
      await callOnce(method, types, invoke, request, options, stopping.signal, print);
    } catch (error) {
      // Ctrl-C ends a stream the user watched long enough: quietly, with the shell's status.
      if (!stopping.signal.aborted) throw error;
      process.exitCode = 130;
    }
  } finally {
    process.off("SIGINT", onSignal).off("SIGTERM", onSignal);
    await client.close();
    await watcher.close();
    await callerEntry?.close();
    await metricsServer?.close();
  }
}

/**
 * Lists this caller's /metrics in the registry (a {@link CALLER_SERVICE} entry), so Prometheus'
 * HTTP SD scrapes it. A refusal (say, a registry with auth on) costs the listing, not the calls.
 */
async function listCaller(
  registry: RegistryServiceClient,
  metricsListen: string,
  calls: string,
  logger: Logger,
): Promise<Registrar | undefined> {
  const { host, port } = splitHostPort(metricsListen);
  try {
    return await startCallerEntry({
      registry,
      metricsAddress: `${routableHost(host)}:${port}`,
      calls,
      logger,
    });
  } catch (error) {
    logger.warn({ err: error }, `the registry did not list this caller's /metrics (${CALLER_SERVICE})`);
    return undefined;
  }
}

/** One call of any kind; responses go to `print`. */
async function callOnce(
  method: DescMethod,
  types: FileRegistry,
  invoke: Invoke,
  request: Message | undefined,
  options: BalancedCallOptions,
  stopping: AbortSignal,
  print: (response: unknown) => void,
): Promise<void> {
  switch (method.methodKind) {
    case "unary":
      print(await settle(invoke(request, options) as Promise<unknown>));
      break;
    case "server_streaming":
      await settle(forEach(invoke(request, options) as AsyncIterable<unknown>, print));
      break;
    case "client_streaming":
    case "bidi_streaming": {
      const input = new StdinRequests(method, types);
      const streamOptions = { ...options, signal: AbortSignal.any([stopping, input.signal]) };
      try {
        if (method.methodKind === "client_streaming") {
          print(await settle(invoke(input.messages(), streamOptions) as Promise<unknown>));
        } else {
          await settle(forEach(invoke(input.messages(), streamOptions) as AsyncIterable<unknown>, print));
        }
      } catch (error) {
        throw input.failure ?? error;
      } finally {
        input.close();
      }
      if (input.failure !== undefined) throw input.failure;
      break;
    }
  }
}

/**
 * Resolves once the client lists `listed` instances and every SERVING one is READY (or failed to
 * connect), after `timeoutMs` (a load run then starts anyway), or on `signal`. Only READY
 * instances are picked.
 */
async function connected(
  client: BalancedClient<grpc.ServiceDefinition>,
  listed: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<void> {
  const isSettled = (): boolean => {
    const stats = client.stats();
    return (
      stats.length >= listed &&
      stats.every(
        (instance) =>
          instance.status !== "SERVING" ||
          instance.connectivity === "READY" ||
          instance.connectivity === "TRANSIENT_FAILURE",
      )
    );
  };
  if (isSettled() || signal.aborted) return;
  await new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      unsubscribe();
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    const unsubscribe = client.onChange(() => {
      if (isSettled()) done();
    });
    signal.addEventListener("abort", done, { once: true });
  });
}

/** `--count/--duration/--concurrency`: many unary calls, then the per-instance distribution. */
async function loadRun(
  client: BalancedClient<grpc.ServiceDefinition>,
  invoke: Invoke,
  request: Message | undefined,
  options: BalancedCallOptions,
  tally: InstanceTally,
  serviceName: string,
  stopping: AbortSignal,
  flags: CallFlags,
): Promise<void> {
  const count = flags.count ?? (flags.duration === undefined ? 1 : Number.POSITIVE_INFINITY);
  const until = flags.duration === undefined ? Number.POSITIVE_INFINITY : Date.now() + flags.duration * 1000;
  let issued = 0;
  let total = 0;
  let errors = 0;
  let lastError: LeaseholdError | undefined;
  const isLive = !flags.json && process.stdout.isTTY;
  const progress = isLive
    ? setInterval(() => logUpdate(`${total} calls, ${errors} errors ...`), 250).unref()
    : undefined;
  const worker = async (): Promise<void> => {
    while (issued < count && Date.now() < until && !stopping.aborted) {
      issued += 1;
      const started = performance.now();
      try {
        await (invoke(request, options) as Promise<unknown>);
      } catch (error) {
        errors += 1;
        lastError = LeaseholdError.from(error);
        // Failed at once (nothing to pick, breakers open): wait a little rather than spin.
        if (performance.now() - started < FAST_FAILURE_MS) await pause(stopping);
      }
      total += 1;
    }
  };
  await Promise.all(Array.from({ length: Math.min(flags.concurrency, count) }, worker));
  clearInterval(progress);
  if (isLive) logUpdate.clear();
  const summary = summarize(serviceName, flags.policy, total, errors, tally.totals(client.stats()));
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } else {
    process.stdout.write(`${renderSummary(summary)}\n`);
    if (lastError !== undefined)
      process.stdout.write(`last error: ${lastError.code}: ${lastError.message}\n`);
  }
  if (errors > 0) process.exitCode = 1;
}

/** 50–100 ms (jittered, so workers do not retry in step); ends early on `signal`. */
async function pause(signal: AbortSignal): Promise<void> {
  const ms = RETRY_PAUSE_MS.min + Math.random() * (RETRY_PAUSE_MS.max - RETRY_PAUSE_MS.min);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Awaits a call; a failure becomes `CODE: message`. */
async function settle<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (error) {
    if (error instanceof UsageError) throw error;
    const failure = LeaseholdError.from(error);
    throw new CallFailedError(`${failure.code}: ${failure.message}`, { cause: error });
  }
}

async function forEach(responses: AsyncIterable<unknown>, each: (response: unknown) => void): Promise<void> {
  for await (const response of responses) each(response);
}

/** Requests of a client-streaming or bidi call: NDJSON on stdin, each line checked before it is sent. */
class StdinRequests {
  readonly #controller = new AbortController();
  #lines: Interface | undefined;
  /** The first bad line; the call was cancelled because of it. */
  failure: UsageError | undefined;

  constructor(
    readonly method: DescMethod,
    readonly types: FileRegistry,
  ) {}

  /** Aborted when a line is refused. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  async *messages(): AsyncGenerator<Message> {
    const lines = (this.#lines = createInterface({
      input: process.stdin,
      crlfDelay: Number.POSITIVE_INFINITY,
    }));
    let number = 0;
    try {
      for await (const line of lines) {
        number += 1;
        if (line.trim() === "") continue;
        let message: Message;
        try {
          message = parseRequest(this.method.input, line, this.types, `stdin line ${number}`);
        } catch (error) {
          this.failure = error instanceof UsageError ? error : new UsageError(String(error));
          this.#controller.abort(this.failure);
          return;
        }
        yield message;
      }
    } finally {
      lines.close();
    }
  }

  /**
   * Stops reading: a call the server ended before stdin did must not wait for more input (a
   * generator awaiting its next line cannot be returned from outside).
   */
  close(): void {
    this.#lines?.close();
    process.stdin.destroy();
  }
}

/** A grpc-js service definition of one method, coding messages of the method's descriptors. */
function serviceDefinition(method: DescMethod): grpc.ServiceDefinition {
  const codec = (schema: DescMethod["input"]) => ({
    serialize: (message: Message): Buffer => Buffer.from(toBinary(schema, message)),
    deserialize: (bytes: Buffer): Message => fromBinary(schema, bytes),
  });
  const input = codec(method.input);
  const output = codec(method.output);
  return {
    [method.name]: {
      path: `/${method.parent.typeName}/${method.name}`,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: input.serialize,
      requestDeserialize: input.deserialize,
      responseSerialize: output.serialize,
      responseDeserialize: output.deserialize,
      originalName: method.name,
    } as grpc.MethodDefinition<Message, Message>,
  };
}

function parseJsonText(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new UsageError(
      `request is not valid JSON: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
}

/** `key:value` pairs as gRPC metadata; a `-bin` key takes base64. */
function toMetadata(pairs: readonly string[]): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const pair of pairs) {
    const colon = pair.indexOf(":");
    const key = pair.slice(0, colon).trim().toLowerCase();
    const value = pair.slice(colon + 1).trim();
    if (key.endsWith("-bin")) metadata.add(key, Buffer.from(value, "base64"));
    else metadata.add(key, value);
  }
  return metadata;
}
