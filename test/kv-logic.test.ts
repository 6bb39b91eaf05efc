import test from "ava";
import { InstanceStatus, type Instance } from "../proto/gen/leasehold/registry/v1/registry.js";
import { checkRequestId, KvState, MAX_REQUEST_ID_LENGTH, type KvWrite } from "../services/kv/kv-state.js";
import { mayStartFresh, selectPrimary, uncoveredBackups } from "../services/kv/primary.js";

const SERVING = InstanceStatus.INSTANCE_STATUS_SERVING;
const DRAINING = InstanceStatus.INSTANCE_STATUS_DRAINING;

function member(instanceId: string, createRevision: number, status = SERVING): Instance {
  return {
    service: "kv",
    instanceId,
    address: `127.0.0.1:${9000 + createRevision}`,
    weight: 1,
    zone: "",
    metadata: {},
    status,
    registeredAt: "",
    metricsAddress: "",
    revision: String(createRevision + 100),
    ttlSeconds: "10",
    createRevision: String(createRevision),
  };
}

const put = (key: string, value: string, requestId = ""): KvWrite => ({ kind: "put", key, value, requestId });
const incr = (key: string, delta = 1n, requestId = ""): KvWrite => ({
  kind: "increment",
  key,
  delta,
  requestId,
});

test("selectPrimary picks the SERVING instance with the lowest create revision, not the lowest id or mod revision", (t) => {
  const instances = [member("a", 30), member("z", 12), member("m", 20)];
  t.is(selectPrimary(instances)?.instanceId, "z");
});

test("selectPrimary skips DRAINING instances and those without a create revision", (t) => {
  t.is(selectPrimary([member("old", 5, DRAINING), member("young", 9)])?.instanceId, "young");
  t.is(selectPrimary([member("unknown", 0), member("b", 9)])?.instanceId, "b");
  t.is(selectPrimary([member("only", 5, DRAINING)]), undefined);
});

test("after the primary's key is removed the next-oldest SERVING instance is primary", (t) => {
  const instances = [member("p", 10), member("b1", 11), member("b2", 12)];
  t.is(selectPrimary(instances.filter((i) => i.instanceId !== "p"))?.instanceId, "b1");
});

test("mayStartFresh: only the oldest listed instance, and only while nobody is SERVING", (t) => {
  const starting = [member("a", 10, DRAINING), member("b", 11, DRAINING)];
  t.true(mayStartFresh(starting, "a"));
  t.false(mayStartFresh(starting, "b"));
  t.false(mayStartFresh([member("a", 10, DRAINING), member("b", 11)], "a"), "someone is SERVING");
  t.false(mayStartFresh([member("b", 11, DRAINING)], "a"), "not listed yet");
});

test("prepare numbers writes after the applied sequence and does not apply them", (t) => {
  const state = new KvState();
  const { entries, results } = state.prepare([put("k", "v"), incr("n"), incr("n", 5n)]);
  t.deepEqual(
    entries.map((e) => [e.sequence, e.key, e.value]),
    [
      [1, "k", "v"],
      [2, "n", "1"],
      [3, "n", "6"],
    ],
  );
  t.deepEqual(results, [
    { ok: true, sequence: 1, value: "v" },
    { ok: true, sequence: 2, value: "1" },
    { ok: true, sequence: 3, value: "6" },
  ]);
  t.is(state.sequence, 0);
  t.is(state.get("k"), undefined);
  t.true(state.apply(entries));
  t.is(state.sequence, 3);
  t.is(state.get("n"), "6");
});

test("Increment of a non-integer value is refused without a sequence number; the batch goes on", (t) => {
  const state = new KvState();
  state.apply(state.prepare([put("s", "text")]).entries);
  const { entries, results } = state.prepare([incr("s"), put("k", "v")]);
  t.deepEqual(results[0], { ok: false, error: 'value of "s" is not an integer' });
  t.deepEqual(
    entries.map((e) => e.sequence),
    [2],
  );
});

