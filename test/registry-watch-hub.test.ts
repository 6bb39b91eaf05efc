import test from "ava";
import { pino } from "pino";
import { Registry } from "prom-client";
import {
  InstanceStatus,
  type Instance,
  type WatchResponse,
} from "../proto/gen/leasehold/registry/v1/registry.js";
import type { RegistryError } from "../registry/registry-error.js";
import { RegistryMetrics } from "../registry/registry-metrics.js";
import { WatchHub } from "../registry/watch/watch-hub.js";
import type { WatchSink } from "../registry/watch/watch-subscription.js";

function instance(service: string, instanceId: string, revision: number, weight = 1): Instance {
  return {
    service,
    instanceId,
    address: "10.0.0.1:80",
    weight,
    zone: "",
    metadata: {},
    status: InstanceStatus.INSTANCE_STATUS_SERVING,
    registeredAt: "",
    metricsAddress: "",
    revision: String(revision),
    ttlSeconds: "3",
    createRevision: "0",
  };
}

/** A sink that accepts `capacity` writes before asking for `drain`. */
class FakeSink implements WatchSink {
  readonly written: WatchResponse[] = [];
  ended: RegistryError | null | undefined;
  capacity = Infinity;
  #drain: (() => void) | undefined;

  write(message: WatchResponse): boolean {
    this.written.push(message);
    return this.written.length < this.capacity;
  }
  once(_event: "drain", listener: () => void): void {
    this.#drain = listener;
  }
  end(error?: RegistryError): void {
    this.ended = error ?? null;
  }
  drain(capacity: number): void {
    this.capacity = capacity;
    const drain = this.#drain;
    this.#drain = undefined;
    drain?.();
  }
  kinds(): string[] {
    return this.written.map((message) => `${message.event?.$case}@${message.event?.value.revision}`);
  }
}

function hubWith(
  options: {
    listAt?: (revision: bigint, service?: string) => Promise<readonly Instance[] | undefined>;
    history?: number;
    maxQueuedBytes?: number;
    maxBehindMs?: number;
    now?: () => number;
    minSendIntervalMs?: number;
  } = {},
) {
  const metricsRegistry = new Registry();
  const hub = new WatchHub({
    historyMaxDeltas: options.history ?? 100,
    streamLimits: {
      maxQueuedBytes: options.maxQueuedBytes ?? 8 * 1024 * 1024,
      maxBehindMs: options.maxBehindMs ?? 30_000,
    },
    progressIntervalMs: 60_000,
    minSendIntervalMs: options.minSendIntervalMs ?? 0,
    listAt: options.listAt ?? (() => Promise.resolve([])),
    metrics: new RegistryMetrics(metricsRegistry),
    logger: pino({ level: "silent" }),
    now: options.now,
  });
  return { hub, metricsRegistry };
}

function put(hub: WatchHub, revision: number, ...instances: Instance[]): void {
  hub.changed({ upserted: instances, removed: [], revision: String(revision), observedAtUnixMs: "0" });
}

function remove(hub: WatchHub, revision: number, service: string, instanceId: string): void {
  hub.changed({
    upserted: [],
    removed: [{ service, instanceId }],
    revision: String(revision),
    observedAtUnixMs: "0",
  });
}

/**
 * Lets the hub send the changes of this event-loop turn (a busy hub sends them from a
 * `setImmediate`, an idle one from a microtask).
 */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

function deltaOf(message: WatchResponse | undefined) {
  return message?.event?.$case === "delta" ? message.event.value : undefined;
}

test("a subscriber gets a snapshot, then only the deltas of its service", async (t) => {
  const { hub } = hubWith();
  hub.synced([instance("a", "1", 5), instance("b", "1", 6)], 10n);
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: "a", startRevision: 0n }, new AbortController().signal);
  hub.changed({ upserted: [instance("b", "2", 11)], removed: [], revision: "11", observedAtUnixMs: "0" });
  hub.changed({
    upserted: [instance("a", "2", 12)],
    removed: [{ service: "b", instanceId: "1" }],
    revision: "12",
    observedAtUnixMs: "0",
  });
  t.deepEqual(sink.kinds(), ["snapshot@10"], "changes go out once the task that brought them ends");
  await turn();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@12"]);
  const delta = sink.written[1]?.event;
  t.deepEqual(delta?.$case === "delta" ? delta.value.removed : undefined, [], "b's removal is filtered out");
});

