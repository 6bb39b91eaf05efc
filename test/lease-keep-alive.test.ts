/**
 * The keepalive lag the overload guard reads (registry/store/lease-keep-alive.ts), with a fake
 * etcd lease client whose keepalive streams the test answers by hand: pure logic, real timers.
 */
import { EventEmitter } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import test from "ava";
import type { ILeaseKeepAliveRequest, LeaseClient } from "etcd3";
import { pino } from "pino";
import type { RegistryMetrics } from "../registry/registry-metrics.js";
import { SharedLeaseKeepAlive } from "../registry/store/lease-keep-alive.js";
import { UnavailableEpisodes } from "../registry/store/unavailable-episodes.js";

/** An etcd keepalive stream: records what is written; the test answers or breaks it. */
class FakeStream extends EventEmitter {
  readonly written: string[] = [];
  write(request: ILeaseKeepAliveRequest): void {
    this.written.push(String(request.ID));
  }
  end(): void {}
  answer(leaseId: string): void {
    this.emit("data", { ID: leaseId, TTL: "10" });
  }
}

function fakeLeaseClient(): { client: LeaseClient; streams: FakeStream[] } {
  const streams: FakeStream[] = [];
  const client = {
    leaseKeepAlive: () => {
      const stream = new FakeStream();
      streams.push(stream);
      return Promise.resolve(stream);
    },
  } as unknown as LeaseClient;
  return { client, streams };
}

const metrics = { observeEtcd: () => undefined } as unknown as RegistryMetrics;

/** Waits for the next renewal written to any stream (after `seen` writes in all); returns that stream. */
async function nextWrite(streams: FakeStream[], seen: { writes: number }): Promise<FakeStream> {
  for (;;) {
    const writes = streams.reduce((sum, stream) => sum + stream.written.length, 0);
    if (writes > seen.writes) {
      seen.writes = writes;
      return streams.findLast((stream) => stream.written.length > 0) as FakeStream;
    }
    await sleep(5);
  }
}

test("a renewal answered late after an etcd outage is not remembered as load; one answered late after the recovery is", async (t) => {
  const { client, streams } = fakeLeaseClient();
  const keepAlive = new SharedLeaseKeepAlive(
    client,
    metrics,
    new UnavailableEpisodes(pino({ level: "silent" })),
  );
  t.teardown(() => keepAlive.close());
  const seen = { writes: 0 };

  // Normal: answered at once, no lag.
  const first = keepAlive.renew("100");
  (await nextWrite(streams, seen)).answer("100");
  t.is(await first, 10);
  t.true(keepAlive.lagMs() < 100, `lag ${keepAlive.lagMs()} ms`);

  // etcd away: the stream breaks, its renewals answer UNAVAILABLE.
  const broken = keepAlive.renew("100");
  const brokenStream = await nextWrite(streams, seen);
  brokenStream.emit("error", new Error("14 UNAVAILABLE: etcd away"));
  await t.throwsAsync(broken, { message: /etcd is unavailable/ });

  // After the reopen delay, a renewal goes out on a new stream and waits 800 ms for etcd's return.
  await sleep(300);
  const waitedOut = keepAlive.renew("100");
  const reopened = await nextWrite(streams, seen);
  t.not(reopened, brokenStream);
  await sleep(800);
  t.true(keepAlive.lagMs() >= 700, `while it waits the lag shows: ${keepAlive.lagMs()} ms`);
  reopened.answer("100");
  t.is(await waitedOut, 10);
  t.true(keepAlive.lagMs() < 100, `the outage's wait is forgotten: lag ${keepAlive.lagMs()} ms`);

  // After the recovery, a slow answer is load again, and remembered once answered.
  const slow = keepAlive.renew("100");
  t.is(await nextWrite(streams, seen), reopened);
  await sleep(500);
  reopened.answer("100");
  await slow;
  t.true(keepAlive.lagMs() >= 400, `a slow answer after the recovery is remembered: ${keepAlive.lagMs()} ms`);
});