test("a write retried with the same request id is applied once and answers its first result", (t) => {
  const state = new KvState();
  state.apply(state.prepare([incr("n", 1n, "r1")]).entries);
  const retry = state.prepare([incr("n", 1n, "r1"), incr("n", 1n, "r2"), incr("n", 1n, "r2")]);
  t.deepEqual(retry.results, [
    { ok: true, sequence: 1, value: "1" },
    { ok: true, sequence: 2, value: "2" },
    { ok: true, sequence: 2, value: "2" },
  ]);
  t.is(retry.entries.length, 1);
});

test("apply skips entries already applied and stops at a gap", (t) => {
  const primary = new KvState();
  const first = primary.prepare([put("a", "1"), put("b", "2")]).entries;
  primary.apply(first);
  const second = primary.prepare([put("c", "3")]).entries;
  const backup = new KvState();
  t.false(backup.apply(second), "sequence 3 before 1 and 2 is a gap");
  t.is(backup.sequence, 0);
  t.true(backup.apply(first));
  t.true(backup.apply(first), "a resend is skipped");
  t.true(backup.apply(second));
  t.is(backup.sequence, 3);
});

test("a snapshot plus the writes since its sequence rebuild the primary's state, request ids included", (t) => {
  const primary = new KvState();
  primary.apply(primary.prepare([put("a", "1"), incr("n", 1n, "r1"), put("gone", "x")]).entries);
  const snapshot = primary.snapshot();
  primary.apply(primary.prepare([{ kind: "delete", key: "gone", requestId: "" }, incr("n", 2n)]).entries);
  const backup = new KvState();
  backup.restore(snapshot.sequence, snapshot.values, snapshot.requests);
  const since = primary.since(snapshot.sequence);
  if (since === undefined) return t.fail("log reaches back to the snapshot");
  t.deepEqual(
    since.map((e) => e.sequence),
    [4, 5],
  );
  t.true(backup.apply(since));
  t.deepEqual(backup.snapshot(), primary.snapshot());
  t.deepEqual(backup.prepare([incr("n", 1n, "r1")]).results[0], { ok: true, sequence: 2, value: "1" });
});

test("since answers undefined once the log no longer reaches back (a new snapshot is needed)", (t) => {
  const state = new KvState({ maxLogEntries: 2 });
  for (let i = 0; i < 10; i += 1) state.apply(state.prepare([put(`k${i}`, "v")]).entries);
  t.is(state.since(1), undefined);
  t.deepEqual(state.since(10), []);
  t.deepEqual(
    state.since(9)?.map((e) => e.sequence),
    [10],
  );
});

test("a write is acknowledged only when every other SERVING instance is in the sync set", (t) => {
  const ids = (instances: readonly Instance[]) => instances.map((i) => i.instanceId);
  const view = [member("p", 10), member("b1", 11), member("b2", 12), member("new", 13, DRAINING)];
  t.deepEqual(ids(uncoveredBackups(view, "p", new Set(["b1", "b2"]))), [], "both backups in sync");
  t.deepEqual(ids(uncoveredBackups(view, "p", new Set(["b1"]))), ["b2"], "b2 dropped: wait for it");
  const drained = view.map((i) => (i.instanceId === "b2" ? { ...i, status: DRAINING } : i));
  t.deepEqual(ids(uncoveredBackups(drained, "p", new Set(["b1"]))), [], "b2 DRAINING: no longer blocks");
  // Right after a takeover the new primary's sync set is empty: the old primary's other backups
  // block until they turn DRAINING to catch up from it.
  const takeover = view.filter((i) => i.instanceId !== "p");
  t.deepEqual(ids(uncoveredBackups(takeover, "b1", new Set())), ["b2"]);
});

test("checkRequestId accepts none and up to MAX_REQUEST_ID_LENGTH characters, and names the field beyond", (t) => {
  t.is(checkRequestId(""), undefined);
  t.is(checkRequestId("r".repeat(MAX_REQUEST_ID_LENGTH)), undefined);
  t.is(
    checkRequestId("r".repeat(MAX_REQUEST_ID_LENGTH + 1)),
    `request_id: longer than ${MAX_REQUEST_ID_LENGTH}`,
  );
});
