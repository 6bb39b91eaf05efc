import * as grpc from "@grpc/grpc-js";
import test, { type ExecutionContext } from "ava";
import net from "node:net";
import { createBalancedClient } from "../client/balancing/balanced-client.js";
import { EXCLUDE_METADATA } from "../client/balancing/leasehold-load-balancer.js";
import { staticMembership } from "../client/discovery/membership.js";
import type { ClientMetrics } from "../client/metrics/client-metrics.js";
import { LeaseholdError } from "../client/errors.js";
import { EchoServiceService } from "../proto/gen/leasehold/demo/v1/echo.js";
import { type Instance, InstanceStatus } from "../proto/gen/leasehold/registry/v1/registry.js";
import { eventually } from "./helpers/eventually.js";
import {
  connected,
  instanceOf,
  mutableMembership,
  newClient,
  startEchoServer,
} from "./helpers/echo-servers.js";

async function requestCounts(metrics: ClientMetrics): Promise<Record<string, number>> {
  const result: Record<string, number> = {};
  for (const { labels, value } of (await metrics.requests.get()).values)
    result[`${labels.instance_id} ${labels.code}`] = value;
  return result;
}

async function rejection(promise: Promise<unknown>): Promise<LeaseholdError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof LeaseholdError) return error;
    throw error;
  }
  throw new Error("expected a rejection");
}

test("calls are typed, reach a real server and are counted per instance with code OK", async (t) => {
  const a = await startEchoServer(t, "a");
  const { client, metrics } = newClient(t, { membership: staticMembership("echo", [instanceOf(a)]) });
  const response = await client.methods.echo({ message: "hi" });
  t.deepEqual(response, { message: "hi", instanceId: "a", headers: {} });
  t.deepEqual(await requestCounts(metrics), { "a OK": 1 });
  const [stats] = client.stats();
  t.like(stats, {
    instanceId: "a",
    address: a.address,
    weight: 1,
    status: "SERVING",
    calls: 1,
    errors: 0,
    breaker: "closed",
  });
  t.true((stats?.p50Ms ?? 0) > 0 && (stats?.p99Ms ?? 0) >= (stats?.p50Ms ?? 0));
  t.is(client.membershipRevision, "0");
});

test("a call failing with UNAVAILABLE is retried on another instance and the caller sees success", async (t) => {
  const [a, b, c] = await Promise.all(["a", "b", "c"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined || c === undefined) throw new Error("servers");
  a.failWith = grpc.status.UNAVAILABLE;
  const { client, metrics } = newClient(t, {
    membership: staticMembership(
      "echo",
      [a, b, c].map((s) => instanceOf(s)),
    ),
    breaker: { volumeThreshold: 1000, consecutiveFailures: 0 }, // keep picking a, to see every retry
  });
  const answers = [];
  for (let i = 0; i < 30; i++) answers.push((await client.methods.echo({ message: `m${i}` })).instanceId);
  t.false(answers.includes("a"));
  t.true(a.calls >= 10, `round robin kept picking a (${a.calls} calls)`);
  const counts = await requestCounts(metrics);
  t.is(counts["a Unavailable"], a.calls);
  t.is((counts["b OK"] ?? 0) + (counts["c OK"] ?? 0), 30);
  t.like(client.stats()[0], { instanceId: "a", calls: a.calls, errors: a.calls });
});

test("a retry never goes back to an instance already tried, and a call's own leasehold-exclude header is honoured", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  a.failWith = grpc.status.UNAVAILABLE;
  const { client } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
    policy: "random",
    random: () => 0, // every first pick is a: only the exclusion moves a retry to b
    breaker: { volumeThreshold: 1000, consecutiveFailures: 0 },
  });
  await connected(client, 2);
  for (let i = 0; i < 5; i++) t.is((await client.methods.echo({ message: `m${i}` })).instanceId, "b");
  t.is(a.calls, 5, "one attempt on a per call, then b");
  const metadata = new grpc.Metadata();
  metadata.set(EXCLUDE_METADATA, a.address);
  t.is((await client.methods.echo({ message: "x" }, { metadata })).instanceId, "b");
  t.is(a.calls, 5, "the call's own exclusion kept it off a");
});

