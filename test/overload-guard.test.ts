import { Metadata, status } from "@grpc/grpc-js";
import test from "ava";
import { retryPushbackMs } from "../client/registration/registrar.js";
import {
  DEFAULT_OVERLOAD_OPTIONS,
  OverloadGuard,
  resolveOverloadOptions,
  type OverloadSignals,
} from "../registry/api/overload-guard.js";
import { RegistryError } from "../registry/registry-error.js";

/** A guard over mutable readings, a settable clock and a fixed random. */
function guardWith(random = 0.5) {
  const readings = { eventLoopDelayMs: 20, keepAliveLagMs: 0, registersInFlight: 0 };
  const clock = { nowMs: 1_000_000 };
  const signals: OverloadSignals = {
    eventLoopDelayMs: () => readings.eventLoopDelayMs,
    keepAliveLagMs: () => readings.keepAliveLagMs,
    registersInFlight: () => readings.registersInFlight,
  };
  const guard = new OverloadGuard({
    overload: resolveOverloadOptions({ pushbackMs: 1000 }),
    signals,
    nowMs: () => clock.nowMs,
    random: () => random,
  });
  return { guard, readings, clock };
}

test("a Register is admitted while every reading is at or under its threshold", (t) => {
  const { guard, readings } = guardWith();
  readings.eventLoopDelayMs = DEFAULT_OVERLOAD_OPTIONS.maxEventLoopDelayMs;
  readings.keepAliveLagMs = DEFAULT_OVERLOAD_OPTIONS.maxKeepAliveLagMs;
  readings.registersInFlight = DEFAULT_OVERLOAD_OPTIONS.maxRegistersInFlight - 1;
  t.deepEqual(guard.admitRegister(), { isShed: false });
});

test("keepalive lag over its threshold sheds with a pushback drawn from [pushbackMs, 2 × pushbackMs)", (t) => {
  const { guard, readings } = guardWith(0.25);
  readings.keepAliveLagMs = 1500;
  const decision = guard.admitRegister();
  t.like(decision, { isShed: true, signal: "overload_keepalive_lag", pushbackMs: 1250 });
  t.regex(
    decision.isShed ? decision.message : "",
    /keepalive renewal has waited 1500 ms.*maxKeepAliveLagMs 1000/,
  );
});

test("event-loop delay and Registers in flight each shed, named by the reading that tripped", (t) => {
  const delayed = guardWith();
  delayed.readings.eventLoopDelayMs = 1001;
  t.like(delayed.guard.admitRegister(), { isShed: true, signal: "overload_event_loop_delay" });
  const crowded = guardWith();
  crowded.readings.registersInFlight = DEFAULT_OVERLOAD_OPTIONS.maxRegistersInFlight;
  t.like(crowded.guard.admitRegister(), { isShed: true, signal: "overload_registers_in_flight" });
});

test("after the readings recover, Registers are shed until the announced pushback has passed, then admitted", (t) => {
  const { guard, readings, clock } = guardWith(0.5);
  readings.keepAliveLagMs = 5000;
  t.like(guard.admitRegister(), { isShed: true, pushbackMs: 1500 });
  readings.keepAliveLagMs = 0;
  clock.nowMs += 1000;
  // Still inside the 1500 ms announced: shed, and told to wait at least what is left of it.
  t.like(guard.admitRegister(), { isShed: true, signal: "overload_keepalive_lag", pushbackMs: 1500 });
  clock.nowMs += 500;
  t.deepEqual(guard.admitRegister(), { isShed: false });
});

test("a pushback never ends before the shedding another caller was told to wait out", (t) => {
  const high = guardWith(0.99);
  high.readings.eventLoopDelayMs = 5000;
  t.like(high.guard.admitRegister(), { isShed: true, pushbackMs: 1990 });
  high.readings.eventLoopDelayMs = 0;
  high.clock.nowMs += 10;
  t.like(high.guard.admitRegister(), { isShed: true, pushbackMs: 1990 });
});

test("overload options must be positive integers, named in the error", (t) => {
  const error = t.throws(() => resolveOverloadOptions({ maxKeepAliveLagMs: 0 }), {
    instanceOf: RegistryError,
  });
  t.is(error?.code, "invalid_argument");
  t.regex(error?.message ?? "", /overload\.maxKeepAliveLagMs must be a positive integer, got 0/);
  t.throws(() => resolveOverloadOptions({ pushbackMs: 2.5 }), { message: /overload\.pushbackMs/ });
});

test("retryPushbackMs reads grpc-retry-pushback-ms and ignores a missing or malformed one", (t) => {
  const withTrailer = (value?: string) => {
    const metadata = new Metadata();
    if (value !== undefined) metadata.set("grpc-retry-pushback-ms", value);
    return Object.assign(new Error("x"), { code: status.RESOURCE_EXHAUSTED, metadata });
  };
  t.is(retryPushbackMs(withTrailer("1234")), 1234);
  t.is(retryPushbackMs(withTrailer()), undefined);
  t.is(retryPushbackMs(withTrailer("-1")), undefined);
  t.is(retryPushbackMs(withTrailer("soon")), undefined);
  t.is(retryPushbackMs(new Error("no metadata")), undefined);
});
