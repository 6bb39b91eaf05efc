import type {
  GetServiceRequest,
  GetServiceResponse,
  Instance,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import type { RequestScope, ServicePage } from "../store/etcd-store.js";
import { instanceBytes } from "../store/instance-codec.js";

/**
 * Most approximate bytes of instances in one GetService response (3 MiB): with the proto framing
 * every response stays under grpc's default 4 MiB receive limit, so any default client can read
 * a service of any size page by page.
 */
export const GET_SERVICE_PAGE_BYTES = 3 << 20;

/** Largest `page_size` honoured; larger values are lowered to it (as AIP-158 suggests). */
export const GET_SERVICE_MAX_PAGE_SIZE = 5000;

/** Where GetService pages come from. */
export interface ServicePageSources {
  /** The watch-fed cache's revision. */
  readonly revision: () => bigint;
  /** The cache's instances of `service`, sorted by instance id. */
  readonly cached: (service: string) => readonly Instance[];
  /** Reads a page from etcd at a past revision (see `EtcdStore.readServicePage`). */
  readonly readPage: (
    service: string,
    revision: bigint,
    afterInstanceId: string | undefined,
    maxInstances: number,
    maxBytes: number,
    scope: RequestScope,
  ) => Promise<ServicePage>;
}

/** What a page token says: the listing's revision and the last instance id already returned. */
interface PageToken {
  readonly service: string;
  readonly revision: bigint;
  readonly after: string;
}

/**
 * One page of GetService (`service` already validated). The first page comes from the watch-fed
 * cache at its revision; later pages come from the cache while it is still at the listing's
 * revision, else from etcd at that revision, so every page of a listing is one consistent view.
 * A page holds at most `page_size` (0: no count limit; capped at {@link GET_SERVICE_MAX_PAGE_SIZE})
 * instances and at most {@link GET_SERVICE_PAGE_BYTES} (always at least one instance).
 *
 * @throws RegistryError `invalid_argument` for a negative `page_size` or a page token this
 * registry did not issue for this service, `aborted` when etcd compacted the listing's revision,
 * `unavailable` when etcd does not answer.
 */
export async function getServicePage(
  service: string,
  request: GetServiceRequest,
  sources: ServicePageSources,
  scope: RequestScope,
): Promise<GetServiceResponse> {
  const pageSize = request.pageSize ?? 0;
  if (!Number.isInteger(pageSize) || pageSize < 0) {
    throw new RegistryError("invalid_argument", `page_size must be 0 or more, got ${pageSize}`);
  }
  const maxInstances =
    pageSize === 0 ? Number.MAX_SAFE_INTEGER : Math.min(pageSize, GET_SERVICE_MAX_PAGE_SIZE);
  const token = request.pageToken ? decodePageToken(request.pageToken, service) : undefined;
  const revision = token?.revision ?? sources.revision();
  if (revision === sources.revision()) {
    const all = sources.cached(service);
    const start = token === undefined ? 0 : firstAfter(all, token.after);
    const instances: Instance[] = [];
    let bytes = 0;
    let index = start;
    for (; index < all.length && instances.length < maxInstances; index += 1) {
      const instance = all[index] as Instance;
      const size = instanceBytes(instance);
      if (instances.length > 0 && bytes + size > GET_SERVICE_PAGE_BYTES) break;
      instances.push(instance);
      bytes += size;
    }
    const last = instances.at(-1);
    const hasMore = index < all.length && last !== undefined;
    return {
      instances,
      revision: String(revision),
      nextPageToken: hasMore ? encodePageToken({ service, revision, after: last.instanceId }) : "",
    };
  }
  const page = await sources.readPage(
    service,
    revision,
    token?.after,
    maxInstances,
    GET_SERVICE_PAGE_BYTES,
    scope,
  );
  const hasMore = page.hasMore && page.lastInstanceId !== undefined;
  return {
    instances: [...page.instances],
    revision: String(revision),
    nextPageToken:
      hasMore && page.lastInstanceId !== undefined
        ? encodePageToken({ service, revision, after: page.lastInstanceId })
        : "",
  };
}

/** Index of the first instance whose id sorts after `after` (binary search; ids sorted). */
function firstAfter(instances: readonly Instance[], after: string): number {
  let low = 0;
  let high = instances.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((instances[middle] as Instance).instanceId <= after) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** Opaque to callers: base64url of `[service, revision, after]` as JSON. */
function encodePageToken(token: PageToken): string {
  return Buffer.from(JSON.stringify([token.service, String(token.revision), token.after])).toString(
    "base64url",
  );
}

function decodePageToken(text: string, service: string): PageToken {
  const invalid = () =>
    new RegistryError("invalid_argument", "page_token is not a next_page_token of this service's listing");
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
  } catch {
    throw invalid();
  }
  if (
    !Array.isArray(parsed) ||
    parsed.length !== 3 ||
    parsed[0] !== service ||
    typeof parsed[1] !== "string" ||
    !/^[1-9][0-9]{0,18}$/.test(parsed[1]) ||
    typeof parsed[2] !== "string" ||
    parsed[2] === ""
  ) {
    throw invalid();
  }
  return { service, revision: BigInt(parsed[1]), after: parsed[2] };
}
