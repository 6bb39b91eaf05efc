/**
 * Slow start, ring_hash, zone-aware routing and the metadata filter over real gRPC servers, through
 * the typed balanced client and (ring_hash) a stock grpc-js client on `leasehold:///`.
 */
import * as grpc from "@grpc/grpc-js";
import test from "ava";
import { registerLoadBalancers } from "../client/balancing/leasehold-load-balancer.js";
import {
  MEMBERSHIP_SOURCE_OPTION,
  POLICY_CONFIG_OPTION,
  POLICY_OPTION,
  registerResolver,
  shareMembership,
} from "../client/discovery/leasehold-resolver.js";
import { staticMembership } from "../client/discovery/membership.js";
import { Registrar } from "../client/registration/registrar.js";
import { EchoServiceClient, type EchoRequest } from "../proto/gen/leasehold/demo/v1/echo.js";
import { InstanceStatus } from "../proto/gen/leasehold/registry/v1/registry.js";
import {
  connected,
  instanceOf,
  mutableMembership,
  newClient,
  startEchoServer,
} from "./helpers/echo-servers.js";
import { eventually } from "./helpers/eventually.js";
import { startFixtureFor } from "./helpers/registry-fixture.js";
import { seeded } from "./helpers/seeded-random.js";

const SERVING = InstanceStatus.INSTANCE_STATUS_SERVING;

test.serial(
  "slow start: a joining instance's share rises monotonically over 5 buckets of its window, from < 20 % of its final share to it",
  async (t) => {
    const servers = await Promise.all(["a", "b", "c", "new"].map((id) => startEchoServer(t, id)));
    const [a, b, c, joining] = servers;
    if (a === undefined || b === undefined || c === undefined || joining === undefined)
      throw new Error("servers");
    const membership = mutableMembership([instanceOf(a), instanceOf(b), instanceOf(c)]);
    const windowMs = 5_000;
    const { client } = newClient(t, {
      policy: "weighted_round_robin",
      membership,
      slowStart: { windowMs, aggression: 1, minWeightPercent: 10 },
    });
    await connected(client, 3);
    // Warm up (JIT, connections) so the window's first fifth is not starved of calls.
    for (let i = 0; i < 20; i++)
      await Promise.all(Array.from({ length: 50 }, () => client.methods.echo({ message: "warm" })));
    membership.set([instanceOf(a), instanceOf(b), instanceOf(c), instanceOf(joining)]);
    const answers: { atMs: number; instanceId: string }[] = [];
    let firstMs: number | undefined;
    // Calls until the window (from the joining instance's first answer) is over, then as many again.
    let phaseEndMs = Number.POSITIVE_INFINITY;
    let finalCalls = 0;
    const worker = async (): Promise<void> => {
      for (;;) {
        const atMs = performance.now(); // when it was sent, so picked: a first call may answer late
        const { instanceId } = await client.methods.echo({ message: "s" });
        if (instanceId === "new" && firstMs === undefined) {
          firstMs = atMs;
          phaseEndMs = atMs + windowMs;
        }
        if (atMs < phaseEndMs) answers.push({ atMs, instanceId });
        else if (finalCalls++ < 4_000) answers.push({ atMs, instanceId });
        else return;
      }
    };
    await Promise.all(Array.from({ length: 4 }, worker));
    const start = firstMs as number;
    const share = (from: number, to: number): number => {
      const inBucket = answers.filter((x) => x.atMs >= from && x.atMs < to);
      return inBucket.filter((x) => x.instanceId === "new").length / inBucket.length;
    };
    const buckets = Array.from({ length: 5 }, (_, i) =>
      share(start + (i * windowMs) / 5, start + ((i + 1) * windowMs) / 5),
    );
    const finalShare = share(start + windowMs, Number.POSITIVE_INFINITY);
    const counts = Array.from(
      { length: 5 },
      (_, i) =>
        answers.filter(
          (x) => x.atMs >= start + (i * windowMs) / 5 && x.atMs < start + ((i + 1) * windowMs) / 5,
        ).length,
    );
    t.log(`calls per bucket ${counts.join(" ")}`);
    t.log(`buckets ${buckets.map((s) => s.toFixed(3)).join(" ")}, after the window ${finalShare.toFixed(3)}`);
    t.true(Math.abs(finalShare - 0.25) < 0.01, `final share ${finalShare}`);
    t.true((buckets[0] as number) < 0.2 * finalShare, `first bucket ${buckets[0]}`);
    for (let i = 1; i < 5; i++) t.true((buckets[i] as number) > (buckets[i - 1] as number), `bucket ${i}`);
    t.true((buckets[4] as number) <= finalShare);
    t.is(client.stats().find((s) => s.instanceId === "new")?.effectiveWeight, 1);
  },
);