test("INVALID_ARGUMENT reaches the caller, is not retried and never trips the breaker", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const { client, metrics, registry } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
    breaker: { volumeThreshold: 2 },
  });
  await connected(client, 2);
  for (let i = 0; i < 20; i++) {
    const error = await rejection(client.methods.echo({ message: "invalid" }));
    t.is(error.code, "INVALID_ARGUMENT");
    t.is(error.message, "bad message");
  }
  t.is(a.calls + b.calls, 20, "one attempt per call");
  t.deepEqual(await requestCounts(metrics), { "a InvalidArgument": 10, "b InvalidArgument": 10 });
  t.deepEqual(
    client.stats().map((s) => s.breaker),
    ["closed", "closed"],
  );
  t.regex(await registry.getSingleMetricAsString("leasehold_client_breaker_state"), /instance_id="a"} 0/);
});

test("a breaker opens on an instance failing with UNAVAILABLE, which then gets no picks, and closes after it recovers", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  a.failWith = grpc.status.UNAVAILABLE;
  const { client, registry } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
    // Long enough for the 10 calls below on a loaded machine (2 s was not, with 4 files at once).
    breaker: { volumeThreshold: 3, resetTimeoutMs: 5000 },
  });
  await connected(client, 2);
  const changes: string[] = ["closed"];
  client.onChange(() => {
    const state = client.stats()[0]?.breaker ?? "?";
    if (state !== changes.at(-1)) changes.push(state);
  });
  for (let i = 0; i < 6; i++) t.is((await client.methods.echo({ message: "x" })).instanceId, "b");
  t.is(client.stats()[0]?.breaker, "open");
  t.regex(await registry.getSingleMetricAsString("leasehold_client_breaker_state"), /instance_id="a"} 2/);
  const callsWhenOpened = a.calls;
  for (let i = 0; i < 10; i++) t.is((await client.methods.echo({ message: "y" })).instanceId, "b");
  t.is(a.calls, callsWhenOpened, "an open breaker removes the instance from picks");
  t.is(client.stats()[0]?.breaker, "open", "still within resetTimeoutMs");

  a.failWith = undefined;
  await eventually(async () => (await client.methods.echo({ message: "z" })).instanceId === "a", {
    what: "a picked again after its half-open trial",
    intervalMs: 50,
  });
  t.is(client.stats()[0]?.breaker, "closed");
  t.regex(await registry.getSingleMetricAsString("leasehold_client_breaker_state"), /instance_id="a"} 0/);
  t.deepEqual(changes, ["closed", "open", "half-open", "closed"], "each breaker transition, in order");
});

test("weighted_round_robin over real servers with weights 1:2:3 gives exactly 100/200/300 of 600 calls", async (t) => {
  const [a, b, c] = await Promise.all(["a", "b", "c"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined || c === undefined) throw new Error("servers");
  const { client } = newClient(t, {
    policy: "weighted_round_robin",
    membership: staticMembership("echo", [instanceOf(a, 1), instanceOf(b, 2), instanceOf(c, 3)]),
  });
  await connected(client, 3);
  const tally: Record<string, number> = {};
  for (let batch = 0; batch < 12; batch++) {
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => client.methods.echo({ message: "w" })),
    );
    for (const { instanceId } of answers) tally[instanceId] = (tally[instanceId] ?? 0) + 1;
  }
  t.deepEqual(tally, { a: 100, b: 200, c: 300 });
  t.deepEqual([a.calls, b.calls, c.calls], [100, 200, 300]);
  t.deepEqual(
    client.stats().map((s) => [s.instanceId, s.calls]),
    [
      ["a", 100],
      ["b", 200],
      ["c", 300],
    ],
  );
});

