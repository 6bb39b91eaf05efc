import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { Delta, Instance, Snapshot, WatchResponse } from "../../proto/gen/leasehold/registry/v1/registry.js";

/** Wire tags (field number << 3 | 2, length-delimited) of the fields encoded here by hand. */
const TAG = {
  /** `WatchResponse.snapshot` (1), `Snapshot.instances` (1), `Delta.upserted` (1). */
  field1: 10,
  /** `WatchResponse.delta` (2). */
  field2: 18,
} as const;

/** Encoded deltas by the `Delta` object they encode: one delta part is shared by every stream of its service. */
const encodedDeltas = new WeakMap<Delta, Buffer>();

/**
 * Encoded instances by `Instance` object: the hub's cache, its deltas and every stream's snapshot
 * and coalesced flush share these objects, never changed once built (a change is a new object).
 */
const encodedInstances = new WeakMap<Instance, Uint8Array>();

/** The last progress encoded, by `revision/stale`: a broadcast sends the same one to every stream. */
let lastProgress: { readonly key: string; readonly bytes: Buffer } | undefined;

/**
 * The protobuf bytes of a Watch response, for grpc-js's `responseSerialize`: the same bytes as
 * `WatchResponse.encode`, encoded once where streams share them (issue 10: the fan-out encoded
 * the same message once per stream, a quarter of the registry's CPU at 1,000 streams). A delta is
 * encoded once per `Delta` object and a progress once per `(revision, stale)`, and the same buffer
 * goes to every stream that sends it; each instance is encoded once per `Instance` object, so a
 * snapshot or a coalesced flush costs a copy of its instances' bytes, not an encode of each.
 */
export function encodeWatchResponse(message: WatchResponse): Buffer {
  const { event } = message;
  switch (event?.$case) {
    case "delta": {
      let bytes = encodedDeltas.get(event.value);
      if (bytes === undefined) {
        const writer = new BinaryWriter().uint32(TAG.field2).fork();
        encodeDelta(event.value, writer);
        encodedDeltas.set(event.value, (bytes = finish(writer.join())));
      }
      return bytes;
    }
    case "snapshot": {
      const snapshot = event.value;
      const writer = new BinaryWriter().uint32(TAG.field1).fork();
      for (const instance of snapshot.instances) writer.uint32(TAG.field1).bytes(encodedInstance(instance));
      Snapshot.encode({ ...snapshot, instances: [] }, writer);
      return finish(writer.join());
    }
    case "progress": {
      const key = `${event.value.revision}/${event.value.stale}`;
      if (lastProgress?.key !== key) lastProgress = { key, bytes: finish(WatchResponse.encode(message)) };
      return lastProgress.bytes;
    }
    default:
      return finish(WatchResponse.encode(message));
  }
}

/** `Delta.encode`, with each upserted instance's cached bytes (field 1 comes first, as there). */
function encodeDelta(delta: Delta, writer: BinaryWriter): void {
  for (const instance of delta.upserted) writer.uint32(TAG.field1).bytes(encodedInstance(instance));
  Delta.encode({ ...delta, upserted: [] }, writer);
}

function encodedInstance(instance: Instance): Uint8Array {
  let bytes = encodedInstances.get(instance);
  if (bytes === undefined) encodedInstances.set(instance, (bytes = Instance.encode(instance).finish()));
  return bytes;
}

/** A view of the writer's bytes, not a copy (ts-proto's own serializer copies with Buffer.from). */
function finish(writer: BinaryWriter): Buffer {
  const bytes = writer.finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