test.serial(
  "ring_hash over 4 real servers: the same key always reaches the same instance, typed and stock clients alike",
  async (t) => {
    const servers = await Promise.all(["a", "b", "c", "d"].map((id) => startEchoServer(t, id)));
    const instances = servers.map((server) => instanceOf(server));
    const { client } = newClient(t, {
      policy: "ring_hash",
      membership: staticMembership("echo", instances),
      hashKey: (request: EchoRequest) => request.message,
    });
    await connected(client, 4);
    registerResolver();
    registerLoadBalancers();
    const shared = shareMembership(staticMembership("echo", instances));
    t.teardown(shared.forget);
    const stock = new EchoServiceClient("leasehold:///echo", grpc.credentials.createInsecure(), {
      [MEMBERSHIP_SOURCE_OPTION]: shared.id,
      [POLICY_OPTION]: "ring_hash",
      [POLICY_CONFIG_OPTION]: { ringHash: { hashHeader: "x-user" } },
    });
    t.teardown(() => stock.close());
    const stockEcho = (key: string): Promise<string> => {
      const metadata = new grpc.Metadata();
      metadata.set("x-user", key);
      return new Promise((resolve, reject) =>
        stock.echo({ message: key }, metadata, (error, response) =>
          error === null ? resolve(response.instanceId) : reject(error),
        ),
      );
    };
    // The stock channel connects on its first call: until every instance is READY, keys of the others
    // walk on along the ring.
    const warm = new Set<string>();
    await eventually(
      async () => {
        for (let i = 0; i < 40; i++) warm.add(await stockEcho(`warm-${i}`));
        return warm.size === 4;
      },
      { what: "the stock channel reaching all 4 instances" },
    );
    const owners = new Map<string, Set<string>>();
    for (let round = 0; round < 3; round++) {
      await Promise.all(
        Array.from({ length: 200 }, async (_, i) => {
          const key = `user-${i}`;
          const [typed, plain] = await Promise.all([client.methods.echo({ message: key }), stockEcho(key)]);
          const seen = owners.get(key) ?? new Set();
          seen.add(typed.instanceId).add(plain);
          owners.set(key, seen);
        }),
      );
    }
    t.true([...owners.values()].every((seen) => seen.size === 1));
    const perInstance: Record<string, number> = {};
    for (const seen of owners.values()) for (const id of seen) perInstance[id] = (perInstance[id] ?? 0) + 1;
    t.log(perInstance);
    t.deepEqual(Object.keys(perInstance).sort(), ["a", "b", "c", "d"]);
  },
);

