import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import type {
  GetServiceRequest,
  GetServiceResponse,
  Instance,
  RegistryServiceClient,
} from "../../proto/gen/leasehold/registry/v1/registry.js";

/** Options of {@link listServiceInstances}. */
export interface ListServiceInstancesOptions {
  /** Deadline of each GetService page, in milliseconds; default 5000. */
  readonly pageTimeoutMs?: number | undefined;
  /** `page_size` of every request; default 0 (the registry's budget: responses under ~3 MiB). */
  readonly pageSize?: number | undefined;
  /**
   * Listings started again from the first page when the registry answers ABORTED (etcd compacted
   * the listing's revision between two pages); default 3.
   */
  readonly maxRestarts?: number | undefined;
  /** Stops between pages (rejects with the signal's reason). */
  readonly signal?: AbortSignal | undefined;
}

/** Every instance of a service at one revision. */
export interface ServiceInstances {
  /** Sorted by instance id. */
  readonly instances: readonly Instance[];
  /** The etcd revision every page was read at. */
  readonly revision: string;
}

/**
 * One GetService call (one page) with a deadline of `timeoutMs` milliseconds.
 * @throws the registry's grpc-js ServiceError (INVALID_ARGUMENT for a bad name or page token,
 * ABORTED when the listing's revision was compacted, DEADLINE_EXCEEDED, UNAVAILABLE, ...).
 */
export async function getServicePage(
  registry: RegistryServiceClient,
  request: GetServiceRequest,
  timeoutMs = 5000,
): Promise<GetServiceResponse> {
  return await new Promise((resolve, reject) =>
    registry.getService(
      request,
      new Metadata(),
      { deadline: new Date(Date.now() + timeoutMs) },
      (error: ServiceError | null, response) => (error === null ? resolve(response) : reject(error)),
    ),
  );
}

/**
 * Every instance of `service`, following GetService's `next_page_token` so that a service of any
 * size is read in responses under grpc's default 4 MiB receive limit. All pages are one view at
 * one revision; when the registry answers ABORTED (the revision was compacted mid-listing), the
 * listing starts again, at most `maxRestarts` times.
 * @throws the registry's grpc-js ServiceError of a failed page (the last ABORTED once restarts
 * are used up), or the signal's reason.
 */
export async function listServiceInstances(
  registry: RegistryServiceClient,
  service: string,
  options: ListServiceInstancesOptions = {},
): Promise<ServiceInstances> {
  const maxRestarts = options.maxRestarts ?? 3;
  for (let restarts = 0; ; restarts += 1) {
    try {
      return await listOnce(registry, service, options);
    } catch (error) {
      if ((error as Partial<ServiceError>).code !== status.ABORTED || restarts >= maxRestarts) throw error;
    }
  }
}

async function listOnce(
  registry: RegistryServiceClient,
  service: string,
  options: ListServiceInstancesOptions,
): Promise<ServiceInstances> {
  const instances: Instance[] = [];
  let pageToken = "";
  for (;;) {
    options.signal?.throwIfAborted();
    const page = await getServicePage(
      registry,
      { service, pageSize: options.pageSize ?? 0, pageToken },
      options.pageTimeoutMs,
    );
    for (const instance of page.instances) instances.push(instance);
    if (page.nextPageToken === "") return { instances, revision: page.revision };
    pageToken = page.nextPageToken;
  }
}
