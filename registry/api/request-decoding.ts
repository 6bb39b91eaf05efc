import { BinaryReader } from "@bufbuild/protobuf/wire";
import {
  MetadataUpdate_EntriesEntry,
  RegisterRequest,
  RegisterRequest_MetadataEntry,
  RegistryServiceService,
  UpdateInstanceRequest,
} from "../../proto/gen/leasehold/registry/v1/registry.js";

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

/** RegisterRequest.decode, with `metadata` (field 6) keeping every key. */
export function decodeRegisterRequest(bytes: Uint8Array): RegisterRequest {
  return {
    ...RegisterRequest.decode(bytes),
    metadata: mapEntries(bytes, 6, (entry) => RegisterRequest_MetadataEntry.decode(entry)),
  };
}

/** UpdateInstanceRequest.decode, with `metadata.entries` (field 7, then 1) keeping every key. */
export function decodeUpdateInstanceRequest(bytes: Uint8Array): UpdateInstanceRequest {
  const request = UpdateInstanceRequest.decode(bytes);
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

/**
 * `RegistryServiceService` with the request decoders above for Register and UpdateInstance, so
 * that no metadata key is lost before validation. Serve this definition, not the generated one.
 */
export const registryServiceDefinition: typeof RegistryServiceService = {
  ...RegistryServiceService,
  register: { ...RegistryServiceService.register, requestDeserialize: decodeRegisterRequest },
  updateInstance: {
    ...RegistryServiceService.updateInstance,
    requestDeserialize: decodeUpdateInstanceRequest,
  },
};