/** A TCP proxy in front of a server, to see the client's connections open and close. */
async function startProxy(
  t: ExecutionContext,
  target: string,
): Promise<{ address: string; openSockets: () => number }> {
  const [host, port] = target.split(":");
  const sockets = new Set<net.Socket>();
  const proxy = net.createServer((inbound) => {
    const outbound = net.connect(Number(port), host);
    sockets.add(inbound);
    const drop = () => {
      sockets.delete(inbound);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on("close", drop).on("error", drop);
    outbound.on("close", drop).on("error", drop);
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
    proxy.close();
  });
  const address = proxy.address() as net.AddressInfo;
  return { address: `127.0.0.1:${address.port}`, openSockets: () => sockets.size };
}

test("an instance removed from membership gets no picks, its metric series are removed and its connection closes", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const proxyA = await startProxy(t, a.address);
  const membership = mutableMembership([
    instanceOf({ instanceId: "a", address: proxyA.address }),
    instanceOf(b),
  ]);
  const { client, registry } = newClient(t, { membership });
  await connected(client, 2);
  for (let i = 0; i < 4; i++) await client.methods.echo({ message: "x" });
  t.is(a.calls, 2);
  t.is(proxyA.openSockets(), 1);
  t.regex(await registry.metrics(), /instance_id="a"/);

  // A weight change rebuilds the picker but keeps the connection.
  membership.set([instanceOf({ instanceId: "a", address: proxyA.address }, 5), instanceOf(b)]);
  await eventually(() => client.stats()[0]?.weight === 5, { what: "the new weight applied" });
  t.is(client.membershipRevision, "2");
  await client.methods.echo({ message: "x" });
  t.is(proxyA.openSockets(), 1, "same connection");

  membership.set([instanceOf(b)]);
  await eventually(() => client.stats().length === 1, { what: "a removed" });
  t.deepEqual(
    client.stats().map((s) => s.instanceId),
    ["b"],
  );
  // The balancer releases a's subchannel at once; grpc-js's subchannel pool closes the unused
  // connection on its next sweep (every 10 s, REF_CHECK_INTERVAL in subchannel-pool.ts).
  await eventually(() => proxyA.openSockets() === 0, { what: "a's connection closed", timeoutMs: 25_000 });
  const exposition = await registry.metrics();
  t.notRegex(exposition, /instance_id="a"/);
  t.regex(exposition, /instance_id="b"/);
  const callsOfA = a.calls;
  for (let i = 0; i < 4; i++) t.is((await client.methods.echo({ message: "x" })).instanceId, "b");
  t.is(a.calls, callsOfA);
});

test("a DRAINING instance gets no new calls; status changes need no reconnect", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const membership = mutableMembership([instanceOf(a), instanceOf(b)]);
  const { client } = newClient(t, { membership });
  membership.set([instanceOf(a, 1, InstanceStatus.INSTANCE_STATUS_DRAINING), instanceOf(b)]);
  await connected(client, 2);
  await eventually(() => client.stats()[0]?.status === "DRAINING", { what: "a DRAINING applied" });
  for (let i = 0; i < 6; i++) t.is((await client.methods.echo({ message: "x" })).instanceId, "b");
  t.is(client.stats()[0]?.status, "DRAINING");
});

test("abort via AbortSignal cancels the call in flight, rejects with CANCELLED and is not retried", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const { client, metrics } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
  });
  const controller = new AbortController();
  const pending = rejection(client.methods.echo({ message: "hang" }, { signal: controller.signal }));
  await eventually(() => a.calls + b.calls === 1, { what: "the call to arrive" });
  controller.abort();
  const error = await pending;
  t.is(error.code, "CANCELLED");
  t.false(error.retryable);
  await eventually(() => a.cancelled + b.cancelled === 1, { what: "the server to see the cancellation" });
  t.is(a.calls + b.calls, 1, "not retried");
  t.deepEqual(
    Object.keys(await requestCounts(metrics)).map((key) => key.split(" ")[1]),
    ["Canceled"],
  );
  t.deepEqual(
    client.stats().map((s) => s.breaker),
    ["closed", "closed"],
  );

  const early = await rejection(client.methods.echo({ message: "x" }, { signal: AbortSignal.abort() }));
  t.is(early.code, "CANCELLED");
  t.is(a.calls + b.calls, 1, "an aborted signal makes no call");
});

