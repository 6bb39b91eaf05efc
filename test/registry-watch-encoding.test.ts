import test from "ava";
import { Instance, InstanceStatus, WatchResponse } from "../proto/gen/leasehold/registry/v1/registry.js";
import { encodeWatchResponse } from "../registry/watch/watch-encoding.js";

function instance(instanceId: string, revision: number): Instance {
  // fromPartial: every other field at its default, whatever fields Instance gains.
  return Instance.fromPartial({
    service: "svc",
    instanceId,
    address: "10.0.0.1:80",
    weight: 3,
    zone: "z1",
    metadata: { version: "1.2.3", team: "a" },
    status: InstanceStatus.INSTANCE_STATUS_DRAINING,
    registeredAt: "2026-12-07T00:00:00.000Z",
    metricsAddress: "10.0.0.1:9100",
    revision: String(revision),
    ttlSeconds: "10",
  });
}

const generated = (message: WatchResponse) => Buffer.from(WatchResponse.encode(message).finish());

const delta = (): WatchResponse => ({
  event: {
    $case: "delta",
    value: {
      upserted: [instance("a", 7), instance("b", 8)],
      removed: [{ service: "svc", instanceId: "c" }],
      revision: "8",
      observedAtUnixMs: "1765065600000",
    },
  },
});

test("a delta, a snapshot and a progress encode to the same bytes as the generated encoder", (t) => {
  const a = instance("a", 7);
  const messages: WatchResponse[] = [
    delta(),
    {
      event: {
        $case: "snapshot",
        value: {
          instances: [a, instance("b", 8), a],
          revision: "9",
          reset: true,
          observedAtUnixMs: "1765065600001",
          hasMore: true,
        },
      },
    },
    {
      event: {
        $case: "snapshot",
        value: { instances: [], revision: "1", reset: false, observedAtUnixMs: "0", hasMore: false },
      },
    },
    { event: { $case: "progress", value: { revision: "10", stale: true } } },
    { event: undefined },
  ];
  for (const message of messages) t.deepEqual(encodeWatchResponse(message), generated(message));
  t.deepEqual(WatchResponse.decode(encodeWatchResponse(messages[0]!)), messages[0]);
});

test("the same delta object and the same progress give the same buffer; another delta object is encoded anew", (t) => {
  const shared = delta();
  t.is(encodeWatchResponse(shared), encodeWatchResponse({ event: shared.event }));
  const progress = (stale: boolean): WatchResponse => ({
    event: { $case: "progress", value: { revision: "5", stale } },
  });
  t.is(encodeWatchResponse(progress(false)), encodeWatchResponse(progress(false)));
  t.not(encodeWatchResponse(progress(false)), encodeWatchResponse(progress(true)));
  const other = delta();
  t.not(encodeWatchResponse(other), encodeWatchResponse(shared));
  t.deepEqual(encodeWatchResponse(other), encodeWatchResponse(shared));
});
