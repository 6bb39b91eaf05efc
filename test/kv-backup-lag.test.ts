import test from "ava";
import { MembershipWatcher } from "../client/discovery/membership-watcher.js";
import { resolverDefaults } from "../client/discovery/leasehold-resolver.js";
import { InstanceStatus } from "../proto/gen/leasehold/registry/v1/registry.js";
import { connectKv } from "../services/kv/kv-client.js";
import { eventually } from "./helpers/eventually.js";
import { spawnInstance } from "./helpers/instance-process.js";
import { servingKv, staleGet } from "./helpers/kv.js";
import { rpc, startFixtureFor } from "./helpers/registry-fixture.js";

test("kv: a SIGSTOPped backup leaves the sync set; writes go on once it is no longer SERVING; after SIGCONT it is DRAINING until caught up, then SERVING with the primary's state", async (t) => {
  const fixture = await startFixtureFor(t);
  const registry = fixture.registry.address;
  const serving = async (count: number): Promise<boolean> =>
    (await servingKv(fixture.client, count)) !== undefined;
  const processes = [];
  for (const id of ["kv-a", "kv-b", "kv-c"]) {
    processes.push(await spawnInstance(t, { service: "kv", registry, instanceId: id, ttlSeconds: 3 }));
    await eventually(() => serving(processes.length), { timeoutMs: 20_000, what: `${id} SERVING` });
  }
  const lagging = processes[2];
  if (lagging === undefined) return t.fail();

  const statusesOfC: string[] = [];
  let isRecording = false;
  const watcher = new MembershipWatcher({ registry: fixture.client, service: "kv" });
  watcher.subscribe((_, changes) => {
    for (const change of changes) {
      if (!isRecording || change.type === "snapshot" || change.instance.instanceId !== "kv-c") continue;
      statusesOfC.push(
        change.type === "removed"
          ? "removed"
          : change.instance.status === InstanceStatus.INSTANCE_STATUS_SERVING
            ? "SERVING"
            : "DRAINING",
      );
    }
  });
  watcher.start();
  t.teardown(() => watcher.close());
  await watcher.ready();

  const kv = connectKv({ registry, deadlineMs: 3000 });
  t.teardown(() => kv.close());
  t.is(resolverDefaults().registry, undefined, "connectKv leaves the process-wide Leasehold defaults alone");
  let acked = 0;
  let stopped = false;
  const writer = (async () => {
    for (let n = 0; !stopped; n += 1) {
      try {
        await kv.increment("counter", 1n, { requestId: `lag-${n}` });
        acked += 1;
      } catch {
        n -= 1; // retried with the same request id
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  })();
  await eventually(() => acked >= 20, { what: "writes before the stop" });

  lagging.child.kill("SIGSTOP");
  const atStop = acked;
  await eventually(() => acked >= atStop + 30, {
    timeoutMs: 30_000,
    what: "writes acknowledged without kv-c",
  });
  isRecording = true;
  lagging.child.kill("SIGCONT");
  await eventually(() => statusesOfC.at(-1) === "SERVING", { timeoutMs: 30_000, what: "kv-c SERVING again" });
  const atServing = acked;
  await eventually(() => acked >= atServing + 20, { what: "writes after kv-c rejoined" });
  stopped = true;
  await writer;

  t.log(`kv-c after SIGCONT: ${statusesOfC.join(" → ")}`);
  const firstSeen = statusesOfC.find((status) => status !== "removed");
  t.is(firstSeen, "DRAINING", "kv-c is DRAINING before it turns SERVING again");
  const primary = await kv.get("counter");
  t.is(primary.instanceId, "kv-a");
  t.is(BigInt(primary.value), BigInt(acked), "every acknowledged Increment counted once");
  const fromC = await staleGet(lagging.address, "counter");
  t.deepEqual([fromC.value, fromC.sequence], [primary.value, primary.sequence], "kv-c caught up");
});

test("kv: SIGTERM of the primary hands over to the next-oldest instance with every acknowledged write", async (t) => {
  const fixture = await startFixtureFor(t);
  const registry = fixture.registry.address;
  const serving = async (count: number): Promise<boolean> =>
    (await servingKv(fixture.client, count)) !== undefined;
  const processes = [];
  for (const id of ["kv-a", "kv-b"]) {
    processes.push(await spawnInstance(t, { service: "kv", registry, instanceId: id, ttlSeconds: 10 }));
    await eventually(() => serving(processes.length), { timeoutMs: 20_000, what: `${id} SERVING` });
  }
  const kv = connectKv({ registry, deadlineMs: 3000 });
  t.teardown(() => kv.close());
  for (let n = 1; n <= 20; n += 1) await kv.increment("counter", 1n, { requestId: `term-${n}` });
  const primary = processes[0];
  if (primary === undefined) return t.fail();
  primary.child.kill("SIGTERM");
  await eventually(
    async () =>
      !(await rpc(fixture.client).getService({ service: "kv" })).instances.some(
        (i) => i.instanceId === "kv-a" && i.status === InstanceStatus.INSTANCE_STATUS_SERVING,
      ),
    { timeoutMs: 20_000, what: "kv-a no longer SERVING" },
  );
  // kv-a marks itself DRAINING, then deregisters: kv-b need not wait for the 10 s lease to expire.
  const read = await eventually(
    async () => {
      try {
        return await kv.get("counter");
      } catch {
        return undefined;
      }
    },
    { timeoutMs: 20_000, what: "a read from the new primary" },
  );
  t.is(read.instanceId, "kv-b");
  t.is(read.value, "20");
});
