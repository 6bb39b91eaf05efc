import { BinaryReader } from "@bufbuild/protobuf/wire";
import {
  Metadata,
  status,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
} from "@grpc/grpc-js";
import {
  MetadataUpdate_EntriesEntry,
  RegisterRequest,
  RegisterRequest_MetadataEntry,
  RegistryServiceService,
  UpdateInstanceRequest,
  type RegistryServiceServer,
  type WatchRequest,
  type WatchResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { encodeWatchResponse } from "../watch/watch-encoding.js";

/** Length-delimited wire type. */
const LENGTH_DELIMITED = 2;

/**
 * Every entry of the `map<string, string>` field `fieldNumber` of the message in `bytes`, as own
 * properties, the last entry of a key winning (proto3 map semantics). Unlike ts-proto's decode,
 * which assigns `map[key] = value` and so silently drops a `__proto__` key, this keeps every key,
 * so that validation can refuse it by name.
 */
function mapEntries(
  bytes: Uint8Array,
  fieldNumber: number,
  decodeEntry: (entry: Uint8Array) => { key: string; value: string },
): Record<string, string> {
  const entries: Record<string, string> = {};
  for (const entry of fieldOccurrences(bytes, fieldNumber)) {
    const { key, value } = decodeEntry(entry);
    Object.defineProperty(entries, key, { value, enumerable: true, configurable: true, writable: true });
  }
  return entries;
}

/** The payloads of every length-delimited occurrence of field `fieldNumber` in `bytes`. */
function fieldOccurrences(bytes: Uint8Array, fieldNumber: number): Uint8Array[] {
  const reader = new BinaryReader(bytes);
  const found: Uint8Array[] = [];
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === fieldNumber && (tag & 7) === LENGTH_DELIMITED) found.push(reader.bytes());
    else reader.skip(tag & 7);
  }
  return found;
}

/** The one map key ts-proto's decode mishandles, as it appears on the wire (UTF-8). */
const PROTO_KEY = Buffer.from("__proto__");

/**
 * Whether `bytes` may hold a map entry keyed `__proto__`: only then does ts-proto's decode differ
 * from proto3 map semantics. A native byte search, instead of a second decode of every request
 * (issue 10, Register profile).
 */
function mayHoldProtoKey(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).includes(PROTO_KEY);
}

/** RegisterRequest.decode, with `metadata` (field 6) keeping every key. */
export function decodeRegisterRequest(bytes: Uint8Array): RegisterRequest {
  if (!mayHoldProtoKey(bytes)) return RegisterRequest.decode(bytes);
  return {
    ...RegisterRequest.decode(bytes),
    metadata: mapEntries(bytes, 6, (entry) => RegisterRequest_MetadataEntry.decode(entry)),
  };
}

/** UpdateInstanceRequest.decode, with `metadata.entries` (field 7, then 1) keeping every key. */
export function decodeUpdateInstanceRequest(bytes: Uint8Array): UpdateInstanceRequest {
  const request = UpdateInstanceRequest.decode(bytes);
  if (!mayHoldProtoKey(bytes)) return request;
  const updates = fieldOccurrences(bytes, 7);
  if (request.metadata === undefined || updates.length === 0) return request;
  const entries: Record<string, string> = {};
  for (const update of updates) {
    Object.defineProperties(
      entries,
      Object.getOwnPropertyDescriptors(
        mapEntries(update, 1, (entry) => MetadataUpdate_EntriesEntry.decode(entry)),
      ),
    );
  }
  return { ...request, metadata: { entries } };
}

/** Marks a request whose bytes did not decode; its value is the decoder's complaint. */
const undecodable = Symbol("undecodable request");

/**
 * Wraps `decode` so that bytes that are not a message of `type` yield a marked placeholder
 * instead of throwing: grpc-js answers a throwing decoder INTERNAL, and the handlers guarded by
 * {@link guardUndecodable} answer INVALID_ARGUMENT instead.
 */
function tolerant<T>(decode: (bytes: Buffer) => T): (bytes: Buffer) => T {
  return (bytes) => {
    try {
      return decode(bytes);
    } catch (error) {
      return { [undecodable]: error instanceof Error ? error.message : String(error) } as T;
    }
  };
}

function undecodableError(request: unknown, messageType: string): ServiceError | undefined {
  if (typeof request !== "object" || request === null || !(undecodable in request)) return undefined;
  const details = `request: not a valid ${messageType} message (${String(request[undecodable])})`;
  return Object.assign(new Error(details), {
    code: status.INVALID_ARGUMENT,
    details,
    metadata: new Metadata(),
  });
}

/**
 * The handlers of `implementation`, where a unary or server-streaming request that did not decode
 * (see {@link registryServiceDefinition}) is answered INVALID_ARGUMENT before the handler runs.
 */
export function guardUndecodable(implementation: RegistryServiceServer): RegistryServiceServer {
  const unary =
    <Request, Response>(
      handler: (call: ServerUnaryCall<Request, Response>, callback: sendUnaryData<Response>) => void,
      messageType: string,
    ) =>
    (call: ServerUnaryCall<Request, Response>, callback: sendUnaryData<Response>): void => {
      const error = undecodableError(call.request, messageType);
      if (error === undefined) handler(call, callback);
      else callback(error);
    };
  const prefix = "leasehold.registry.v1.";
  return {
    ...implementation,
    register: unary(implementation.register, `${prefix}RegisterRequest`),
    updateInstance: unary(implementation.updateInstance, `${prefix}UpdateInstanceRequest`),
    deregister: unary(implementation.deregister, `${prefix}DeregisterRequest`),
    getService: unary(implementation.getService, `${prefix}GetServiceRequest`),
    listServices: unary(implementation.listServices, `${prefix}ListServicesRequest`),
    watch: (call: ServerWritableStream<WatchRequest, WatchResponse>) => {
      const error = undecodableError(call.request, `${prefix}WatchRequest`);
      if (error === undefined) implementation.watch(call);
      else call.emit("error", error);
    },
  };
}

/**
 * `RegistryServiceService` with the request decoders above for Register and UpdateInstance, so
 * that no metadata key is lost before validation, and with every unary and server-streaming
 * decoder made tolerant (serve the handlers through {@link guardUndecodable}). KeepAlive keeps the
 * generated decoder: a message that does not decode ends its stream INTERNAL, as grpc-js does.
 * Watch responses are encoded by {@link encodeWatchResponse} (once per delta, not per stream).
 * Serve this definition, not the generated one.
 */
export const registryServiceDefinition: typeof RegistryServiceService = {
  ...RegistryServiceService,
  register: { ...RegistryServiceService.register, requestDeserialize: tolerant(decodeRegisterRequest) },
  updateInstance: {
    ...RegistryServiceService.updateInstance,
    requestDeserialize: tolerant(decodeUpdateInstanceRequest),
  },
  deregister: {
    ...RegistryServiceService.deregister,
    requestDeserialize: tolerant(RegistryServiceService.deregister.requestDeserialize),
  },
  getService: {
    ...RegistryServiceService.getService,
    requestDeserialize: tolerant(RegistryServiceService.getService.requestDeserialize),
  },
  listServices: {
    ...RegistryServiceService.listServices,
    requestDeserialize: tolerant(RegistryServiceService.listServices.requestDeserialize),
  },
  watch: {
    ...RegistryServiceService.watch,
    requestDeserialize: tolerant(RegistryServiceService.watch.requestDeserialize),
    // Each delta and progress encoded once for every stream that sends it.
    responseSerialize: encodeWatchResponse,
  },
};
