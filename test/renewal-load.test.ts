import test from "ava";
import { DEFAULT_OVERLOAD_OPTIONS } from "../registry/api/overload-guard.js";
import { RenewalLoad } from "../registry/api/renewal-load.js";

/** A load capped at `max` renewals/s on a settable clock. */
function loadWith(max: number) {
  const clock = { nowMs: 1_000_000 };
  const load = new RenewalLoad({ maxRenewalsPerSecond: max, nowMs: () => clock.nowMs });
  return { load, clock };
}

/** Reserves one lease of `ttlSeconds`, holds it as `leaseId` and releases the reservation. */
function register(load: RenewalLoad, leaseId: string, ttlSeconds: number): void {
  const reserved = load.reserve(ttlSeconds);
  if (!reserved.ok) throw new Error(`refused: ${reserved.error.message}`);
  load.held(leaseId, ttlSeconds);
  reserved.value.release();
}

test("leases are admitted up to the cap, 3/TTL renewals/s each, and the next is refused naming both", (t) => {
  const { load } = loadWith(3);
  for (const leaseId of ["1", "2", "3"]) register(load, leaseId, 3);
  t.is(load.projectedPerSecond(), 3);
  t.deepEqual(load.reserve(3), {
    ok: false,
    error: {
      projectedPerSecond: 3,
      message:
        "registry at capacity (3 renewals/s projected, limit 3); add a replica or raise --max-renewals-per-second",
    },
  });
});

test("a lease with a longer TTL fits where a shorter one does not", (t) => {
  const { load } = loadWith(3);
  register(load, "1", 3);
  register(load, "2", 3);
  t.false(load.reserve(2).ok); // 1.5/s over the 1/s left
  t.true(load.reserve(6).ok); // 0.5/s
});

test("admitted Registers etcd has not answered count until released", (t) => {
  const { load } = loadWith(2);
  const first = load.reserve(3);
  const second = load.reserve(3);
  if (!first.ok || !second.ok) throw new Error("refused under the cap");
  t.false(load.reserve(3).ok);
  first.value.release();
  first.value.release(); // idempotent
  t.is(load.projectedPerSecond(), 1);
  t.true(load.reserve(3).ok);
});

test("a deregistered or not-found lease frees its share for a new one", (t) => {
  const { load } = loadWith(2);
  register(load, "1", 3);
  register(load, "2", 3);
  t.false(load.reserve(3).ok);
  load.dropped("1");
  t.is(load.leases, 1);
  t.true(load.reserve(3).ok);
});

test("renewing a held lease does not count it twice", (t) => {
  const { load } = loadWith(3);
  register(load, "1", 3);
  load.held("1", 3);
  load.held("1", 3);
  t.is(load.leases, 1);
  t.is(load.projectedPerSecond(), 1);
});

test("a lease not renewed here for a whole TTL leaves the projection; one renewed stays", (t) => {
  const { load, clock } = loadWith(10);
  register(load, "1", 3);
  register(load, "2", 3);
  clock.nowMs += 2000;
  load.held("2", 3);
  clock.nowMs += 1000;
  t.is(load.leases, 1);
  t.is(load.projectedPerSecond(), 1);
  clock.nowMs += 2000;
  t.is(load.leases, 0);
  t.is(load.projectedPerSecond(), 0);
});

test("10,000 leases of TTL 10 s project 3,000 renewals/s and fit under the default cap of 4,000", (t) => {
  t.is(DEFAULT_OVERLOAD_OPTIONS.maxRenewalsPerSecond, 4000);
  const { load } = loadWith(DEFAULT_OVERLOAD_OPTIONS.maxRenewalsPerSecond);
  for (let index = 0; index < 10_000; index += 1) register(load, String(index), 10);
  t.is(Math.round(load.projectedPerSecond()), 3000);
  for (let index = 10_000; index < 13_333; index += 1) register(load, String(index), 10);
  t.false(load.reserve(10).ok);
});
