import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

// grpc.health.v1 by hand: two one-field messages, so the CLI needs no .proto loading to ask a
// registry or a sidecar's target for its health.

/** `grpc.health.v1.HealthCheckResponse.ServingStatus` values. */
export const HealthStatus = Object.freeze({
  UNKNOWN: 0,
  SERVING: 1,
  NOT_SERVING: 2,
  SERVICE_UNKNOWN: 3,
});

/** The name of a ServingStatus value ("SERVING", ...), or the number for one not in the enum. */
export function healthStatusName(value: number): string {
  return Object.entries(HealthStatus).find(([, number]) => number === value)?.[0] ?? String(value);
}

/** `HealthCheckRequest { string service = 1; }`. */
export function encodeHealthRequest(service: string): Buffer {
  return Buffer.from(new BinaryWriter().uint32(10).string(service).finish());
}

/** `HealthCheckResponse { ServingStatus status = 1; }`; a missing field is UNKNOWN (0). */
export function decodeHealthStatus(bytes: Uint8Array): number {
  const reader = new BinaryReader(bytes);
  let status: number = HealthStatus.UNKNOWN;
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.Varint) status = reader.int32();
    else reader.skip(wireType);
  }
  return status;
}
