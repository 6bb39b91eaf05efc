/**
 * A gRPC server reflection client (grpc/grpc `doc/server-reflection.md`): asks one server for the
 * services it serves and the FileDescriptorProtos that define them. Speaks
 * `grpc.reflection.v1.ServerReflection` and falls back to `v1alpha` (same messages) on
 * UNIMPLEMENTED, as grpcurl does. The few reflection messages are coded by hand with
 * `@bufbuild/protobuf/wire`, so nothing is generated or loaded for them.
 */
import * as grpc from "@grpc/grpc-js";
import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";

const PATHS = [
  "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
] as const;

/** A reflection request: exactly one of the lookups (field numbers of ServerReflectionRequest). */
type ReflectionRequest = { readonly listServices: string } | { readonly fileContainingSymbol: string };

/** The parts of ServerReflectionResponse this client reads. */
interface ReflectionResponse {
  readonly files: Uint8Array[];
  readonly services: string[];
  readonly error?: { readonly code: number; readonly message: string };
}

/** A reflection failure with the gRPC status code of the server's answer (or of the stream). */
export class ReflectionError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

/** Options of {@link ReflectionClient}. */
export interface ReflectionClientOptions {
  /** Deadline of the whole reflection session, ms. Default 10000. */
  readonly timeoutMs?: number;
  /** Sent with the reflection stream (servers may authorise it like any call). */
  readonly metadata?: grpc.Metadata;
  readonly credentials?: grpc.ChannelCredentials;
  /**
   * With TLS, the name the server's certificate must carry instead of the address's host: the
   * service name, as `leasehold:///SERVICE` channels check it.
   */
  readonly serverName?: string;
}

/** One reflection session with one server; {@link close} when done. */
export class ReflectionClient {
  readonly #client: grpc.Client;
  readonly #deadline: number;
  readonly #metadata: grpc.Metadata;
  #session: Session | undefined;

  constructor(
    readonly address: string,
    options: ReflectionClientOptions = {},
  ) {
    this.#client = new grpc.Client(
      address,
      options.credentials ?? grpc.credentials.createInsecure(),
      options.serverName === undefined ? {} : { "grpc.ssl_target_name_override": options.serverName },
    );
    this.#deadline = Date.now() + (options.timeoutMs ?? 10_000);
    this.#metadata = options.metadata ?? new grpc.Metadata();
  }

  /** Full names of the services the server reflects (`pkg.Service`). */
  async listServices(): Promise<string[]> {
    return (await this.#ask({ listServices: "*" })).services;
  }

  /**
   * The file defining `symbol` (a service, method or message full name) and the files it
   * imports, as the server sends them.
   * @throws ReflectionError NOT_FOUND when the server does not know the symbol.
   */
  async fileContainingSymbol(symbol: string): Promise<FileDescriptorProto[]> {
    const response = await this.#ask({ fileContainingSymbol: symbol });
    return response.files.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
  }

  close(): void {
    this.#session?.end();
    this.#client.close();
  }

  async #ask(request: ReflectionRequest): Promise<ReflectionResponse> {
    if (this.#session === undefined) {
      // v1 first; a server that answers UNIMPLEMENTED only knows v1alpha (or no reflection).
      const v1 = new Session(this.#client, PATHS[0], this.#deadline, this.#metadata);
      try {
        const response = await v1.ask(request);
        this.#session = v1;
        return checked(response);
      } catch (error) {
        v1.end();
        if (!(error instanceof ReflectionError && error.code === grpc.status.UNIMPLEMENTED)) throw error;
      }
      this.#session = new Session(this.#client, PATHS[1], this.#deadline, this.#metadata);
    }
    return checked(await this.#session.ask(request));
  }
}

function checked(response: ReflectionResponse): ReflectionResponse {
  if (response.error !== undefined) throw new ReflectionError(response.error.code, response.error.message);
  return response;
}

/** One ServerReflectionInfo stream: requests answered in order. */
class Session {
  readonly #stream: grpc.ClientDuplexStream<ReflectionRequest, ReflectionResponse>;
  readonly #waiting: { resolve: (r: ReflectionResponse) => void; reject: (e: Error) => void }[] = [];
  #failure: ReflectionError | undefined;

  constructor(client: grpc.Client, path: string, deadline: number, metadata: grpc.Metadata) {
    this.#stream = client.makeBidiStreamRequest(path, encodeRequest, decodeResponse, metadata, { deadline });
    this.#stream.on("data", (response: ReflectionResponse) => this.#waiting.shift()?.resolve(response));
    this.#stream.on("error", (error: grpc.ServiceError) =>
      this.#fail(new ReflectionError(error.code, error.details)),
    );
    this.#stream.on("end", () =>
      this.#fail(new ReflectionError(grpc.status.UNAVAILABLE, "reflection stream ended early")),
    );
  }

  ask(request: ReflectionRequest): Promise<ReflectionResponse> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      this.#stream.write(request);
    });
  }

  end(): void {
    this.#stream.end();
    this.#stream.cancel();
  }

  #fail(error: ReflectionError): void {
    this.#failure ??= error;
    for (const waiter of this.#waiting.splice(0)) waiter.reject(this.#failure);
  }
}

function encodeRequest(request: ReflectionRequest): Buffer {
  const writer = new BinaryWriter();
  if ("listServices" in request) writer.tag(7, WireType.LengthDelimited).string(request.listServices);
  else writer.tag(4, WireType.LengthDelimited).string(request.fileContainingSymbol);
  return Buffer.from(writer.finish());
}

/** ServerReflectionResponse: 4 file_descriptor_response, 6 list_services_response, 7 error_response. */
function decodeResponse(bytes: Buffer): ReflectionResponse {
  const files: Uint8Array[] = [];
  const services: string[] = [];
  let error: { code: number; message: string } | undefined;
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 4 && wireType === WireType.LengthDelimited) {
      eachField(reader.bytes(), (inner, number) => {
        if (number === 1) files.push(inner.bytes());
        else return false;
        return true;
      });
    } else if (field === 6 && wireType === WireType.LengthDelimited) {
      eachField(reader.bytes(), (inner, number) => {
        if (number !== 1) return false;
        eachField(inner.bytes(), (service, serviceField) => {
          if (serviceField !== 1) return false;
          services.push(service.string());
          return true;
        });
        return true;
      });
    } else if (field === 7 && wireType === WireType.LengthDelimited) {
      const found = { code: grpc.status.UNKNOWN as number, message: "" };
      eachField(reader.bytes(), (inner, number) => {
        if (number === 1) found.code = inner.int32();
        else if (number === 2) found.message = inner.string();
        else return false;
        return true;
      });
      error = found;
    } else {
      reader.skip(wireType);
    }
  }
  return error === undefined ? { files, services } : { files, services, error };
}

/** Reads each field of `bytes`; `read` returns false for a field it did not consume (skipped). */
function eachField(bytes: Uint8Array, read: (reader: BinaryReader, field: number) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (!read(reader, field)) reader.skip(wireType);
  }
}
