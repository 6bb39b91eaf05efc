import { credentials, loadPackageDefinition, type ServiceError } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

/** The fields of the generic clients used here (proto-loader clients are untyped). */
interface GenericClient {
  close(): void;
}
interface HealthClient extends GenericClient {
  check(
    request: { service: string },
    callback: (error: ServiceError | null, response: { status: string }) => void,
  ): void;
}
interface ReflectionStream {
  on(
    event: "data",
    listener: (response: { listServicesResponse?: { service: { name: string }[] } }) => void,
  ): void;
  on(event: "error", listener: (error: Error) => void): void;
  write(request: { listServices: string }): void;
  end(): void;
}
interface ReflectionClient extends GenericClient {
  ServerReflectionInfo(): ReflectionStream;
}
type ClientConstructor<T> = new (
  address: string,
  channelCredentials: ReturnType<typeof credentials.createInsecure>,
) => T;

/** `grpc.health.v1.Health/Check` of `service` at `address`: "SERVING", "NOT_SERVING", ... */
export async function healthStatus(address: string, service = ""): Promise<string> {
  const definition = loadPackageDefinition(loadSync(healthProtoPath, { enums: String }));
  // proto-loader gives untyped constructors; the shape used is declared above.
  const Health = (definition["grpc"] as never)["health"]["v1"]["Health"] as ClientConstructor<HealthClient>;
  const client = new Health(address, credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) =>
      client.check({ service }, (error, response) =>
        error === null ? resolve(response.status) : reject(error),
      ),
    );
  } finally {
    client.close();
  }
}

/** Service names listed by server reflection (v1) at `address`. */
export async function reflectedServices(address: string): Promise<string[]> {
  const require = createRequire(import.meta.url);
  const root = join(dirname(require.resolve("@grpc/reflection/package.json")), "build", "proto");
  const definition = loadPackageDefinition(
    loadSync("grpc/reflection/v1/reflection.proto", { includeDirs: [root] }),
  );
  const Reflection = (definition["grpc"] as never)["reflection"]["v1"][
    "ServerReflection"
  ] as ClientConstructor<ReflectionClient>;
  const client = new Reflection(address, credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => {
      const stream = client.ServerReflectionInfo();
      stream.on("data", (response) => {
        resolve((response.listServicesResponse?.service ?? []).map((service) => service.name).sort());
        stream.end();
      });
      stream.on("error", reject);
      stream.write({ listServices: "" });
    });
  } finally {
    client.close();
  }
}