test.serial(
  "zone: a zone-a caller sends ≥ 95 % to 2 zone-a of 4; with one zone-a left it spills to zone-b by capacity, 0 calls failing",
  async (t) => {
    const servers = await Promise.all(["a1", "a2", "b1", "b2"].map((id) => startEchoServer(t, id)));
    const [a1, a2, b1, b2] = servers;
    if (a1 === undefined || a2 === undefined || b1 === undefined || b2 === undefined)
      throw new Error("servers");
    const zoneA = { zone: "zone-a" };
    const zoneB = { zone: "zone-b" };
    const membership = mutableMembership([
      instanceOf(a1, 1, SERVING, zoneA),
      instanceOf(a2, 1, SERVING, zoneA),
      instanceOf(b1, 1, SERVING, zoneB),
      instanceOf(b2, 1, SERVING, zoneB),
    ]);
    const { client } = newClient(t, {
      policy: "weighted_round_robin",
      membership,
      zone: "zone-a",
      random: seeded(4),
    });
    await connected(client, 4);
    const run = async (calls: number): Promise<Record<string, number>> => {
      const tally: Record<string, number> = {};
      for (let batch = 0; batch < calls / 50; batch++) {
        const answers = await Promise.all(
          Array.from({ length: 50 }, () => client.methods.echo({ message: "z" })),
        );
        for (const { instanceId } of answers) tally[instanceId] = (tally[instanceId] ?? 0) + 1;
      }
      return tally;
    };
    const healthy = await run(2_000);
    t.log("2 + 2", healthy);
    t.true((healthy.a1 ?? 0) + (healthy.a2 ?? 0) >= 0.95 * 2_000);

    // a2 leaves while calls are in flight: none may fail (the run rejects if one does).
    const during = run(1_000);
    membership.set([
      instanceOf(a1, 1, SERVING, zoneA),
      instanceOf(b1, 1, SERVING, zoneB),
      instanceOf(b2, 1, SERVING, zoneB),
    ]);
    await during;
    await eventually(() => client.stats().length === 3, { what: "a2 gone" });
    const spilled = await run(6_000);
    t.log("1 + 2", spilled);
    t.is(spilled.a2, undefined);
    // zone-a has 1/3 of capacity against 1/2 of callers: it keeps 2/3, zone-b takes 1/3, split by weight.
    t.true(Math.abs((spilled.a1 ?? 0) / 6_000 - 2 / 3) < 0.05, `a1 ${spilled.a1}`);
    t.true(Math.abs((spilled.b1 ?? 0) - (spilled.b2 ?? 0)) <= 2, `b1 ${spilled.b1}, b2 ${spilled.b2}`);
  },
);

test.serial(
  "metadata filter over real servers: version=v2 reaches only v2 instances; none matching is UNAVAILABLE saying why",
  async (t) => {
    const [v1, v2] = await Promise.all(["v1", "v2"].map((id) => startEchoServer(t, id)));
    if (v1 === undefined || v2 === undefined) throw new Error("servers");
    const instances = [
      instanceOf(v1, 1, SERVING, { metadata: { version: "v1" } }),
      instanceOf(v2, 1, SERVING, { metadata: { version: "v2" } }),
    ];
    const { client } = newClient(t, {
      membership: staticMembership("echo", instances),
      metadataFilter: { version: "v2" },
    });
    await connected(client, 2);
    const answers = await Promise.all(
      Array.from({ length: 100 }, () => client.methods.echo({ message: "m" })),
    );
    t.true(answers.every((answer) => answer.instanceId === "v2"));
    t.is(v1.calls, 0);
    const { client: none } = newClient(t, {
      membership: staticMembership("echo", instances),
      metadataFilter: { version: "v3" },
      maxAttempts: 1,
    });
    await connected(none, 2);
    const error = await t.throwsAsync(none.methods.echo({ message: "m" }, { deadlineMs: 500 }));
    t.regex(error?.message ?? "", /2 not matching the metadata filter/);
  },
);

