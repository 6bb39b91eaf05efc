import type { IKeyValue, IRangeRequest, IRangeResponse } from "etcd3";

/** One page of {@link rangeInPages}. */
export interface RangePage {
  /** Keys of this page, in key order. */
  readonly kvs: readonly IKeyValue[];
  /** The revision every page is read at (the first page's, unless one was given). */
  readonly revision: bigint;
  /** Keys from this page's first key to the end of the range at that revision (etcd's `count`): the whole range on the first page of a read that does not resume. */
  readonly count: number;
}

/** Options of {@link rangeInPages}. */
export interface PagedRangeOptions {
  /** First key of the range (inclusive). */
  readonly start: Buffer;
  /** End of the range (exclusive), e.g. `Range.prefix(p).end`. */
  readonly end: Buffer;
  /** Most keys of one page (etcd's `limit`); at least 1. With `targetPageBytes`, of the first page. */
  readonly pageKeys: number;
  /**
   * Sizes later pages to about this many bytes of keys and values, from the previous page's
   * average (between 1 and `maxPageKeys` keys); undefined keeps `pageKeys` for every page.
   */
  readonly targetPageBytes?: number | undefined;
  /** Most keys of a page sized by `targetPageBytes`; default 10000. */
  readonly maxPageKeys?: number | undefined;
  /** Read at this revision; undefined pins the revision etcd answers the first page at. */
  readonly revision?: bigint | undefined;
  /** Start after this key (exclusive) instead of at `start`: resumes a paged read. */
  readonly after?: Buffer | undefined;
}

/**
 * Reads a key range in pages at ONE revision, so no single etcd answer has to carry the whole
 * range (grpc caps a message; the registry's etcd client accepts 64 MiB). The first page pins
 * the revision (unless `revision` is given); later pages read at that revision from the key after
 * the previous page's last key, with `limit` = `pageKeys`. Every page is one `read`, which sends
 * the request to etcd (a linearizable Range), so paging adds no consistency gap: the pages are
 * exactly the range at that revision.
 *
 * @throws whatever `read` throws, e.g. etcd's "required revision has been compacted" once etcd
 * compacts the pinned revision between two pages (the caller lists again).
 */
export async function* rangeInPages(
  read: (request: IRangeRequest) => Promise<IRangeResponse>,
  options: PagedRangeOptions,
): AsyncGenerator<RangePage, void, undefined> {
  let pageKeys = Math.max(1, Math.floor(options.pageKeys));
  let revision = options.revision;
  let from = options.after === undefined ? options.start : keyAfter(options.after);
  for (;;) {
    const response = await read({
      key: from,
      range_end: options.end,
      limit: pageKeys,
      revision: revision === undefined ? 0 : String(revision),
    });
    revision ??= BigInt(response.header.revision);
    yield { kvs: response.kvs, revision, count: Number(response.count) };
    const last = response.kvs.at(-1);
    if (!response.more || last === undefined) return;
    from = keyAfter(last.key);
    if (options.targetPageBytes !== undefined) {
      let bytes = 0;
      for (const kv of response.kvs) bytes += kv.key.length + kv.value.length;
      const perKey = Math.max(1, bytes / response.kvs.length);
      pageKeys = Math.min(
        options.maxPageKeys ?? 10_000,
        Math.max(1, Math.floor(options.targetPageBytes / perKey)),
      );
    }
  }
}

/** The smallest key after `key` (etcd keys are byte strings: `key` + a zero byte). */
function keyAfter(key: Buffer): Buffer {
  return Buffer.concat([key, Buffer.from([0])]);
}