test("an idle hub sends a task's changes as soon as the task ends; a busy one waits for the end of the event-loop turn, and is idle again after a turn without a send", async (t) => {
  const { hub } = hubWith();
  hub.synced([instance("a", "1", 5)], 10n);
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: "a", startRevision: 0n }, new AbortController().signal);
  put(hub, 11, instance("a", "2", 11));
  put(hub, 12, instance("a", "3", 12));
  await Promise.resolve();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@12"], "idle: one delta, without waiting for the turn");
  put(hub, 13, instance("a", "4", 13));
  await Promise.resolve();
  put(hub, 14, instance("a", "5", 14));
  await Promise.resolve();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@12"], "busy: the turn's changes wait for its end");
  await turn();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@12", "delta@14"]);
  for (let i = 0; i < 3; i += 1) await turn();
  put(hub, 15, instance("a", "6", 15));
  await Promise.resolve();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@12", "delta@14", "delta@15"], "idle again");
});

test("changes of one event-loop turn go out as one delta at the latest revision; a second version of an instance goes out in the next", async (t) => {
  const { hub } = hubWith();
  hub.synced([instance("a", "1", 5)], 10n);
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: "a", startRevision: 0n }, new AbortController().signal);
  put(hub, 11, instance("a", "2", 11));
  remove(hub, 12, "a", "1");
  put(hub, 13, instance("a", "3", 13));
  put(hub, 14, instance("a", "2", 14, 5));
  hub.staleChanged(true);
  await turn();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@13", "delta@14", "progress@14"]);
  t.deepEqual(
    [deltaOf(sink.written[1])?.upserted.map((i) => i.instanceId), deltaOf(sink.written[1])?.removed],
    [["2", "3"], [{ service: "a", instanceId: "1" }]],
  );
  t.deepEqual(
    deltaOf(sink.written[2])?.upserted.map((i) => [i.instanceId, i.weight]),
    [["2", 5]],
    "2's second version is not merged into its first",
  );
});

test("with minSendIntervalMs, a change after a quiet spell goes out at once; faster ones wait and share one delta", async (t) => {
  let clock = 1000;
  const { hub } = hubWith({ minSendIntervalMs: 10_000, now: () => clock });
  hub.synced([instance("a", "1", 5)], 10n);
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: "a", startRevision: 0n }, new AbortController().signal);
  put(hub, 11, instance("a", "2", 11));
  await turn();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@11"], "the first change is not held back");
  clock = 1010; // 10 ms after that send: the next waits for the rest of the 10 s
  put(hub, 12, instance("a", "3", 12));
  await turn();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@11"], "a change within the interval waits");
  put(hub, 13, instance("a", "4", 13));
  hub.staleChanged(true); // a progress sends what waits first, as one delta
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@11", "delta@13", "progress@13"]);
  t.deepEqual(
    deltaOf(sink.written[2])?.upserted.map((i) => i.instanceId),
    ["3", "4"],
  );
  clock = 20_000; // quiet again
  put(hub, 14, instance("a", "5", 14));
  await turn();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@11", "delta@13", "progress@13", "delta@14"]);
  hub.close(); // clears the debounce timer
});

test("a re-list after a watch failure is applied as one delta of the differences", async (t) => {
  const { hub } = hubWith();
  hub.synced([instance("a", "1", 5), instance("a", "2", 6)], 10n);
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: undefined, startRevision: 0n }, new AbortController().signal);
  hub.synced([instance("a", "1", 5), instance("a", "3", 15, 4)], 20n);
  hub.synced([instance("a", "1", 5), instance("a", "3", 15, 4)], 25n);
  await turn();
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@20"]);
  const delta = sink.written[1]?.event;
  t.like(delta?.$case === "delta" ? delta.value : undefined, {
    upserted: [instance("a", "3", 15, 4)],
    removed: [{ service: "a", instanceId: "2" }],
    revision: "20",
  });
  t.is(hub.revision, 25n);
});

