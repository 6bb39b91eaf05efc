import { Metadata, type ServiceError } from "@grpc/grpc-js";
import type {
  GetServiceResponse,
  ListServicesResponse,
  RegistryServiceClient,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import { getServicePage, listServiceInstances } from "../client/discovery/list-service-instances.js";

/** Deadline of a one-shot read after the registry answered its check, in ms. */
export const READ_TIMEOUT_MS = 5000;

/**
 * Every instance of `service` (GetService, following its pages; `timeoutMs` is each page's
 * deadline); rejects with the registry's ServiceError (INVALID_ARGUMENT for a bad name).
 */
export async function getService(
  registry: RegistryServiceClient,
  service: string,
  timeoutMs = READ_TIMEOUT_MS,
): Promise<GetServiceResponse> {
  const listed = await listServiceInstances(registry, service, { pageTimeoutMs: timeoutMs });
  return { instances: [...listed.instances], revision: listed.revision, nextPageToken: "" };
}

/** Checks that `service` is a name the registry accepts: one GetService page of one instance. */
export async function checkServiceName(registry: RegistryServiceClient, service: string): Promise<void> {
  await getServicePage(registry, { service, pageSize: 1 }, READ_TIMEOUT_MS);
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
