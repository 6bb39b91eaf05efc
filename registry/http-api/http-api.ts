import type { IncomingMessage, ServerResponse } from "node:http";
import { TLSSocket } from "node:tls";
import { Metadata } from "@grpc/grpc-js";
import {
  fromBinary,
  fromJson,
  toBinary,
  toJson,
  ScalarType,
  type DescMessage,
  type DescMethod,
  type DescMethodUnary,
  type JsonValue,
  type Message,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  createContextValues,
  type ConnectRouter,
  type HandlerContext,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { codeToHttpStatus, errorToJson } from "@connectrpc/connect/protocol-connect";
import type { Logger } from "pino";
import {
  RegistryServiceService,
  type WatchRequest,
  type WatchResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryService } from "../../proto/gen/leasehold/registry/v1/registry_pb.js";
import type { CallIdentity } from "../auth/registry-auth.js";
import type { RegistryOperations, UnaryOperation } from "../api/registry-service.js";
import { statusOf } from "../api/grpc-status.js";
import { RegistryError } from "../registry-error.js";
import type { RequestScope } from "../store/etcd-store.js";
import type { WatchSink } from "../watch/watch-subscription.js";

/** Every HTTP API path starts with this: Connect's `/{package}.{Service}/{Method}`. */
export const HTTP_API_PATH_PREFIX = `/${RegistryService.typeName}/`;

/** Largest request body the HTTP API reads, in bytes (a Register with full metadata is ~5 KiB). */
export const HTTP_API_MAX_BODY_BYTES = 64 * 1024;

/** Messages a Connect Watch stream queues before the hub is asked to wait for `drain`. */
const WATCH_QUEUE_MESSAGES = 16;

/** The caller's connection (`ip:port`), which the registry limits Watch streams per. */
const CONNECTION = createContextKey("", { description: "the caller's connection, ip:port" });

/** Who the caller is, as registry-auth reads it (see {@link callerOf}). */
const CALLER = createContextKey<CallIdentity>(
  { metadata: new Metadata(), getAuthContext: () => ({}) },
  { description: "the caller's Authorization header and verified client certificate" },
);

/** Takes a request of the admin server; `true` when it is the HTTP API's and was answered. */
export type HttpApiHandler = (request: IncomingMessage, response: ServerResponse) => boolean;

/**
 * proto3 JSON as this API writes it: every field, zero values included (a curl user sees
 * `"weight": 0` rather than no `weight`), lowerCamelCase names. Reads accept both spellings and
 * refuse unknown fields (Connect ignores them by default), so a typo such as `adress` is a 400
 * naming it rather than a silently missing field.
 */
const JSON_OPTIONS = { alwaysEmitImplicit: true, ignoreUnknownFields: false } as const;

/** The ts-proto (de)serialisers of one RegistryService method, as grpc-js uses them. */
interface GrpcCodec {
  requestDeserialize(bytes: Buffer): unknown;
  responseSerialize(value: unknown): Buffer;
}

/**
 * The registry's HTTP/JSON API (issue 9): `leasehold.registry.v1.RegistryService` over Connect's
 * protocol (https://connectrpc.com/docs/protocol), served by `@connectrpc/connect-node`, plus
 * Watch as server-sent events:
 *
 * - `POST /leasehold.registry.v1.RegistryService/{Register,UpdateInstance,Deregister,GetService,ListServices}`
 *   with a proto3 JSON body (`content-type: application/json`; binary `application/proto` too);
 * - `POST .../KeepAlive`: ONE renewal per call (`{"leaseId":"…"}` → `{"leaseId","ttlSeconds"}`), since
 *   the gRPC method is a bidi stream that HTTP/1.1 cannot carry; call it every TTL/3;
 * - `GET .../Watch?service=S&startRevision=R` (`Accept: text/event-stream`): events `snapshot`, `delta`,
 *   `progress`, each `data:` one WatchResponse in proto3 JSON and `id:` its revision (none on a
 *   split snapshot's parts but the last), so an EventSource resumes after a break with
 *   `Last-Event-ID` (which overrides `startRevision`); a
 *   stream the registry ends with an error sends an `error` event (Connect's error JSON) first;
 * - `POST .../Watch` with `application/connect+json` (or `+proto`): Watch as a Connect server
 *   stream, for Connect clients.
 *
 * Messages are converted generically: JSON is parsed against the protobuf-es descriptors
 * (generated next to ts-proto's code from the same .proto), re-encoded in the protobuf binary
 * format and decoded by the ts-proto codecs the gRPC server uses, then handed to the SAME
 * {@link RegistryOperations} as the gRPC handlers: one validation, one behaviour, and fields added
 * to the .proto flow through without edits here. Errors carry the gRPC code (Connect's codes are
 * gRPC's) and message: `invalid_argument` → 400 naming the field, `not_found` → 404,
 * `already_exists` → 409, `unauthenticated` → 401, `permission_denied` → 403, `unavailable` → 503,
 * `resource_exhausted` → 429 (with `Retry-After` when the registry sheds a Register).
 * With auth on, the operations authenticate the caller from the request (see {@link callerOf}):
 * an `Authorization: Bearer TOKEN` header, or the verified client certificate of an HTTPS admin
 * port, exactly as a gRPC call's metadata and certificate. An unknown method is 404
 * (`not_found`, listing the methods). A body without a content type, or curl's default form
 * type, is read as JSON.
 */
export function createHttpApi(operations: RegistryOperations, logger: Logger): HttpApiHandler {
  const unaryOperations: Readonly<Record<string, UnaryOperation<never, unknown>>> = {
    register: operations.register,
    keepAlive: operations.keepAliveOnce,
    updateInstance: operations.updateInstance,
    deregister: operations.deregister,
    getService: operations.getService,
    listServices: operations.listServices,
  };
  const connect = connectNodeAdapter({
    connect: true,
    grpc: false, // gRPC is served on the registry's gRPC port
    grpcWeb: false,
    readMaxBytes: HTTP_API_MAX_BODY_BYTES,
    jsonOptions: JSON_OPTIONS,
    contextValues: (request) =>
      createContextValues().set(CONNECTION, connectionOf(request.socket)).set(CALLER, callerOf(request)),
    fallback: (_request, response) => {
      const methods = RegistryService.methods.map((method) => method.name).join(", ");
      answerError(
        response,
        new ConnectError(`unknown method; ${RegistryService.typeName} has ${methods}`, Code.NotFound),
      );
    },
    routes: (router: ConnectRouter) => {
      for (const method of RegistryService.methods) {
        const run = unaryOperations[method.localName];
        if (run === undefined) continue;
        // KeepAlive's descriptor says bidi stream; over HTTP it is served as one request, one response.
        const unary = { ...method, methodKind: "unary" } as DescMethodUnary;
        const codec = codecOf(method);
        router.rpc(unary, async (request: Message, context: HandlerContext) => {
          const caller = context.values.get(CALLER);
          const response = await run(decode(method, codec, request) as never, scopeOf(context), caller).catch(
            (error: unknown) => {
              throw toConnectError(error);
            },
          );
          return fromBinary(method.output, codec.responseSerialize(response));
        });
      }
      // Watch for Connect clients (a server stream: enveloped messages, `application/connect+json`).
      const watch = RegistryService.method.watch;
      const watchCodec = codecOf(watch);
      router.rpc(watch, async function* (request, context) {
        const messages = watchMessages(
          operations,
          logger,
          decode(watch, watchCodec, request) as WatchRequest,
          context.signal,
          context.values.get(CONNECTION),
          context.values.get(CALLER),
        );
        for await (const message of messages)
          yield fromBinary(watch.output, watchCodec.responseSerialize(message));
      });
    },
  });
  const watchPath = `${HTTP_API_PATH_PREFIX}${RegistryService.method.watch.name}`;
  return (request, response) => {
    const url = request.url ?? "";
    if (!url.startsWith(HTTP_API_PATH_PREFIX)) return false;
    if (request.method === "GET" && (url === watchPath || url.startsWith(`${watchPath}?`))) {
      serveWatchEvents(request, response, operations, logger);
      return true;
    }
    // `curl -d` sends application/x-www-form-urlencoded unless told otherwise: read it as JSON.
    const contentType = request.headers["content-type"];
    if (contentType === undefined || contentType.startsWith("application/x-www-form-urlencoded")) {
      request.headers["content-type"] = "application/json";
    }
    connect(request, response);
    return true;
  };
}

/**
 * The messages `operations.watch` writes, as an async iterable for a Connect server stream. The
 * sink asks the hub to wait (`write()` false, then `drain`) once {@link WATCH_QUEUE_MESSAGES} are
 * queued, so a slow client is held to the hub's stream limits as a gRPC one is. Ends when the hub
 * ends the stream (its error thrown as a ConnectError) or `signal` aborts.
 */
async function* watchMessages(
  operations: RegistryOperations,
  logger: Logger,
  request: WatchRequest,
  signal: AbortSignal,
  connection: string,
  caller: CallIdentity,
): AsyncGenerator<WatchResponse> {
  const queue: WatchResponse[] = [];
  const drained: (() => void)[] = [];
  let ended: { error: RegistryError | undefined } | undefined;
  let wake: (() => void) | undefined;
  const sink: WatchSink = {
    write: (message) => {
      queue.push(message);
      wake?.();
      return queue.length < WATCH_QUEUE_MESSAGES;
    },
    once: (_event, listener) => drained.push(listener),
    end: (error) => {
      ended ??= { error };
      wake?.();
    },
  };
  const abort = new AbortController();
  const stop = () => sink.end();
  signal.addEventListener("abort", stop, { once: true });
  operations
    .watch(request, sink, abort.signal, connection, caller)
    .catch((error: unknown) => sink.end(RegistryError.from(error)));
  try {
    for (;;) {
      const message = queue.shift();
      if (message !== undefined) {
        yield message;
        if (queue.length === 0) for (const listener of drained.splice(0)) listener();
      } else if (ended !== undefined) {
        if (ended.error !== undefined) {
          logWatchFailure(logger, ended.error);
          throw toConnectError(ended.error);
        }
        return;
      } else {
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    }
  } finally {
    signal.removeEventListener("abort", stop);
    abort.abort(); // unsubscribes from the hub
  }
}

/** Logs how a Watch stream failed, as the gRPC handlers do (internal errors with their cause). */
function logWatchFailure(logger: Logger, error: RegistryError): void {
  if (error.code === "internal") logger.error({ err: error.cause, method: "Watch" }, "internal error");
  else logger.debug({ method: "Watch", code: error.code, reason: error.message }, "request failed");
}

function connectionOf(socket: {
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
}): string {
  return `${socket.remoteAddress ?? "unknown"}:${socket.remotePort ?? 0}`;
}

/**
 * What an HTTP request presents, in the shape registry-auth reads from a gRPC call: its
 * `Authorization` header as `authorization` metadata, and, on an HTTPS connection whose client
 * certificate the admin server's CA verified, that certificate (its SANs name the principal).
 */
function callerOf(request: Pick<IncomingMessage, "headers" | "socket">): CallIdentity {
  const metadata = new Metadata();
  const authorization = request.headers.authorization;
  if (authorization !== undefined) {
    try {
      metadata.set("authorization", authorization);
    } catch {
      // Not a legal gRPC metadata value (bytes beyond ASCII): refused as a malformed header.
      metadata.set("authorization", "malformed");
    }
  }
  const { socket } = request;
  const certificate =
    socket instanceof TLSSocket && socket.authorized ? socket.getPeerCertificate() : undefined;
  return {
    metadata,
    getAuthContext: () =>
      certificate === undefined ? {} : { transportSecurityType: "ssl", sslPeerCertificate: certificate },
  };
}

function codecOf(method: DescMethod): GrpcCodec {
  return RegistryServiceService[method.localName as keyof typeof RegistryServiceService];
}

/** A protobuf-es message of `method`'s input as the ts-proto object the operations take. */
function decode(method: DescMethod, codec: GrpcCodec, message: Message): unknown {
  return codec.requestDeserialize(Buffer.from(toBinary(method.input, message)));
}

/** The Connect call's cancellation and deadline (`connect-timeout-ms`) as the operations see them. */
function scopeOf(context: HandlerContext): RequestScope {
  const timeoutMs = context.timeoutMs();
  return { signal: context.signal, deadlineMs: timeoutMs === undefined ? undefined : Date.now() + timeoutMs };
}

/**
 * `error` as a ConnectError: its gRPC code and message, and, when the registry advises a wait (a
 * shed Register's pushback), a `Retry-After` header in whole seconds (RFC 9110 §10.2.3), the HTTP
 * form of the gRPC `grpc-retry-pushback-ms` trailer.
 */
function toConnectError(error: unknown): ConnectError {
  const { code, details } = statusOf(error);
  const pushbackMs = error instanceof RegistryError ? error.retryPushbackMs : undefined;
  const headers =
    pushbackMs === undefined ? undefined : { "retry-after": String(Math.ceil(pushbackMs / 1000)) };
  return new ConnectError(details, code as number, headers);
}

/** Answers `error` as Connect's unary error: its HTTP status and `{"code","message"}`. */
function answerError(
  // http1's ServerResponse, or what connect-node's fallback gets (http1 or http2)
  response: {
    writeHead(status: number, headers: Record<string, string>): unknown;
    end(body: string): unknown;
  },
  error: ConnectError,
  httpStatus = codeToHttpStatus(error.code),
): void {
  response.writeHead(httpStatus, { "content-type": "application/json" });
  response.end(JSON.stringify(errorToJson(error, undefined)));
}

/**
 * Query parameters as the proto3 JSON object of `schema`: values stay strings (proto3 JSON reads
 * numbers and int64 from strings), except `true`/`false` of a bool field, which JSON wants bare.
 */
function queryJson(schema: DescMessage, parameters: URLSearchParams): Record<string, JsonValue> {
  const json: Record<string, JsonValue> = {};
  for (const [name, value] of parameters) {
    const field = schema.fields.find((candidate) => candidate.name === name || candidate.jsonName === name);
    const isBool = field?.fieldKind === "scalar" && field.scalar === ScalarType.BOOL;
    json[name] = isBool && (value === "true" || value === "false") ? value === "true" : value;
  }
  return json;
}

/** One server-sent event (WHATWG HTML §9.2). */
function sseEvent(name: string, id: string | undefined, data: JsonValue): string {
  return `event: ${name}\n${id === undefined ? "" : `id: ${id}\n`}data: ${JSON.stringify(data)}\n\n`;
}

/**
 * `GET .../Watch`: the query's parameters are WatchRequest fields (proto3 JSON names, values as
 * strings), `Last-Event-ID` the revision to resume after. A bad request is answered 400 before
 * the stream starts; after that, failures are `error` events.
 */
function serveWatchEvents(
  request: IncomingMessage,
  response: ServerResponse,
  operations: RegistryOperations,
  logger: Logger,
): void {
  const method = RegistryService.method.watch;
  const codec = codecOf(method);
  let watchRequest: Parameters<RegistryOperations["watch"]>[0];
  try {
    const query = queryJson(method.input, new URL(request.url ?? "", "http://api").searchParams);
    const lastEventId = request.headers["last-event-id"];
    if (typeof lastEventId === "string" && lastEventId !== "") {
      delete query["start_revision"];
      query["startRevision"] = lastEventId;
    }
    watchRequest = decode(method, codec, fromJson(method.input, query)) as typeof watchRequest;
  } catch (error) {
    answerError(response, ConnectError.from(error, Code.InvalidArgument));
    return;
  }

  const abort = new AbortController();
  response.once("close", () => abort.abort());
  let isOpen = false;
  let isEnded = false;
  const open = () => {
    if (isOpen || isEnded) return;
    isOpen = true;
    response.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      "x-accel-buffering": "no",
    });
    // An EventSource reconnects after `retry` ms when the stream ends, sending Last-Event-ID.
    response.write("retry: 1000\n\n");
  };
  const sink: WatchSink = {
    write: (message: WatchResponse) => {
      open();
      const json = toJson(
        method.output,
        fromBinary(method.output, codec.responseSerialize(message)),
        JSON_OPTIONS,
      );
      const name = message.event?.$case ?? "message";
      // A part of a split snapshot with more to come gets no id: resuming after its revision would
      // skip the parts not yet received.
      const isPartial = message.event?.$case === "snapshot" && message.event.value.hasMore;
      return response.write(sseEvent(name, isPartial ? undefined : message.event?.value.revision, json));
    },
    once: (event, listener) => response.once(event, listener),
    end: (error) => {
      if (isEnded) return;
      if (error !== undefined) {
        logWatchFailure(logger, error);
        if (!isOpen) {
          isEnded = true;
          answerError(response, toConnectError(error));
          return;
        }
        response.write(sseEvent("error", undefined, errorToJson(toConnectError(error), undefined)));
      }
      open(); // a stream ended before its first event still answers as one
      isEnded = true;
      response.end();
    },
  };
  operations
    .watch(watchRequest, sink, abort.signal, connectionOf(request.socket), callerOf(request))
    .then(open, (error: unknown) => sink.end(RegistryError.from(error)));
}
