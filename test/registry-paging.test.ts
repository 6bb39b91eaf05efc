import { status } from "@grpc/grpc-js";
import {
  GetServiceResponse,
  WatchResponse,
  type Snapshot,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import { listServiceInstances } from "../client/discovery/list-service-instances.js";
import { bulkId, putBulkInstances } from "./helpers/bulk-instances.js";
import {
  WatchRecorder,
  failure,
  rpc,
  testWithSharedFixture,
  type RegistryFixture,
} from "./helpers/registry-fixture.js";
import { eventually } from "./helpers/eventually.js";

const test = testWithSharedFixture();

/** grpc-js's default receive limit, which every default client keeps. */
const DEFAULT_RECEIVE_BYTES = 4 << 20;

const ids = (count: number, from = 0): string[] =>
  Array.from({ length: count }, (_, index) => bulkId(from + index));

/** Waits until the registry's cache lists `count` instances of `service` (ListServices). */
async function cached(t: { context: RegistryFixture }, service: string, count: number): Promise<void> {
  await eventually(
    async () =>
      (await rpc(t.context.client).listServices({})).services.find((s) => s.service === service)
        ?.instances === count,
    { what: `${count} instances of ${service} in the registry's cache` },
  );
}

test.serial(
  "GetService pages follow each other in id order, each instance once, at one revision",
  async (t) => {
    const { client, etcd3 } = t.context;
    await putBulkInstances(etcd3, { service: "paged", count: 23, metadataBytes: 64 });
    await cached(t, "paged", 23);
    const seen: string[] = [];
    const revisions = new Set<string>();
    let pageToken = "";
    let pages = 0;
    do {
      const page = await rpc(client).getService({ service: "paged", pageSize: 5, pageToken });
      t.true(page.instances.length <= 5);
      seen.push(...page.instances.map((instance) => instance.instanceId));
      revisions.add(page.revision);
      pageToken = page.nextPageToken;
      pages += 1;
    } while (pageToken !== "");
    t.is(pages, 5);
    t.deepEqual(seen, ids(23));
    t.is(revisions.size, 1);
  },
);

test.serial("later pages show the first page's revision even after the service changed", async (t) => {
  const { client, etcd3 } = t.context;
  await putBulkInstances(etcd3, { service: "pinned", count: 10, metadataBytes: 64 });
  await cached(t, "pinned", 10);
  const first = await rpc(client).getService({ service: "pinned", pageSize: 4 });
  await putBulkInstances(etcd3, { service: "pinned", count: 12, metadataBytes: 64 }); // adds 10 and 11
  await etcd3
    .delete()
    .key(`/leasehold/v1/services/pinned/${bulkId(7)}`)
    .exec();
  await cached(t, "pinned", 11);
  const rest = await listFrom(t.context.client, "pinned", first.nextPageToken, 4);
  t.deepEqual([...first.instances.map((i) => i.instanceId), ...rest.ids], ids(10));
  t.deepEqual([...rest.revisions], [first.revision]);
  // A listing started now sees the new membership.
  const now = await listServiceInstances(client, "pinned", { pageSize: 4 });
  t.deepEqual(
    now.instances.map((i) => i.instanceId),
    ids(12).filter((id) => id !== bulkId(7)),
  );
});

test.serial(
  "a page token whose revision etcd compacted answers ABORTED, and listServiceInstances starts again",
  async (t) => {
    const { client, etcd3 } = t.context;
    await putBulkInstances(etcd3, { service: "compacted", count: 6, metadataBytes: 64 });
    await cached(t, "compacted", 6);
    const first = await rpc(client).getService({ service: "compacted", pageSize: 2 });
    // The registry's cache moves past the listing's revision, so the next page is read from etcd.
    await putBulkInstances(etcd3, { service: "compacted-b", count: 1, metadataBytes: 64 });
    await cached(t, "compacted-b", 1);
    const head = (await etcd3.get("/leasehold/").exec()).header.revision;
    await etcd3.kv.compact({ revision: head, physical: true });
    const error = await failure(
      rpc(client).getService({ service: "compacted", pageSize: 2, pageToken: first.nextPageToken }),
    );
    t.is(error.code, status.ABORTED);
    t.regex(error.details, /compacted.*list again without page_token/);
    const listed = await listServiceInstances(client, "compacted", { pageSize: 2 });
    t.deepEqual(
      listed.instances.map((i) => i.instanceId),
      ids(6),
    );
  },
);

test.serial("a forged page token or a negative page_size is INVALID_ARGUMENT naming the field", async (t) => {
  const { client } = t.context;
  const forged = await failure(rpc(client).getService({ service: "paged", pageToken: "not-a-token" }));
  t.is(forged.code, status.INVALID_ARGUMENT);
  t.regex(forged.details, /page_token/);
  const otherService = await rpc(client).getService({ service: "paged", pageSize: 1 });
  const crossed = await failure(
    rpc(client).getService({ service: "pinned", pageToken: otherService.nextPageToken }),
  );
  t.is(crossed.code, status.INVALID_ARGUMENT);
  const negative = await failure(rpc(client).getService({ service: "paged", pageSize: -1 }));
  t.is(negative.code, status.INVALID_ARGUMENT);
  t.regex(negative.details, /page_size/);
});

test.serial(
  "default pages of 4 KiB-metadata instances stay under 4 MiB and together list the service",
  async (t) => {
    const { client, etcd3 } = t.context;
    const count = 1500; // ~6.5 MB of instances: more than one default client message
    await putBulkInstances(etcd3, { service: "big", count, metadataBytes: 4096 });
    await cached(t, "big", count);
    const sizes: number[] = [];
    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await rpc(client).getService({ service: "big", pageToken });
      sizes.push(GetServiceResponse.encode(page).finish().length);
      seen.push(...page.instances.map((instance) => instance.instanceId));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    t.true(sizes.length >= 2, `pages: ${sizes.join(", ")}`);
    t.true(
      sizes.every((size) => size < DEFAULT_RECEIVE_BYTES),
      `page sizes: ${sizes.join(", ")}`,
    );
    t.deepEqual(seen, ids(count));
  },
);

test.serial(
  "a split snapshot comes in parts under 4 MiB, has_more on all but the last, then deltas",
  async (t) => {
    const { client, etcd3 } = t.context;
    const count = 1500;
    await cached(t, "big", count); // written by the previous test
    const watch = new WatchRecorder(client, { service: "big", splitSnapshots: true });
    t.teardown(() => watch.cancel());
    const parts = await watch.until((w) => {
      const snapshots = w.snapshots();
      return snapshots.at(-1)?.hasMore === false ? snapshots : undefined;
    }, "the snapshot's last part");
    t.true(parts.length >= 2, `parts: ${parts.length}`);
    t.deepEqual(
      parts.map((part) => part.hasMore),
      parts.map((_, index) => index < parts.length - 1),
    );
    t.is(new Set(parts.map((part) => part.revision)).size, 1);
    for (const part of parts) {
      const bytes = WatchResponse.encode({ event: { $case: "snapshot", value: part } }).finish().length;
      t.true(bytes < DEFAULT_RECEIVE_BYTES, `part of ${bytes} bytes`);
    }
    t.deepEqual(
      parts.flatMap((part: Snapshot) => part.instances.map((instance) => instance.instanceId)),
      ids(count),
    );
    // The stream goes on with deltas after the last part.
    await etcd3
      .delete()
      .key(`/leasehold/v1/services/big/${bulkId(0)}`)
      .exec();
    const delta = await watch.until((w) => w.deltas()[0], "a delta");
    t.deepEqual(delta.removed, [{ service: "big", instanceId: bulkId(0) }]);
    t.true(watch.messages.findIndex((m) => m.event?.$case === "delta") > watch.snapshots().length - 1);
  },
);

test.serial("a watch without split_snapshots still gets its snapshot as one message", async (t) => {
  const { client } = t.context;
  const watch = new WatchRecorder(client, { service: "paged" });
  t.teardown(() => watch.cancel());
  const snapshot = await watch.until((w) => w.snapshots()[0], "snapshot");
  t.false(snapshot.hasMore);
  t.is(snapshot.instances.length, 23);
});

async function listFrom(
  client: Parameters<typeof rpc>[0],
  service: string,
  pageToken: string,
  pageSize: number,
): Promise<{ ids: string[]; revisions: Set<string> }> {
  const found: string[] = [];
  const revisions = new Set<string>();
  let token = pageToken;
  while (token !== "") {
    const page = await rpc(client).getService({ service, pageSize, pageToken: token });
    found.push(...page.instances.map((instance) => instance.instanceId));
    revisions.add(page.revision);
    token = page.nextPageToken;
  }
  return { ids: found, revisions };
}