test("a stream that is behind gets one coalesced delta per drain: last write wins, a removal after an upsert replaces it", async (t) => {
  const { hub } = hubWith();
  hub.synced([instance("a", "old", 1)], 1n);
  const slow = new FakeSink();
  slow.capacity = 1;
  await hub.subscribe(slow, { service: undefined, startRevision: 0n }, new AbortController().signal);
  put(hub, 2, instance("a", "x", 2));
  put(hub, 3, instance("a", "x", 3, 7));
  put(hub, 4, instance("a", "y", 4));
  remove(hub, 5, "a", "y");
  remove(hub, 6, "a", "old");
  await turn();
  t.deepEqual(slow.kinds(), ["snapshot@1"], "nothing written while the sink is not draining");
  slow.drain(Infinity);
  t.deepEqual(slow.kinds(), ["snapshot@1", "delta@6"], "five revisions, one message");
  const delta = deltaOf(slow.written[1]);
  t.deepEqual(
    delta?.upserted.map((i) => [i.instanceId, i.weight, i.revision]),
    [["x", 7, "3"]],
    "x's last version only",
  );
  t.deepEqual(
    delta?.removed.map((k) => k.instanceId),
    ["y", "old"],
    "y collapsed to its removal",
  );
  put(hub, 7, instance("a", "z", 7));
  await turn();
  t.is(slow.kinds().at(-1), "delta@7", "a drained stream gets deltas as they come");
});

test("a stream is ended by the bytes it has waiting, not by how many changes came in one burst", async (t) => {
  const { hub, metricsRegistry } = hubWith({ maxQueuedBytes: 4096 });
  hub.synced([], 1n);
  const behind = new FakeSink();
  behind.capacity = 1;
  const reading = new FakeSink();
  await hub.subscribe(behind, { service: undefined, startRevision: 0n }, new AbortController().signal);
  await hub.subscribe(reading, { service: undefined, startRevision: 0n }, new AbortController().signal);
  // 1000 changes to 10 instances: coalesced, they stay far below 4 KiB.
  for (let revision = 2; revision < 1002; revision += 1) {
    put(hub, revision, instance("a", String(revision % 10), revision));
  }
  await turn();
  t.is(behind.ended, undefined, "1000 changes of 10 instances do not end it");
  t.is(
    reading.written.flatMap((message) => deltaOf(message)?.upserted ?? []).length,
    1000,
    "a stream that keeps reading gets every version",
  );
  // 1000 distinct instances do pass 4 KiB.
  for (let revision = 1002; revision < 2002; revision += 1) {
    put(hub, revision, instance("a", `n${revision}`, revision));
  }
  await turn();
  t.is(behind.ended?.code, "resource_exhausted");
  t.regex(behind.ended?.message ?? "", /4096 bytes behind/);
  t.is(reading.ended, undefined);
  t.is(hub.streamCount, 1);
  t.regex(await metricsRegistry.metrics(), /^leasehold_registry_watch_streams 1$/m);
});

test("a stream that does not drain for maxBehindMs over several checks is ended and leaves the gauge; one that drains is kept", async (t) => {
  let nowMs = 0;
  const { hub, metricsRegistry } = hubWith({ maxBehindMs: 1000, now: () => nowMs });
  hub.synced([], 1n);
  const paused = new FakeSink();
  paused.capacity = 1;
  const slowButReading = new FakeSink();
  slowButReading.capacity = 1;
  await hub.subscribe(paused, { service: undefined, startRevision: 0n }, new AbortController().signal);
  await hub.subscribe(
    slowButReading,
    { service: undefined, startRevision: 0n },
    new AbortController().signal,
  );
  const check = () => hub.checkStreamsBehind();
  put(hub, 2, instance("a", "1", 2));
  await turn();
  nowMs = 5000;
  check();
  check();
  t.is(paused.ended, undefined, "two checks are not enough, however long");
  slowButReading.drain(slowButReading.written.length + 1);
  put(hub, 3, instance("a", "2", 3));
  await turn();
  check();
  t.is(paused.ended?.code, "resource_exhausted");
  t.regex(paused.ended?.message ?? "", /did not read for 5000 ms/);
  t.is(slowButReading.ended, undefined, "it drained within the window");
  t.regex(await metricsRegistry.metrics(), /^leasehold_registry_watch_streams 1$/m);
});