test("the deadline covers the whole call: DEADLINE_EXCEEDED is not retried", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const { client, metrics } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
    deadlineMs: 5000,
  });
  await Promise.all([client.methods.echo({ message: "warm" }), client.methods.echo({ message: "warm" })]);
  const error = await rejection(client.methods.echo({ message: "hang" }, { deadlineMs: 200 }));
  t.is(error.code, "DEADLINE_EXCEEDED");
  const codes = Object.entries(await requestCounts(metrics)).filter(([key]) =>
    key.endsWith("DeadlineExceeded"),
  );
  t.deepEqual(
    codes.map(([, count]) => count),
    [1],
    "one attempt",
  );
  t.true(a.calls + b.calls <= 3);
});

test("no available instance is UNAVAILABLE with a message saying why", async (t) => {
  const empty = newClient(t, { membership: staticMembership("echo", []) }).client;
  const none = await rejection(empty.methods.echo({ message: "x" }));
  t.is(none.code, "UNAVAILABLE");
  t.is(none.message, "no available instance of service echo (0 listed)");

  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const { client } = newClient(t, {
    membership: staticMembership("echo", [
      instanceOf(a, 1, InstanceStatus.INSTANCE_STATUS_DRAINING),
      instanceOf(b, 0),
    ]),
  });
  const error = await rejection(client.methods.echo({ message: "x" }));
  t.is(error.message, "no available instance of service echo (2 listed: 1 draining, 1 weight 0)");
  t.true(error.retryable);
});

test("open breakers eject at most maxEjectionPercent of the instances, never all; calls go on through the rest", async (t) => {
  const servers = await Promise.all(["a", "b", "c", "d"].map((id) => startEchoServer(t, id)));
  for (const server of servers.slice(0, 3)) server.failWith = grpc.status.UNAVAILABLE;
  const { client } = newClient(t, {
    membership: staticMembership(
      "echo",
      servers.map((server) => instanceOf(server)),
    ),
    breaker: { consecutiveFailures: 1, resetTimeoutMs: 60_000 },
    maxAttempts: 4,
  });
  await connected(client, 4);
  for (let i = 0; i < 40; i++) t.is((await client.methods.echo({ message: "x" })).instanceId, "d");
  const stats = client.stats();
  t.deepEqual(
    stats.map((s) => s.breaker),
    ["open", "open", "open", "closed"],
  );
  t.is(stats.filter((s) => s.ejected).length, 2, "50 % of 4");

  const lone = await startEchoServer(t, "lone");
  lone.failWith = grpc.status.UNAVAILABLE;
  const single = newClient(t, {
    membership: staticMembership("echo", [instanceOf(lone)]),
    breaker: { consecutiveFailures: 1, resetTimeoutMs: 60_000 },
  }).client;
  for (let i = 0; i < 3; i++)
    t.is((await rejection(single.methods.echo({ message: "x" }))).message, "lone told to fail");
  t.like(single.stats()[0], { breaker: "open", ejected: false });
});

test("close() is idempotent, closes everything and later calls fail with FAILED_PRECONDITION", async (t) => {
  const a = await startEchoServer(t, "a");
  const { client, registry } = newClient(t, { membership: staticMembership("echo", [instanceOf(a)]) });
  await client.methods.echo({ message: "x" });
  await client.close();
  await client[Symbol.asyncDispose]();
  t.deepEqual(client.stats(), []);
  t.notRegex(await registry.metrics(), /instance_id="a"/);
  t.is((await rejection(client.methods.echo({ message: "x" }))).code, "FAILED_PRECONDITION");
});