test.serial(
  "through a real registry: zone spill-over when a zone-a registrar stops, and a metadata update moving a canary subset live, 0 calls failing",
  async (t) => {
    const fixture = await startFixtureFor(t);
    const servers = await Promise.all(["a1", "a2", "b1", "b2"].map((id) => startEchoServer(t, id)));
    const registrars = servers.map((server) => {
      const registrar = new Registrar({
        registry: fixture.client,
        instance: {
          service: "echo",
          instanceId: server.instanceId,
          address: server.address,
          zone: server.instanceId.startsWith("a") ? "zone-a" : "zone-b",
          metadata: { version: "v1" },
        },
        ttlSeconds: 5,
      });
      t.teardown(async () => await registrar.close());
      return registrar;
    });
    await Promise.all(registrars.map((registrar) => registrar.start()));
    const zoned = newClient(t, {
      registry: fixture.registry.address,
      zone: "zone-a",
      random: seeded(9),
    }).client;
    const canary = newClient(t, {
      registry: fixture.registry.address,
      metadataFilter: { version: "v2" },
    }).client;
    await connected(zoned, 4);
    const tally = async (client: typeof zoned, calls: number): Promise<Record<string, number>> => {
      const result: Record<string, number> = {};
      for (let done = 0; done < calls; done += 50) {
        const answers = await Promise.all(
          Array.from({ length: Math.min(50, calls - done) }, () => client.methods.echo({ message: "r" })),
        );
        for (const { instanceId } of answers) result[instanceId] = (result[instanceId] ?? 0) + 1;
      }
      return result;
    };
    const before = await tally(zoned, 400);
    t.is((before.a1 ?? 0) + (before.a2 ?? 0), 400);

    const [, a2Registrar, b1Registrar] = registrars;
    // a2 leaves (drain, then deregister) while calls run: none fails.
    const during = tally(zoned, 400);
    await a2Registrar?.drain();
    await a2Registrar?.stop();
    await during;
    await eventually(() => zoned.stats().length === 3, { what: "a2 gone from the caller" });
    const after = await tally(zoned, 1_200);
    t.log(after);
    t.true((after.b1 ?? 0) > 0 && (after.b2 ?? 0) > 0, "spilled to zone-b");
    t.true(Math.abs((after.a1 ?? 0) / 1_200 - 2 / 3) < 0.08, `a1 ${after.a1}`);

    // No v2 yet: the canary client has nothing to pick. b1 becomes v2 live, with no reconnect.
    await connected(canary, 3);
    await b1Registrar?.update({ metadata: { version: "v2" } });
    await eventually(() => canary.stats().find((s) => s.instanceId === "b1") !== undefined, { what: "b1" });
    await eventually(async () => (await tally(canary, 1)).b1 === 1, {
      what: "the canary subset reaching b1",
    });
    t.deepEqual(await tally(canary, 200), { b1: 200 });
  },
);

test.serial(
  "bad policy settings: the typed client refuses them at creation (INVALID_ARGUMENT), a stock channel fails calls UNAVAILABLE naming the field",
  async (t) => {
    const membership = staticMembership("echo", []);
    const refused = (options: Parameters<typeof newClient>[1]): string => {
      const error = t.throws(() => newClient(t, options));
      t.is((error as { code?: string } | undefined)?.code, "INVALID_ARGUMENT");
      return error?.message ?? "";
    };
    t.regex(refused({ membership, slowStart: { windowMs: 1000 } }), /slowStart needs a weighted policy/);
    t.regex(
      refused({ membership, policy: "least_request", slowStart: { windowMs: 1000, minWeightPercent: 150 } }),
      /slowStart.minWeightPercent out of range: 150/,
    );
    t.regex(refused({ membership, hashKey: () => "k" }), /hashKey .* ring_hash/);
    t.regex(refused({ membership, policy: "ring_hash", zone: "zone-a" }), /zone does not apply to ring_hash/);
    t.regex(
      refused({ membership, metadataFilter: { version: 2 as unknown as string } }),
      /metadataFilter.version/,
    );

    registerResolver();
    registerLoadBalancers();
    const shared = shareMembership(membership);
    t.teardown(shared.forget);
    const stock = new EchoServiceClient("leasehold:///echo", grpc.credentials.createInsecure(), {
      [MEMBERSHIP_SOURCE_OPTION]: shared.id,
      [POLICY_OPTION]: "round_robin",
      [POLICY_CONFIG_OPTION]: { ringHash: { minRingSize: 8 } },
    });
    t.teardown(() => stock.close());
    const error = await new Promise<grpc.ServiceError>((resolve) =>
      stock.echo({ message: "x" }, new grpc.Metadata(), { deadline: Date.now() + 5_000 }, (e) =>
        resolve(e as grpc.ServiceError),
      ),
    );
    t.is(error.code, grpc.status.UNAVAILABLE);
    t.regex(
      error.details,
      /leasehold.policy_config: leasehold_round_robin config: ringHash is for the ring_hash policy/,
    );
  },
);