test("a subscription that overflows during replay leaves the hub and the gauge", async (t) => {
  const { hub, metricsRegistry } = hubWith({ maxQueuedBytes: 1024, history: 1000 });
  hub.synced([], 1n);
  for (let revision = 2; revision < 200; revision += 1)
    put(hub, revision, instance("a", `n${revision}`, revision));
  const replaying = new FakeSink();
  replaying.capacity = 1;
  await hub.subscribe(replaying, { service: undefined, startRevision: 1n }, new AbortController().signal);
  t.is(replaying.ended?.code, "resource_exhausted");
  t.is(hub.streamCount, 0);
  t.regex(await metricsRegistry.metrics(), /^leasehold_registry_watch_streams 0$/m);
  put(hub, 200, instance("a", "late", 200));
  await turn();
  t.is(replaying.written.length, 1, "nothing more is written to it");
});

test("staleness flips are sent to every stream at once; a stream that is behind gets the latest flag after its changes", async (t) => {
  const { hub } = hubWith();
  hub.synced([], 1n);
  const reading = new FakeSink();
  const behind = new FakeSink();
  behind.capacity = 1;
  await hub.subscribe(reading, { service: undefined, startRevision: 0n }, new AbortController().signal);
  await hub.subscribe(behind, { service: undefined, startRevision: 0n }, new AbortController().signal);
  put(hub, 2, instance("a", "1", 2));
  hub.staleChanged(true);
  const progressOf = (message: WatchResponse | undefined) =>
    message?.event?.$case === "progress" ? message.event.value : undefined;
  t.deepEqual(progressOf(reading.written.at(-1)), { revision: "2", stale: true });
  hub.staleChanged(false);
  hub.staleChanged(true);
  t.deepEqual(
    reading.written.slice(1).map((m) => `${m.event?.$case}:${String(progressOf(m)?.stale ?? "")}`),
    ["delta:", "progress:true", "progress:false", "progress:true"],
  );
  behind.drain(Infinity);
  t.deepEqual(behind.kinds(), ["snapshot@1", "delta@2", "progress@2"]);
  t.deepEqual(progressOf(behind.written.at(-1)), { revision: "2", stale: true });
  const late = new FakeSink();
  await hub.subscribe(late, { service: undefined, startRevision: 0n }, new AbortController().signal);
  t.deepEqual(late.kinds(), ["snapshot@2", "progress@2"], "a new stream learns it at once");
});

test("resumes replay history, reset when compacted, and catch up from etcd when older than history", async (t) => {
  let compacted = false;
  const { hub } = hubWith({
    history: 2,
    listAt: (revision) =>
      Promise.resolve(compacted ? undefined : revision < 10n ? [instance("a", "old", 3)] : []),
  });
  hub.synced([instance("a", "old", 3)], 10n);
  hub.changed({ upserted: [instance("a", "x", 11)], removed: [], revision: "11", observedAtUnixMs: "0" });
  hub.changed({ upserted: [instance("a", "y", 12)], removed: [], revision: "12", observedAtUnixMs: "0" });
  hub.changed({
    upserted: [],
    removed: [{ service: "a", instanceId: "old" }],
    revision: "13",
    observedAtUnixMs: "0",
  });

  const replay = new FakeSink();
  await hub.subscribe(replay, { service: "a", startRevision: 11n }, new AbortController().signal);
  t.deepEqual(replay.kinds(), ["delta@12", "delta@13"], "from history: only what came after 11");

  const catchUp = new FakeSink();
  await hub.subscribe(catchUp, { service: "a", startRevision: 9n }, new AbortController().signal);
  t.deepEqual(catchUp.kinds(), ["delta@13"], "older than history (floor 11): one catch-up delta");
  const event = catchUp.written[0]?.event;
  t.deepEqual(
    event?.$case === "delta"
      ? [event.value.upserted.map((i) => i.instanceId), event.value.removed]
      : undefined,
    [["x", "y"], [{ service: "a", instanceId: "old" }]],
  );

  compacted = true;
  const reset = new FakeSink();
  await hub.subscribe(reset, { service: "a", startRevision: 12n }, new AbortController().signal);
  const snapshot = reset.written[0]?.event;
  t.like(snapshot?.$case === "snapshot" ? snapshot.value : undefined, { reset: true, revision: "13" });

  hub.changed({ upserted: [instance("a", "z", 14)], removed: [], revision: "14", observedAtUnixMs: "0" });
  await turn();
  for (const sink of [replay, catchUp, reset]) t.is(sink.kinds().at(-1), "delta@14");
});

