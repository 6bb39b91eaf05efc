import type {
  Delta,
  Instance,
  InstanceKey,
  WatchResponse,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { RegistryError } from "../registry-error.js";
import { instanceBytes } from "../store/instance-codec.js";

/** Where a subscription writes: a server stream, seen through what backpressure needs. */
export interface WatchSink {
  /** Writes one message; `false` asks the writer to wait for `drain` (grpc-js `write()`). */
  write(message: WatchResponse): boolean;
  once(event: "drain", listener: () => void): unknown;
  /** Ends the stream: OK without `error`, else with the error's status. Called at most once. */
  end(error?: RegistryError): void;
}

/** Limits of one Watch stream that is behind (its sink asked to wait for `drain`). */
export interface WatchStreamLimits {
  /**
   * Approximate bytes of coalesced changes a stream may have waiting before it is ended with
   * `RESOURCE_EXHAUSTED`. Registry default 8 MiB: twice the membership of 10,000 typical instances
   * (DESIGN §8), so only a stream that cannot keep up with the membership itself hits it.
   */
  readonly maxQueuedBytes: number;
  /**
   * How long a stream may stay behind without draining at all before it is ended with
   * `RESOURCE_EXHAUSTED`, in milliseconds (registry default 30000). Checked by the hub's timer;
   * a stream is ended only after at least {@link MIN_BEHIND_CHECKS} checks in a row saw no drain,
   * so a burst that blocks the event loop does not end a stream whose `drain` is merely queued.
   */
  readonly maxBehindMs: number;
}

/** Checks in a row that must see a stream behind without a drain before it is ended. */
export const MIN_BEHIND_CHECKS = 3;

/**
 * Target size of one message that carries many instances (a flush after a stream drains, a large
 * delta, a part of a split snapshot), in approximate bytes (1 MiB, by `instanceBytes`): well under
 * grpc's default 4 MiB receive limit.
 */
export const WATCH_MESSAGE_BYTES = 1 << 20;

/**
 * One service's part of a delta, its approximate size in bytes (by `instanceBytes`), the Watch
 * response that carries it, and its changes as a stream that is behind keeps them: all shared by
 * every stream that sends it.
 */
interface DeltaPart {
  readonly delta: Delta;
  readonly bytes: number;
  readonly message: WatchResponse;
  readonly changes: readonly PendingChange[];
}

/**
 * The deltas of one event-loop turn (one or more revisions, in order, no instance in two of them)
 * split by service, computed once for every subscription that needs a part: every stream of a
 * service gets the same `Delta` object, so it is encoded once (`encodeWatchResponse`), and its
 * size is counted once. A service's part is its changes of every delta, at the revision of the
 * last delta that touched it (so one change alone goes out at its own revision, as unbatched).
 */
export class DeltaParts {
  readonly deltas: readonly Delta[];
  /** The revision of the last delta: a stream that has it already gets nothing. */
  readonly revision: bigint;
  #all: DeltaPart | undefined;
  readonly #byService = new Map<string, DeltaPart | undefined>();

  constructor(deltas: readonly Delta[]) {
    this.deltas = deltas;
    this.revision = BigInt(deltas.at(-1)?.revision ?? "0");
  }

  /** The part about `service` (`undefined` = every service), or `undefined` when it has none. */
  of(service: string | undefined): DeltaPart | undefined {
    if (service === undefined) {
      if (this.#all === undefined) {
        const delta = mergeDeltas(this.deltas);
        if (delta !== undefined) this.#all = partOf(delta);
      }
      return this.#all;
    }
    let part = this.#byService.get(service);
    if (part === undefined && !this.#byService.has(service)) {
      const delta = mergeDeltas(this.deltas.flatMap((each) => deltaOfService(each, service) ?? []));
      part = delta === undefined ? undefined : partOf(delta);
      this.#byService.set(service, part);
    }
    return part;
  }
}

/** `deltas` as one delta at the last one's revision (the first one's `observed_at_unix_ms`). */
function mergeDeltas(deltas: readonly Delta[]): Delta | undefined {
  const [first, ...rest] = deltas;
  const last = rest.at(-1);
  if (last === undefined) return first;
  // No instance is in two of them, so the order of changes within one delta does not matter.
  return {
    upserted: deltas.flatMap((each) => each.upserted),
    removed: deltas.flatMap((each) => each.removed),
    revision: last.revision,
    observedAtUnixMs: first?.observedAtUnixMs ?? last.observedAtUnixMs,
  };
}

function partOf(delta: Delta): DeltaPart {
  const changes = changesOf(delta);
  let bytes = 0;
  for (const change of changes) bytes += change.bytes;
  return { delta, bytes, message: { event: { $case: "delta", value: delta } }, changes };
}

/** One instance's change, shared by the streams that keep it while they are behind. */
interface PendingChange {
  /** `service/instance_id`. */
  readonly id: string;
  readonly key: InstanceKey;
  /** The latest version, or `undefined` for a removal. */
  readonly instance: Instance | undefined;
  readonly bytes: number;
}

/**
 * One Watch stream's view of the hub: filters deltas to its service and to revisions after the
 * one it already has, and honours backpressure (`write()` false → wait for `drain`).
 *
 * While the sink is not draining, changes are coalesced per instance instead of queued as
 * messages: the last version of an instance wins, and a removal after an upsert replaces it. When
 * the sink drains, the net change goes out as one delta at the latest revision (split into ~1 MiB
 * messages: all but the last carry the revision the caller already had, so a caller that breaks
 * in between resumes from before the whole flush). So a burst of N changes to M instances costs a
 * behind stream at most M entries, never N messages.
 *
 * A stream is ended with `RESOURCE_EXHAUSTED` (the caller resumes from its last revision) only when
 * its coalesced changes pass `maxQueuedBytes`, or it has not drained for `maxBehindMs`. However it
 * ends (that, cancel, error, hub close), `closed` is called exactly once.
 */
export class WatchSubscription {
  /** Service watched; `undefined` watches every service. */
  readonly service: string | undefined;
  readonly #sink: WatchSink;
  readonly #limits: WatchStreamLimits;
  readonly #now: () => number;
  readonly #closed: (subscription: WatchSubscription) => void;
  /** Coalesced changes not written yet, by `service/instance_id`. */
  readonly #pending = new Map<string, PendingChange>();
  #pendingBytes = 0;
  /** Earliest `observed_at_unix_ms` of the coalesced deltas (the oldest change waited longest). */
  #pendingObservedAtUnixMs: string | undefined;
  /** A progress to send once the pending changes are out: its `stale` flag. */
  #pendingProgressStale: boolean | undefined;
  /** Revision the caller has (or will have, once pending changes are out) everything up to. */
  #revision: bigint;
  /** Revision the caller was last sent, so partial flush messages never claim more. */
  #sentRevision: bigint;
  /** Messages of a split snapshot not written yet: written as the sink drains, before any delta. */
  #outbox: WatchResponse[] = [];
  #isBlocked = false;
  #behindSinceMs = 0;
  #behindChecks = 0;
  #isClosed = false;

  constructor(options: {
    sink: WatchSink;
    service: string | undefined;
    revision: bigint;
    limits: WatchStreamLimits;
    now?: () => number;
    closed: (subscription: WatchSubscription) => void;
  }) {
    this.service = options.service;
    this.#sink = options.sink;
    this.#revision = options.revision;
    this.#sentRevision = options.revision;
    this.#limits = options.limits;
    this.#now = options.now ?? Date.now;
    this.#closed = options.closed;
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  /** True while the sink asked to wait for `drain`, or snapshot parts or changes are waiting. */
  get isBehind(): boolean {
    return this.#isBlocked || this.#pending.size > 0 || this.#outbox.length > 0;
  }

  /** Approximate bytes of changes waiting for the sink to drain. */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /** Sends (or coalesces) the part of a delta this stream watches, unless the caller already has its revision. */
  deliver(parts: DeltaParts): void {
    if (this.#isClosed || parts.revision <= this.#revision) return;
    this.#revision = parts.revision;
    const part = parts.of(this.service);
    if (part === undefined) return; // a later progress or delta carries the revision
    if (!this.isBehind) {
      if (part.bytes > WATCH_MESSAGE_BYTES) {
        // e.g. a resume's catch-up or a re-list: split like a flush, so each message stays small.
        this.#writeChanges(part.changes, part.delta.observedAtUnixMs);
        return;
      }
      this.#sentRevision = parts.revision;
      this.#write(part.message);
      return;
    }
    this.#coalesce(part);
  }

  /**
   * Tells the caller nothing it watches changed up to `revision`, and whether the registry can
   * currently vouch for that (`isStale`). While behind, only the latest flag is kept and sent after
   * the pending changes.
   */
  progress(revision: bigint, isStale: boolean): void {
    if (this.#isClosed) return;
    if (revision > this.#revision) this.#revision = revision;
    if (this.isBehind) {
      this.#pendingProgressStale = isStale;
      return;
    }
    this.#sentRevision = this.#revision;
    this.#write({
      event: { $case: "progress", value: { revision: String(this.#revision), stale: isStale } },
    });
  }

  /**
   * Sends the first message(s) of the stream: a snapshot, or the parts of a split snapshot. Parts
   * are written as the sink drains (backpressure); deltas meanwhile are coalesced and follow them.
   */
  sendSnapshot(messages: readonly WatchResponse[]): void {
    if (this.#isClosed) return;
    for (const message of messages) this.#outbox.push(message);
    this.#writeOutbox();
  }

  #writeOutbox(): void {
    while (this.#outbox.length > 0 && !this.#isBlocked && !this.#isClosed) {
      this.#write(this.#outbox.shift() as WatchResponse);
    }
  }

  /**
   * Called by the hub's timer: ends the stream when it has been behind without draining for
   * `maxBehindMs` over at least {@link MIN_BEHIND_CHECKS} checks in a row.
   */
  checkBehind(): void {
    if (this.#isClosed || !this.#isBlocked) {
      this.#behindChecks = 0;
      return;
    }
    this.#behindChecks += 1;
    const behindMs = this.#now() - this.#behindSinceMs;
    if (this.#behindChecks >= MIN_BEHIND_CHECKS && behindMs > this.#limits.maxBehindMs) {
      this.close(
        new RegistryError(
          "resource_exhausted",
          `watch stream did not read for ${Math.round(behindMs)} ms; resume with start_revision`,
        ),
      );
    }
  }

  /** Ends the stream (OK, or with `error`'s status) and leaves the hub. Idempotent. */
  close(error?: RegistryError): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#pending.clear();
    this.#outbox = [];
    this.#pendingBytes = 0;
    this.#closed(this);
    this.#sink.end(error);
  }

  #coalesce(part: DeltaPart): void {
    this.#pendingObservedAtUnixMs ??= part.delta.observedAtUnixMs;
    for (const change of part.changes) {
      this.#pendingBytes += change.bytes - (this.#pending.get(change.id)?.bytes ?? 0);
      this.#pending.delete(change.id); // re-insert: flush order follows the latest change
      this.#pending.set(change.id, change);
    }
    if (this.#pendingBytes > this.#limits.maxQueuedBytes) {
      this.close(
        new RegistryError(
          "resource_exhausted",
          `watch stream fell more than ${this.#limits.maxQueuedBytes} bytes behind; resume with start_revision`,
        ),
      );
    }
  }

  #write(message: WatchResponse): void {
    if (this.#sink.write(message) || this.#isBlocked) return;
    this.#isBlocked = true;
    this.#behindSinceMs = this.#now();
    this.#behindChecks = 0;
    this.#sink.once("drain", () => this.#drain());
  }

  #drain(): void {
    if (this.#isClosed) return;
    this.#isBlocked = false;
    this.#behindChecks = 0;
    this.#writeOutbox();
    if (this.#isBlocked || this.#outbox.length > 0) return;
    this.#flush();
    if (!this.#isBlocked && this.#pendingProgressStale !== undefined) {
      const isStale = this.#pendingProgressStale;
      this.#pendingProgressStale = undefined;
      this.progress(this.#revision, isStale);
    }
  }

  /** Writes every pending change: ~1 MiB messages, the last one at the latest revision. */
  #flush(): void {
    if (this.#pending.size === 0) return;
    const observedAtUnixMs = this.#pendingObservedAtUnixMs ?? String(this.#now());
    const changes = [...this.#pending.values()];
    this.#pending.clear();
    this.#pendingBytes = 0;
    this.#pendingObservedAtUnixMs = undefined;
    this.#writeChanges(changes, observedAtUnixMs);
  }

  /**
   * Writes `changes` as deltas of ~{@link WATCH_MESSAGE_BYTES}: all but the last carry the revision
   * the caller already had, the last one the latest revision.
   */
  #writeChanges(changes: readonly PendingChange[], observedAtUnixMs: string): void {
    let chunk: Delta = { upserted: [], removed: [], revision: "", observedAtUnixMs };
    let chunkBytes = 0;
    const messages: Delta[] = [];
    for (const change of changes) {
      if (change.instance === undefined) chunk.removed.push(change.key);
      else chunk.upserted.push(change.instance);
      chunkBytes += change.bytes;
      if (chunkBytes >= WATCH_MESSAGE_BYTES) {
        messages.push(chunk);
        chunk = { upserted: [], removed: [], revision: "", observedAtUnixMs };
        chunkBytes = 0;
      }
    }
    if (chunk.upserted.length > 0 || chunk.removed.length > 0) messages.push(chunk);
    messages.forEach((delta, index) => {
      delta.revision = String(index === messages.length - 1 ? this.#revision : this.#sentRevision);
    });
    this.#sentRevision = this.#revision;
    for (const delta of messages) this.#write({ event: { $case: "delta", value: delta } });
  }
}

/** A delta as changes (removals first, as a delta applies them). */
function changesOf(delta: Delta): PendingChange[] {
  return [
    ...delta.removed.map((key) => ({ id: idOf(key), key, instance: undefined, bytes: removalBytes(key) })),
    ...delta.upserted.map((instance) => ({
      id: idOf(instance),
      key: instance,
      instance,
      bytes: instanceBytes(instance),
    })),
  ];
}

function idOf(key: InstanceKey): string {
  return `${key.service}/${key.instanceId}`;
}

/** The part of `delta` about `service`, or `undefined` when it has none. */
export function deltaOfService(delta: Delta, service: string): Delta | undefined {
  const upserted = delta.upserted.filter((instance) => instance.service === service);
  const removed = delta.removed.filter((key) => key.service === service);
  if (upserted.length === 0 && removed.length === 0) return undefined;
  return { upserted, removed, revision: delta.revision, observedAtUnixMs: delta.observedAtUnixMs };
}

function removalBytes(key: InstanceKey): number {
  return 8 + key.service.length + key.instanceId.length;
}