test("bad options are INVALID_ARGUMENT at creation", (t) => {
  const membership = staticMembership("echo", []);
  t.throws(() => createBalancedClient(EchoServiceService, { service: "echo", membership, maxAttempts: 0 }), {
    instanceOf: LeaseholdError,
    message: /maxAttempts/,
  });
  t.throws(
    () =>
      createBalancedClient(EchoServiceService, {
        service: "echo",
        membership,
        policy: "pick_first" as never,
      }),
    {
      message: /unknown policy/,
    },
  );
});

test("a frozen instance costs one attempt (its own timeout), not the whole deadline", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const { client, metrics } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
    attemptTimeoutFloorMs: 100,
    deadlineMs: 20_000,
  });
  await connected(client, 2);
  for (let i = 0; i < 20; i++) await client.methods.echo({ message: "warm" }); // latency samples
  a.isFrozen = true;
  for (let i = 0; i < 4; i++) t.is((await client.methods.echo({ message: "x" })).instanceId, "b");
  await eventually(() => a.cancelled >= 1, { what: "the frozen attempt cancelled" });
  const calls = (await metrics.calls.get()).values;
  t.deepEqual(
    calls.map((v) => [v.labels.method, v.labels.code, v.value]),
    [["Echo", "OK", 24]],
    "calls count what the caller saw",
  );
  t.true(((await metrics.retries.get()).values[0]?.value ?? 0) >= 1, "the retry is counted");
});

test("every instance frozen at once (a shared stall): attempts time out, yet no breaker opens", async (t) => {
  const servers = await Promise.all(["a", "b", "c"].map((id) => startEchoServer(t, id)));
  const { client } = newClient(t, {
    membership: staticMembership(
      "echo",
      servers.map((server) => instanceOf(server)),
    ),
    attemptTimeoutFloorMs: 100,
    breaker: { volumeThreshold: 3 },
  });
  await connected(client, 3);
  for (let i = 0; i < 20; i++) await client.methods.echo({ message: "warm" }); // latency samples
  for (const server of servers) server.isFrozen = true;
  const outcomes = await Promise.allSettled(
    Array.from({ length: 12 }, () => client.methods.echo({ message: "x" }, { deadlineMs: 800 })),
  );
  t.true(
    outcomes.every((outcome) => outcome.status === "rejected"),
    "nobody answered",
  );
  // The servers hear of a cut attempt when its RST_STREAM arrives, after the caller moved on.
  await eventually(() => servers.every((server) => server.cancelled >= 1), {
    what: "every instance had attempts cut by their timeout",
  });
  t.deepEqual(
    client.stats().map((instance) => instance.breaker),
    ["closed", "closed", "closed"],
  );
});

test("panic mode: instances that leave at once stay pickable for the grace period, then go", async (t) => {
  const servers = await Promise.all(["a", "b", "c", "d"].map((id) => startEchoServer(t, id)));
  const all = servers.map((server) => instanceOf(server));
  const membership = mutableMembership(all);
  // A grace period long enough for the 8 calls below on a loaded box (1.5 s ran out mid-way at load 20).
  const { client, registry } = newClient(t, { membership, panicGraceMs: 6000 });
  await connected(client, 4);
  membership.set(all.slice(3)); // 3 of 4 vanish at once (an etcd restart, a registry outage)
  await eventually(() => client.isPanicking, { what: "panic mode" });
  t.deepEqual(
    client.stats().map((s) => [s.instanceId, s.retained]),
    [
      ["a", true],
      ["b", true],
      ["c", true],
      ["d", false],
    ],
  );
  t.regex(await registry.metrics(), /leasehold_client_panic_mode\{service="echo"\} 1/);
  const answers = new Set<string>();
  for (let i = 0; i < 8; i++) answers.add((await client.methods.echo({ message: "x" })).instanceId);
  t.deepEqual([...answers].sort(), ["a", "b", "c", "d"], "the kept instances still answer");

  membership.set([all[0] as Instance, all[3] as Instance]); // a comes back: listed again
  await eventually(() => client.stats().find((s) => s.instanceId === "a")?.retained === false, {
    what: "a listed again",
  });
  await eventually(() => !client.isPanicking, { what: "the grace period over", timeoutMs: 20_000 });
  t.deepEqual(
    client.stats().map((s) => s.instanceId),
    ["a", "d"],
  );
  t.regex(await registry.metrics(), /leasehold_client_panic_mode\{service="echo"\} 0/);
});