test("an aborted subscriber leaves, close() ends the rest with UNAVAILABLE, and empty services lose their series", async (t) => {
  const { hub, metricsRegistry } = hubWith();
  hub.synced([instance("gone", "1", 2)], 2n);
  t.regex(await metricsRegistry.metrics(), /^leasehold_registry_instances\{service="gone"\} 1$/m);
  const aborted = new AbortController();
  const left = new FakeSink();
  const stays = new FakeSink();
  await hub.subscribe(left, { service: undefined, startRevision: 0n }, aborted.signal);
  await hub.subscribe(stays, { service: undefined, startRevision: 0n }, new AbortController().signal);
  aborted.abort();
  t.is(left.ended, null);
  hub.changed({
    upserted: [],
    removed: [{ service: "gone", instanceId: "1" }],
    revision: "3",
    observedAtUnixMs: "0",
  });
  t.notRegex(await metricsRegistry.metrics(), /leasehold_registry_instances\{service="gone"\}/);
  t.deepEqual(hub.summaries(), []);
  hub.close();
  t.is(stays.ended?.code, "unavailable");
  await t.throwsAsync(
    hub.subscribe(new FakeSink(), { service: undefined, startRevision: 0n }, new AbortController().signal),
    {
      message: /not serving/,
    },
  );
});

/** An instance carrying `metadataBytes` of metadata, so a few thousand pass 1 MiB. */
function heavy(service: string, index: number, revision: number, metadataBytes = 1024): Instance {
  return {
    ...instance(service, `i-${String(index).padStart(5, "0")}`, revision),
    metadata: { blob: "x".repeat(metadataBytes) },
  };
}

function snapshotOf(message: WatchResponse | undefined) {
  return message?.event?.$case === "snapshot" ? message.event.value : undefined;
}

test("a split snapshot is written part by part as the sink drains; a delta meanwhile follows the last part", async (t) => {
  const { hub } = hubWith();
  const instances = Array.from({ length: 3000 }, (_, index) => heavy("big", index, 5));
  hub.synced(instances, 10n);
  const sink = new FakeSink();
  sink.capacity = 1;
  await hub.subscribe(
    sink,
    { service: "big", startRevision: 0n, splitSnapshots: true },
    new AbortController().signal,
  );
  t.deepEqual(sink.kinds(), ["snapshot@10"], "one part, then it waits for drain");
  put(hub, 11, heavy("big", 0, 11, 10));
  await turn();
  t.is(sink.written.length, 1, "the delta waits behind the snapshot");
  sink.drain(2);
  t.deepEqual(sink.kinds(), ["snapshot@10", "snapshot@10"]);
  sink.drain(Infinity);
  const parts = sink.written.flatMap((message) => snapshotOf(message) ?? []);
  t.true(parts.length >= 3, `parts: ${parts.length}`);
  t.deepEqual(sink.kinds(), [...parts.map(() => "snapshot@10"), "delta@11"]);
  t.deepEqual(
    parts.map((part) => part.hasMore),
    parts.map((_, index) => index < parts.length - 1),
  );
  t.deepEqual(
    parts.flatMap((part) => part.instances.map((i) => i.instanceId)),
    instances.map((i) => i.instanceId),
  );
});

test("without split_snapshots the snapshot is one message with has_more false", async (t) => {
  const { hub } = hubWith();
  hub.synced(
    Array.from({ length: 3000 }, (_, index) => heavy("big", index, 5)),
    10n,
  );
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: "big", startRevision: 0n }, new AbortController().signal);
  t.deepEqual(sink.kinds(), ["snapshot@10"]);
  t.is(snapshotOf(sink.written[0])?.instances.length, 3000);
  t.false(snapshotOf(sink.written[0])?.hasMore);
});

test("a delta over ~1 MiB goes out in parts, all but the last at the revision the caller had", async (t) => {
  const { hub } = hubWith();
  hub.synced([], 10n);
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: "big", startRevision: 0n }, new AbortController().signal);
  const upserted = Array.from({ length: 3000 }, (_, index) => heavy("big", index, 11));
  put(hub, 11, ...upserted);
  await turn();
  const deltas = sink.written.flatMap((message) => deltaOf(message) ?? []);
  t.true(deltas.length >= 3, `parts: ${deltas.length}`);
  t.deepEqual(
    deltas.map((delta) => delta.revision),
    deltas.map((_, index) => (index < deltas.length - 1 ? "10" : "11")),
  );
  t.deepEqual(
    deltas.flatMap((delta) => delta.upserted.map((i) => i.instanceId)),
    upserted.map((i) => i.instanceId),
  );
});
