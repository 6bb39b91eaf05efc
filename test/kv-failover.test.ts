import { status, type ServiceError } from "@grpc/grpc-js";
import test from "ava";
import { MembershipWatcher } from "../client/discovery/membership-watcher.js";
import { InstanceStatus, type Instance } from "../proto/gen/leasehold/registry/v1/registry.js";
import { connectKv, type KvClient } from "../services/kv/kv-client.js";
import { selectPrimary } from "../services/kv/primary.js";
import { eventually } from "./helpers/eventually.js";
import { spawnInstance } from "./helpers/instance-process.js";
import { servingKv, staleGet } from "./helpers/kv.js";
import { rpc, startFixtureFor } from "./helpers/registry-fixture.js";

const TTL_SECONDS = 3;
const WRITERS = 8;
/** Acknowledged writes before the kill, and after the new primary's first acknowledgement. */
const WRITES_PER_PHASE = 200;

/** Retries `write` (same request id) until it is acknowledged or `stop()` says so. */
async function untilAcknowledged<T>(
  write: () => Promise<T>,
  isStopped: () => boolean,
): Promise<T | undefined> {
  while (!isStopped()) {
    try {
      return await write();
    } catch (error) {
      const code = (error as ServiceError).code;
      if (
        code !== status.UNAVAILABLE &&
        code !== status.DEADLINE_EXCEEDED &&
        code !== status.FAILED_PRECONDITION
      )
        throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return undefined;
}

test("kv: SIGKILL of the primary under 8 writers loses no acknowledged Put or Increment; a 4th instance bootstraps from a snapshot; the old primary rejoins as a backup", async (t) => {
  const fixture = await startFixtureFor(t);
  const registry = fixture.registry.address;
  const registryRpc = rpc(fixture.client);
  const members = async (): Promise<Instance[]> =>
    (await registryRpc.getService({ service: "kv" })).instances;
  const serving = (count: number): Promise<Instance[] | undefined> => servingKv(fixture.client, count);

  // Started one after another: kv-a is the oldest registration, so the primary; kv-b next.
  const processes = new Map<string, Awaited<ReturnType<typeof spawnInstance>>>();
  for (const id of ["kv-a", "kv-b", "kv-c"]) {
    processes.set(
      id,
      await spawnInstance(t, { service: "kv", registry, instanceId: id, ttlSeconds: TTL_SECONDS }),
    );
    await eventually(() => serving(processes.size), { timeoutMs: 20_000, what: `${id} SERVING` });
  }
  t.is(selectPrimary(await members())?.instanceId, "kv-a");

  // When the test's own watcher sees kv-a's key go (lease expiry), to split the failover time.
  let removedAtMs: number | undefined;
  const watcher = new MembershipWatcher({ registry: fixture.client, service: "kv" });
  watcher.subscribe((_, changes) => {
    for (const change of changes)
      if (change.type === "removed" && change.instance.instanceId === "kv-a") removedAtMs ??= Date.now();
  });
  watcher.start();
  t.teardown(() => watcher.close());
  await watcher.ready();

  let redirects = 0;
  const kv: KvClient = connectKv({ registry, deadlineMs: 3000, onRedirect: () => (redirects += 1) });
  t.teardown(() => kv.close());

  const ackedPuts = new Map<string, string>();
  let ackedIncrements = 0;
  let lastCounter = 0n;
  const acks: { instanceId: string; sequence: bigint; atMs: number }[] = [];
  let stopped = false;
  let killedAtMs = Number.NaN;
  let firstNewPrimaryAck: { instanceId: string; atMs: number; sequence: bigint } | undefined;
  let ackedAfterFailover = 0;

  const writer = async (w: number): Promise<void> => {
    for (let n = 0; !stopped; n += 1) {
      const requestId = `w${w}-${n}`;
      if (n % 2 === 0) {
        const key = `key-${w}-${n}`;
        const value = `value-${w}-${n}`;
        const response = await untilAcknowledged(
          () => kv.put(key, value, { requestId }),
          () => stopped,
        );
        if (response === undefined) return;
        ackedPuts.set(key, value);
        record(response.instanceId, BigInt(response.sequence));
      } else {
        const response = await untilAcknowledged(
          () => kv.increment("counter", 1n, { requestId }),
          () => stopped,
        );
        if (response === undefined) return;
        ackedIncrements += 1;
        if (BigInt(response.value) > lastCounter) lastCounter = BigInt(response.value);
        record(response.instanceId, BigInt(response.sequence));
      }
    }
  };
  const record = (instanceId: string, sequence: bigint): void => {
    const atMs = Date.now();
    acks.push({ instanceId, sequence, atMs });
    if (!Number.isNaN(killedAtMs) && instanceId !== "kv-a") {
      firstNewPrimaryAck ??= { instanceId, atMs, sequence };
      ackedAfterFailover += 1;
    }
  };
  const writers = Array.from({ length: WRITERS }, (_, w) => writer(w));

  await eventually(() => acks.length >= WRITES_PER_PHASE, {
    timeoutMs: 60_000,
    what: "writes before the kill",
  });
  t.true(redirects > 0, "writes that reached a backup were redirected to the primary");
  const beforeKill = acks.length;
  processes.get("kv-a")?.child.kill("SIGKILL");
  killedAtMs = Date.now();
  await eventually(() => ackedAfterFailover >= WRITES_PER_PHASE, {
    timeoutMs: 60_000,
    what: "writes acknowledged by a new primary",
  });
  stopped = true;
  await Promise.all(writers);

  const failover = firstNewPrimaryAck;
  if (failover === undefined) return t.fail("no write acknowledged after the kill");
  const failoverMs = failover.atMs - killedAtMs;
  t.log(
    `failover: first write acknowledged by ${failover.instanceId} ${failoverMs} ms after SIGKILL of kv-a ` +
      `(TTL ${TTL_SECONDS} s + 1 s = ${TTL_SECONDS * 1000 + 1000} ms; its key was seen gone after ` +
      `${removedAtMs === undefined ? "?" : removedAtMs - killedAtMs} ms); ${beforeKill} writes before, ` +
      `${acks.length} in all; ${redirects} redirects followed`,
  );
  t.is(failover.instanceId, "kv-b", "the next-oldest registration took over");
  const lastByOldPrimary = acks
    .filter((ack) => ack.instanceId === "kv-a")
    .reduce((max, ack) => (ack.sequence > max ? ack.sequence : max), 0n);
  t.true(
    failover.sequence > lastByOldPrimary,
    "the new primary's sequence numbers continue after the old one's",
  );

  // Every acknowledged write is on the new primary.
  const counter = await kv.get("counter");
  t.is(counter.instanceId, "kv-b");
  t.is(BigInt(counter.value), BigInt(ackedIncrements), "counter equals the acknowledged Increments");
  t.is(lastCounter, BigInt(ackedIncrements));
  let missing = 0;
  for (const [key, value] of ackedPuts) {
    const read = await kv.get(key);
    if (!read.found || read.value !== value) missing += 1;
  }
  t.is(missing, 0, `every one of ${ackedPuts.size} acknowledged Puts reads back from the new primary`);

  // A fourth instance bootstraps from a snapshot and serves the primary's state as stale reads.
  const d = await spawnInstance(t, { service: "kv", registry, instanceId: "kv-d", ttlSeconds: TTL_SECONDS });
  await eventually(
    async () =>
      (await members()).find((i) => i.instanceId === "kv-d")?.status ===
      InstanceStatus.INSTANCE_STATUS_SERVING,
    { timeoutMs: 30_000, what: "kv-d SERVING" },
  );
  const primaryCounter = await kv.get("counter");
  const fromD = await staleGet(d.address, "counter");
  t.is(fromD.instanceId, "kv-d");
  t.is(fromD.sequence, primaryCounter.sequence, "kv-d has applied exactly the primary's writes");
  t.is(fromD.value, primaryCounter.value);
  let differing = 0;
  for (const [key, value] of ackedPuts) {
    const read = await staleGet(d.address, key);
    if (!read.found || read.value !== value) differing += 1;
  }
  t.is(differing, 0, "kv-d's stale reads equal the primary's state");

  // The old primary comes back: a new registration, the youngest, so it joins as a backup.
  const back = await spawnInstance(t, {
    service: "kv",
    registry,
    instanceId: "kv-a",
    ttlSeconds: TTL_SECONDS,
  });
  await eventually(async () => await serving(4), { timeoutMs: 30_000, what: "kv-a SERVING again" });
  t.is(selectPrimary(await members())?.instanceId, "kv-b", "kv-b stays primary");
  const fromA = await staleGet(back.address, "counter");
  t.deepEqual([fromA.value, fromA.sequence], [primaryCounter.value, primaryCounter.sequence]);
});