test("one instance of four leaving is not a panic: it is removed at once", async (t) => {
  const servers = await Promise.all(["a", "b", "c", "d"].map((id) => startEchoServer(t, id)));
  const all = servers.map((server) => instanceOf(server));
  const membership = mutableMembership(all);
  const { client } = newClient(t, { membership });
  await connected(client, 4);
  membership.set(all.slice(1));
  await eventually(() => client.stats().length === 3, { what: "a removed" });
  t.false(client.isPanicking);
});

test("hedging (opt-in): a slow attempt is raced by one on another instance, the first answer wins", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const { client, metrics } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
    policy: "weighted_round_robin",
  });
  await connected(client, 2);
  a.isFrozen = true;
  const answers: string[] = [];
  for (let i = 0; i < 4; i++) {
    answers.push(
      (await client.methods.echo({ message: "x" }, { hedgeAfterMs: 50, deadlineMs: 20_000 })).instanceId,
    );
  }
  t.deepEqual(answers, ["b", "b", "b", "b"]);
  // Every attempt a took was raced by one on b, and cancelled once b answered.
  await eventually(() => a.calls > 0 && a.cancelled === a.calls, {
    what: "every losing attempt on a cancelled",
  });
  // Each hedge counts as a retry. On a loaded machine b can be the slow first attempt: its hedge
  // to a is cancelled when b answers, sometimes before a's handler sees it, so a may count fewer.
  const retries = (await metrics.retries.get()).values[0]?.value ?? 0;
  t.true(retries >= a.calls, `${retries} retries counted for ${a.calls} hedges that reached a`);
  t.is(b.calls, 4, "one answer from b per call: no hedge where the first attempt answered in time");
});

test("under concurrent load a frozen instance is stalled: picks skip it and its parked attempts move, before any timeout", async (t) => {
  const [a, b] = await Promise.all(["a", "b"].map((id) => startEchoServer(t, id)));
  if (a === undefined || b === undefined) throw new Error("servers");
  const { client, metrics } = newClient(t, {
    membership: staticMembership("echo", [instanceOf(a), instanceOf(b)]),
    // Without stall detection every attempt parked on a would wait for the deadline and fail.
    attemptTimeoutFloorMs: 60_000,
    deadlineMs: 10_000,
  });
  await connected(client, 2);
  for (let i = 0; i < 20; i++) await client.methods.echo({ message: "warm" });
  a.isFrozen = true;
  const callsBefore = a.calls;
  let next = 0;
  const answers: string[] = [];
  const worker = async (): Promise<void> => {
    while (next++ < 400) answers.push((await client.methods.echo({ message: "x" })).instanceId);
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  t.is(answers.length, 400);
  t.deepEqual([...new Set(answers)], ["b"], "every call answered by b");
  t.true(
    a.calls - callsBefore <= 32 + 1,
    `a took ${a.calls - callsBefore} attempts: picks skipped it once stalled`,
  );
  await eventually(() => a.cancelled === a.calls - callsBefore, { what: "every attempt parked on a moved" });
  const failed = (await metrics.requests.get()).values.filter(
    (v) => v.labels.instance_id === "a" && v.labels.code !== "OK",
  );
  t.is(
    failed.reduce((sum, v) => sum + v.value, 0),
    a.calls - callsBefore,
    "each moved attempt counts against a",
  );
});
