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
  } = {},
) {
  const metricsRegistry = new Registry();
  const hub = new WatchHub({
    historyMaxDeltas: options.history ?? 100,
    maxQueuedMessages: 3,
    progressIntervalMs: 60_000,
    listAt: options.listAt ?? (() => Promise.resolve([])),
    metrics: new RegistryMetrics(metricsRegistry),
    logger: pino({ level: "silent" }),
  });
  return { hub, metricsRegistry };
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
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@12"]);
  const delta = sink.written[1]?.event;
  t.deepEqual(delta?.$case === "delta" ? delta.value.removed : undefined, [], "b's removal is filtered out");
});

test("a re-list after a watch failure is applied as one delta of the differences", async (t) => {
  const { hub } = hubWith();
  hub.synced([instance("a", "1", 5), instance("a", "2", 6)], 10n);
  const sink = new FakeSink();
  await hub.subscribe(sink, { service: undefined, startRevision: 0n }, new AbortController().signal);
  hub.synced([instance("a", "1", 5), instance("a", "3", 15, 4)], 20n);
  hub.synced([instance("a", "1", 5), instance("a", "3", 15, 4)], 25n);
  t.deepEqual(sink.kinds(), ["snapshot@10", "delta@20"]);
  const delta = sink.written[1]?.event;
  t.like(delta?.$case === "delta" ? delta.value : undefined, {
    upserted: [instance("a", "3", 15, 4)],
    removed: [{ service: "a", instanceId: "2" }],
    revision: "20",
  });
  t.is(hub.revision, 25n);
});

test("a slow stream queues while not draining, flushes in order, and is ended with RESOURCE_EXHAUSTED when too far behind", async (t) => {
  const { hub, metricsRegistry } = hubWith();
  hub.synced([], 1n);
  const slow = new FakeSink();
  slow.capacity = 1;
  await hub.subscribe(slow, { service: undefined, startRevision: 0n }, new AbortController().signal);
  for (const revision of [2, 3, 4]) {
    hub.changed({
      upserted: [instance("a", String(revision), revision)],
      removed: [],
      revision: String(revision),
      observedAtUnixMs: "0",
    });
  }
  t.deepEqual(slow.kinds(), ["snapshot@1"], "nothing written while the sink is not draining");
  slow.drain(3);
  t.deepEqual(slow.kinds(), ["snapshot@1", "delta@2", "delta@3"]);
  slow.drain(Infinity);
  t.deepEqual(slow.kinds(), ["snapshot@1", "delta@2", "delta@3", "delta@4"]);

  slow.capacity = slow.written.length + 1;
  for (const revision of [5, 6, 7, 8, 9]) {
    hub.changed({
      upserted: [instance("a", String(revision), revision)],
      removed: [],
      revision: String(revision),
      observedAtUnixMs: "0",
    });
  }
  t.is(slow.ended?.code, "resource_exhausted");
  t.regex(await metricsRegistry.metrics(), /^leasehold_registry_watch_streams 0$/m);
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
