import { WatchResponse } from "../../proto/gen/leasehold/registry/v1/registry.js";

/** Encoded deltas by the `Delta` object they encode: one delta part is shared by every stream of its service. */
const encodedDeltas = new WeakMap<object, Buffer>();

/** The last progress encoded, by `revision/stale`: a broadcast sends the same one to every stream. */
let lastProgress: { readonly key: string; readonly bytes: Buffer } | undefined;

/**
 * The protobuf bytes of a Watch response, for grpc-js's `responseSerialize`. A delta is encoded
 * once per `Delta` object and a progress once per `(revision, stale)`, and the same buffer goes to
 * every stream that sends it (issue 10: the hub's fan-out encoded the same message once per stream,
 * a quarter of the registry's CPU at 1,000 streams). Cached deltas are never changed after they
 * are first written (`WatchHub` and `WatchSubscription` build a new one for every change).
 */
export function encodeWatchResponse(message: WatchResponse): Buffer {
  const { event } = message;
  if (event?.$case === "delta") {
    let bytes = encodedDeltas.get(event.value);
    if (bytes === undefined) encodedDeltas.set(event.value, (bytes = encode(message)));
    return bytes;
  }
  if (event?.$case === "progress") {
    const key = `${event.value.revision}/${event.value.stale}`;
    if (lastProgress?.key !== key) lastProgress = { key, bytes: encode(message) };
    return lastProgress.bytes;
  }
  return encode(message);
}

function encode(message: WatchResponse): Buffer {
  const bytes = WatchResponse.encode(message).finish();
  // A view of the writer's buffer, not a copy (ts-proto's own serializer copies with Buffer.from).
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
