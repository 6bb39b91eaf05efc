import { Metadata, type ServiceError } from "@grpc/grpc-js";
import type {
  GetServiceResponse,
  ListServicesResponse,
  RegistryServiceClient,
} from "../proto/gen/leasehold/registry/v1/registry.js";

/** Deadline of a one-shot read after the registry answered its check, in ms. */
export const READ_TIMEOUT_MS = 5000;

/** `GetService`; rejects with the registry's ServiceError (INVALID_ARGUMENT for a bad name). */
export async function getService(
  registry: RegistryServiceClient,
  service: string,
  timeoutMs = READ_TIMEOUT_MS,
): Promise<GetServiceResponse> {
  return await new Promise((resolve, reject) =>
    registry.getService(
      { service },
      new Metadata(),
      { deadline: new Date(Date.now() + timeoutMs) },
      (error: ServiceError | null, response) => (error === null ? resolve(response) : reject(error)),
    ),
  );
}

/** `ListServices`; rejects with the registry's ServiceError. */
export async function listServices(
  registry: RegistryServiceClient,
  timeoutMs = READ_TIMEOUT_MS,
): Promise<ListServicesResponse> {
  return await new Promise((resolve, reject) =>
    registry.listServices(
      {},
      new Metadata(),
      { deadline: new Date(Date.now() + timeoutMs) },
      (error: ServiceError | null, response) => (error === null ? resolve(response) : reject(error)),
    ),
  );
}
